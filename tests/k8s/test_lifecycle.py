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
        process = subprocess.Popen(_as_pid_1([sys.executable, "-m", "shopmesh_catalog"]), env=env)
        try:
            init = _namespace_init(process.pid)
            await asyncio.sleep(3)  # well into its start: waiting for the lock, polling every 0.5 s
            assert process.poll() is None, "the service should still be starting"
            os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert process.poll() is not None, (
                "SIGTERM during startup was ignored: as PID 1 the interpreter has no SIGTERM handler until "
                "the server starts (ChassisServer.install_signal_handlers), so the kernel drops the signal and "
                "the pod waits out terminationGracePeriodSeconds for SIGKILL"
            )
            # Stopped before it served: not a clean drain (0), the signal's status as a shell reports it.
            assert process.returncode == 128 + signal.SIGTERM
        finally:
            if process.poll() is None:
                os.kill(_namespace_init(process.pid), signal.SIGKILL)
                process.wait(timeout=10)
    finally:
        await holder.close()


def test_sigterm_while_the_interpreter_still_imports_stops_the_pod(tmp_path: Path) -> None:
    """The same deletion a moment earlier: the kubelet's SIGTERM comes while the interpreter still imports the
    service (grpc, SQLAlchemy, OpenTelemetry, NATS: over a second of a start on SQLite). `app.run` installs its
    handlers only once the event loop runs, so as PID 1 the signal is dropped as before: the service starts,
    serves, and the pod waits out terminationGracePeriodSeconds for SIGKILL (the kubelet sends SIGTERM once)."""
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
        time.sleep(0.2)  # the interpreter is importing the service
        os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is not None, (
            "SIGTERM sent while the service imported was dropped (no handler yet as PID 1): it started and "
            "serves, and the pod would wait for SIGKILL"
        )
    finally:
        if process.poll() is None:
            os.kill(_namespace_init(process.pid), signal.SIGKILL)
            process.wait(timeout=10)
