"""System-test fixtures: the real services as processes, started by the same launcher as `make run`."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shopmesh_platform.ports import PortPlan
from shopmesh_platform.shoppers import Checkout, arguments, server_fault, shop
from shopmesh_platform.stack import Stack
from shopmesh_platform.topology import LOCAL_NATS_PORT


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


Answers = dict[str, dict[str, int]]
# Every step a shopper takes (each registers and logs in once, then browses, opens pages and buys).
SHOPPER_STEPS = frozenset({"Register", "Login", "ListProducts", "GetProductPage", "PlaceOrder"})
# How long the shoppers may keep coming back for what a test waits for: it bounds a hang only.
SHOPPING_BOUND_SECONDS = 90.0


@dataclass
class Shopping:
    """What each method answered in each run of `make shoppers`, and every checkout the shoppers tried."""

    runs: list[Answers]
    checkouts: list[Checkout] = field(default_factory=list)

    @property
    def answered(self) -> Answers:
        """Summed over the runs."""
        total: dict[str, Counter[str]] = {}
        for run in self.runs:
            for method, codes in run.items():
                total.setdefault(method, Counter()).update(codes)
        return {method: dict(codes) for method, codes in total.items()}

    @property
    def faults(self) -> Answers:
        """The server faults among the answers (`--strict` fails on them), by method."""
        found = {m: {c: n for c, n in codes.items() if server_fault(c)} for m, codes in self.answered.items()}
        return {method: codes for method, codes in found.items() if codes}


def every_step_and_an_order(answered: Answers) -> bool:
    return answered.keys() >= SHOPPER_STEPS and answered["PlaceOrder"].get("OK", 0) > 0


@pytest.fixture
def shoppers() -> Callable[..., Awaitable[Shopping]]:
    """`make shoppers` against a gateway, quick-thinking, run again with the next seed until `until` holds of
    the answers summed over the runs (by default: every step answered and an order placed), so that one short
    run on a loaded machine, where a shopper may not get as far as buying, fails nothing. Fails the test on an
    unreachable gateway, or when `until` never holds. It judges nothing else: what the shoppers were answered
    (faults included) and the checkouts they tried are the test's to check."""

    async def run(
        target: str, *argv: str, seed: int, until: Callable[[Answers], bool] = every_step_and_an_order
    ) -> Shopping:
        shopping = Shopping([])
        deadline = time.monotonic() + SHOPPING_BOUND_SECONDS
        while not shopping.runs or not until(shopping.answered):
            if time.monotonic() >= deadline:
                pytest.fail(f"`until` never held in {len(shopping.runs)} runs: {shopping.answered}")
            args = arguments(
                ["--target", target, "--think", "0.01,0.1", *argv, "--seed", str(seed + len(shopping.runs))]
            )
            # In a thread with its own loop, as `make shoppers` runs: the test's loop stays free.
            tally = await asyncio.wait_for(asyncio.to_thread(asyncio.run, shop(args, io.StringIO())), 120)
            shopping.runs.append(tally.by_method())
            shopping.checkouts += tally.checkouts
        return shopping

    return run


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def local_ports_held() -> Iterator[None]:
    """Hold the machine-wide lock on `make run`'s fixed ports while a test runs a stack on them: pytest-xdist's
    workers (and another checkout's `make test`) run such tests one at a time, each waiting for the other."""
    path = Path(tempfile.gettempdir()) / "shopmesh-local-ports.lock"
    # Read-only: on a shared /tmp the file may be another user's, and flock needs no write access. Opened
    # without O_CREAT when it exists (fs.protected_regular refuses O_CREAT on another's file in a sticky folder).
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    with os.fdopen(descriptor) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The addresses a walk-through's user sets at its top, read from the stack's port plan.
WalkthroughAddresses = Callable[[PortPlan], dict[str, str]]


@contextlib.asynccontextmanager
async def walkthrough_stack(cwd: Path, ports: PortPlan) -> AsyncIterator[Stack]:
    """A stack on `ports` as a user runs README's walk-throughs beside `make run`: from `cwd`, laid out like the
    repository (`.venv/` as in a checkout, `.data/` as the launcher's, the stack's data there). On the local
    ports, which another walk-through's stack may hold, it waits its turn for them first."""
    (cwd / ".venv").symlink_to(ROOT / ".venv")
    with contextlib.ExitStack() as held:
        if ports.nats == LOCAL_NATS_PORT:  # make run's ports
            await asyncio.to_thread(held.enter_context, local_ports_held())
        async with Stack(cwd / ".data", ports=ports, log_format="json") as stack:
            yield stack


async def run_walkthrough(
    cwd: Path, marker: str, ports: PortPlan, addresses: WalkthroughAddresses | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ```bash block after `marker` in README.md verbatim from `cwd` (a walkthrough_stack's) against its
    stack on `ports`; bash's result, which must have succeeded. `addresses`: as a user of `--free-ports` runs it,
    each `NAME=...` line of the block it names set to the stack's address instead (the rest verbatim)."""
    readme = (ROOT / "README.md").read_text()
    assert marker in readme, f"README.md lost its marker {marker}"
    block = re.search(r"```bash\n(.*?)```", readme.split(marker, 1)[1], re.DOTALL)
    assert block, f"no ```bash block after {marker} in README.md"
    script = block.group(1)
    for name, value in (addresses(ports) if addresses is not None else {}).items():
        script, found = re.subn(rf"^{name}=.*$", f"{name}={value}", script, count=1, flags=re.MULTILINE)
        assert found, f"README.md's block after {marker} has no {name}= line for a stack on other ports"
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def readme_walkthrough(
    tmp_path: Path,
) -> Callable[..., contextlib.AbstractAsyncContextManager[subprocess.CompletedProcess[str]]]:
    """Run the ```bash block after `marker` in README.md verbatim (run_walkthrough) against a stack of its own on
    `ports` (walkthrough_stack, from tmp_path), which keeps running inside the `async with` (its data in
    tmp_path/.data); yields bash's result."""

    @contextlib.asynccontextmanager
    async def run(
        marker: str, ports: PortPlan, addresses: WalkthroughAddresses | None = None
    ) -> AsyncIterator[subprocess.CompletedProcess[str]]:
        async with walkthrough_stack(tmp_path, ports):
            yield await run_walkthrough(tmp_path, marker, ports, addresses)

    return run
