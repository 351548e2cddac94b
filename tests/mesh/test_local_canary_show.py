"""`python -m shopmesh_platform.mesh.split --show` on a real stack: each caller's sidecar's share of a
canary's calls, read from its Envoy's runtime, and whether the callers agree (docs/mesh.md, "A canary,
locally"). Two callers of catalog, so that they can disagree. Real processes, a real PostgreSQL, real Envoys."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from shopmesh_chassis.local_stack import stack_file, write_stack_file
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_platform.mesh import faults, split
from shopmesh_platform.mesh.envoy import split_runtime_keys
from shopmesh_platform.mesh.faults import modify_runtime
from shopmesh_platform.ports import Canary
from shopmesh_platform.run import local_stack
from shopmesh_platform.stack import Stack, postgres_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICES = ["catalog", "gateway", "recommendations"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path, postgres: PostgresServer) -> AsyncIterator[Stack]:
    env = postgres_env(postgres, SERVICES)
    env["catalog-canary"] = {"SEED_CATALOG": "false"}
    async with Stack.for_tests(module_dir, services=SERVICES, env=env, mesh=True, canary=Canary("catalog", 20)) as s:
        yield s


def put_back_splits() -> None:
    """Every caller of catalog back on the weight its canary started with: the next test starts from there."""
    assert split.main(["catalog", "--reset"], io.StringIO()) == 0


@pytest.fixture
def sidecars(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The tools find the stack's sidecars (as `make run MESH=envoy`'s); every split put back after."""
    monkeypatch.setattr(faults, "local_admin_socket", stack.sidecar_admin_socket)
    yield stack
    put_back_splits()


@pytest.fixture
def listed(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The tools find the stack through its .data/stack.json, as its launcher writes it (with the weight the
    canary started with), in the directory they run in; every split put back after."""
    monkeypatch.chdir(tmp_path)
    write_stack_file(replace(local_stack(stack), path=stack_file(Path(".data"))))
    yield stack
    put_back_splits()


def shown(argv: list[str]) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    status = split.main(["--show", *argv], out, err)
    return status, out.getvalue().splitlines(), err.getvalue()


async def test_show_gives_each_callers_share_after_a_split(sidecars: Stack) -> None:
    status, lines, err = shown([])
    assert status == 0, err
    assert [line.split() for line in lines[1:]] == [
        ["catalog", "gateway", "the", "weight", "it", "started", "with"],
        ["catalog", "recommendations", "the", "weight", "it", "started", "with"],
    ]
    assert split.main(["catalog", "30"], io.StringIO()) == 0
    status, lines, err = shown(["catalog"])
    assert status == 0, err
    assert [line.split() for line in lines[1:]] == [
        ["catalog", "gateway", "30", "%"],
        ["catalog", "recommendations", "30", "%"],
    ]


async def test_show_flags_the_callers_once_a_runtime_was_changed_behind_the_tools_back(sidecars: Stack) -> None:
    # Two callers on two shares: neither is more callers' share than the other, so both are flagged.
    assert split.main(["catalog", "30"], io.StringIO()) == 0
    admin = sidecars.sidecar_admin_socket("recommendations")
    assert admin is not None
    stable, canary = split_runtime_keys("catalog")
    modify_runtime(admin, {stable: "40", canary: "60"})
    status, lines, err = shown([])
    assert status == split.DISAGREE, err
    assert [line.split() for line in lines[1:]] == [
        ["catalog", "gateway", "30", "%", "DISAGREES"],
        ["catalog", "recommendations", "60", "%", "DISAGREES"],
    ]
    assert "catalog's callers split its calls differently" in err, err


async def test_show_takes_a_caller_set_to_the_weight_the_canary_started_with_as_agreeing(listed: Stack) -> None:
    """Envoy's runtime tells no share until one is set: the callers on the starting 20 % were said to be on "the
    weight it started with", and the one set to 20 % by hand was flagged as disagreeing with them."""
    status, lines, err = shown([])
    assert status == 0, err
    assert [line.split() for line in lines[1:]] == [
        ["catalog", "gateway", "20", "%", "(as", "started)"],
        ["catalog", "recommendations", "20", "%", "(as", "started)"],
    ]
    admin = listed.sidecar_admin_socket("recommendations")
    assert admin is not None
    stable, canary = split_runtime_keys("catalog")
    modify_runtime(admin, {stable: "80", canary: "20"})
    status, lines, err = shown([])
    assert status == 0, err
    assert [line.split() for line in lines[1:]] == [
        ["catalog", "gateway", "20", "%", "(as", "started)"],
        ["catalog", "recommendations", "20", "%"],
    ]
