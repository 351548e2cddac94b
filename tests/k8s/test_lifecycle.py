"""Pod lifecycle as the kubelet drives it: the image's entrypoint runs the interpreter as PID 1 of the
container's PID namespace (exec form, services/*/Dockerfile), and the kubelet stops a container with
SIGTERM, then SIGKILL after terminationGracePeriodSeconds (40 s by default, helm/shopmesh/values.yaml)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from shopmesh_chassis.migrations import _PG_MIGRATION_LOCK
from shopmesh_chassis.testing import eventually, free_port
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
        # The service's lock wait polls pg_try_advisory_lock and commits between tries, so no lock wait or
        # lasting query shows it in pg_stat_activity: the server's log of this database's new sessions does.
        server_log = postgres.data_dir / "server.log"
        logged_before = server_log.stat().st_size
        database = await holder.fetchval("SELECT current_database()")
        await holder.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
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

            # SIGTERM only once the service has tried for the lock and lost, so waits for it: a start takes
            # seconds, tens of them on a busy machine, and a signal sent earlier hits the imports instead (the
            # next test's case), not the wait this one is about.
            def tried_for_the_lock() -> bool:
                assert process.returncode is None, f"the service exited ({process.returncode}) before the lock"
                with server_log.open("rb") as log:
                    log.seek(logged_before)
                    return b"pg_try_advisory_lock" in log.read()

            await eventually(tried_for_the_lock, "the service trying for the migration lock", timeout=60)
            assert process.returncode is None, "the service should still be starting"
            os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
            try:
                status = await asyncio.wait_for(process.wait(), 30)
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


# Runs a service's `__main__` as `python -m` does, held at its first import of grpc: it reports whether SIGTERM has a
# handler by then and waits there for the test's SIGTERM, so the signal surely comes during the imports. A poll
# from outside raced the child: on a busy machine (make test beside another worker) the poller woke only after
# grpc was loaded.
_HOLD_AT_GRPC_IMPORT = """
import os, runpy, signal, sys, time

class HoldAtGrpcImport:
    def find_spec(self, name, path=None, target=None):
        if name != "grpc":
            return None
        sys.meta_path.remove(self)
        handler = signal.getsignal(signal.SIGTERM)
        with open(os.environ["GRPC_IMPORT_REPORT"], "w") as report:
            report.write("default" if handler in (signal.SIG_DFL, None) else "handled")
        # The test's SIGTERM ends the process in this wait; a dropped one lets the imports go on after it.
        time.sleep(30)
        return None

sys.meta_path.insert(0, HoldAtGrpcImport())
module = sys.argv[1]
del sys.argv[1]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.timeout(240)  # the bounds below, generous for a busy machine, with room to spare
async def test_sigterm_while_the_interpreter_still_imports_stops_the_pod(tmp_path: Path) -> None:
    """The same deletion a moment earlier: the kubelet's SIGTERM comes while the interpreter still imports the
    service (grpc, SQLAlchemy, OpenTelemetry, NATS: over a second of a start on SQLite). As PID 1 a signal with
    no handler is dropped: the service started, served, and the pod waited out terminationGracePeriodSeconds
    for SIGKILL (the kubelet sends SIGTERM once). The handler must be there before grpc is even loaded, and a
    SIGTERM then stops the start."""
    report = tmp_path / "grpc-import"
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "GRPC_PORT": str(free_port()),
        "METRICS_PORT": "-1",
        "LOG_FORMAT": "text",
        "GRPC_IMPORT_REPORT": str(report),
    }
    env.pop("DATABASE_URL", None)
    argv = [sys.executable, "-c", _HOLD_AT_GRPC_IMPORT, "shopmesh_catalog"]
    process = await asyncio.create_subprocess_exec(*_as_pid_1(argv), env=env)
    try:
        init = _namespace_init(process.pid)
        reported = await eventually(
            lambda: report.exists() and report.read_text(), "the service's import of grpc", timeout=60
        )
        assert reported == "handled", (
            "SIGTERM had no handler when grpc was imported: a signal during the imports is dropped"
        )
        os.kill(init, signal.SIGTERM)  # as the container runtime does, from outside the namespace
        # The signal ends the process in the hold (early_signals), the imports left undone; a dropped signal
        # leaves it serving for ever, so only a hang reaches this bound.
        assert await asyncio.wait_for(process.wait(), 90) == 128 + signal.SIGTERM
    finally:
        if process.returncode is None:
            os.kill(_namespace_init(process.pid), signal.SIGKILL)
            await process.wait()
