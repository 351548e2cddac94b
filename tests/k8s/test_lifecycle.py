"""Pod lifecycle as the kubelet drives it: the image's entrypoint runs the interpreter as PID 1 of the
container's PID namespace (exec form, services/*/Dockerfile), and the kubelet stops a container with
SIGTERM, then SIGKILL after terminationGracePeriodSeconds (40 s by default, helm/shopmesh/values.yaml)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from shopmesh_chassis.migrations import _PG_MIGRATION_LOCK
from shopmesh_chassis.testing import free_port
from shopmesh_chassis.testing.postgres import PostgresServer


def _as_pid_1(argv: list[str]) -> list[str]:
    """`argv` as the init process of a new PID namespace, as a container's exec-form entrypoint runs."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", "--kill-child", *argv]


def _namespace_init(unshare_pid: int) -> int:
    """The host pid of the process `unshare --fork` started (PID 1 inside), as the runtime signals it."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if children.exists() and (pids := children.read_text().split()):
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no process")


async def test_sigterm_stops_a_pod_still_starting(postgres: PostgresServer) -> None:
    """A pod deleted while it starts (a rollout replaced it, the HPA scaled in, a node drains) must stop on
    SIGTERM, not sit out the whole termination grace period until the kubelet's SIGKILL. Here the start waits
    for the migration lock, which another replica holds while it migrates (PostgreSQL; docs/chassis.md)."""
    url = postgres.create_database()
    holder = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", _PG_MIGRATION_LOCK)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "GRPC_PORT": str(free_port()),
            "METRICS_PORT": "-1",
            "LOG_FORMAT": "text",
        }
        process = await asyncio.create_subprocess_exec(*_as_pid_1([sys.executable, "-m", "shopmesh_catalog"]), env=env)
        try:
            init = _namespace_init(process.pid)
            await asyncio.sleep(3)  # well into its start: waiting for the lock, polling every 0.5 s
            assert process.returncode is None, "the service should still be starting"
            os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
            try:
                status = await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                raise AssertionError(
                    "SIGTERM during startup was ignored: as PID 1 the interpreter has no SIGTERM handler until "
                    "the server starts (ChassisServer.install_signal_handlers), so the kernel drops the signal "
                    "and the pod waits out terminationGracePeriodSeconds for SIGKILL"
                ) from None
            # Stopped before it served: not a clean drain (0), the signal's status as a shell reports it.
            assert status == 128 + signal.SIGTERM
        finally:
            if process.returncode is None:
                os.kill(_namespace_init(process.pid), signal.SIGKILL)
                await process.wait()
    finally:
        await holder.close()


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_sigterm_while_the_interpreter_still_imports_stops_the_pod(tmp_path: Path) -> None:
    """The same deletion a moment earlier: the kubelet's SIGTERM comes while the interpreter still imports the
    service (grpc, SQLAlchemy, OpenTelemetry, NATS: over a second of a start on SQLite). As PID 1 a signal with
    no handler is dropped: the service started, served, and the pod waited out terminationGracePeriodSeconds
    for SIGKILL (the kubelet sends SIGTERM once). The handler must be there before grpc is even loaded, and a
    SIGTERM then stops the start."""
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "GRPC_PORT": str(free_port()),
        "METRICS_PORT": "-1",
        "LOG_FORMAT": "text",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(_as_pid_1([sys.executable, "-m", "shopmesh_catalog"]), env=env)
    try:
        init = _namespace_init(process.pid)
        deadline = time.monotonic() + 15
        while not _catches(init, signal.SIGTERM) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert _catches(init, signal.SIGTERM), "the service never took SIGTERM"
        # Polled every millisecond, the handler is seen long before the imports end (over a second).
        assert "cygrpc" not in Path(f"/proc/{init}/maps").read_text(), (
            "SIGTERM had no handler until grpc was imported: a signal during the imports is dropped"
        )
        os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
        assert process.wait(timeout=15) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            os.kill(_namespace_init(process.pid), signal.SIGKILL)
            process.wait(timeout=10)
