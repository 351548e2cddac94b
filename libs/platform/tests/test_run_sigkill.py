"""A launcher killed with SIGKILL: none of its children, nor its throwaway PostgreSQL, outlives it, and the
next launcher removes the server's folder it left (and no other account's).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shopmesh_chassis.local_stack import USING_MAKE_RUNS
from shopmesh_chassis.testing import eventually
from shopmesh_platform import run

from .run_kit import (
    accepting,
    gone,
    read_until_ready,
    run_tool,
    start_launcher,
    stop_launcher,
    stop_left_behind,
    table_rows,
)


def assert_next_launcher_removes_the_folder_of(killed: int) -> None:
    """The throwaway server's folder stays behind a launcher killed with -9; the next `run --postgres`
    removes it, and no running launcher's."""
    [left] = Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{killed}-*")
    running = Path(tempfile.mkdtemp(prefix=f"shopmesh-run-pg-{os.getpid()}-"))
    try:
        assert left in run.remove_orphaned_data_dirs()
        assert not left.exists()
        assert running.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)
        running.rmdir()


async def test_no_child_outlives_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    """Nor does its stack file mislead: left behind, it names a launcher that is gone, and the tools say they
    ignore it and use the local defaults."""
    process = await start_launcher(tmp_path / ".data", "--services", "")
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 60)
        nats_pid = int(table_rows(lines)["nats"]["pid"])

        process.kill()  # no chance to stop anything itself
        await process.wait()
    finally:
        await stop_launcher(process)

    # The kernel sends the orphan SIGTERM (PR_SET_PDEATHSIG); it shuts down on its own.
    await eventually(lambda: gone(nats_pid), "nats-server gone after its launcher was killed", timeout=15)
    assert json.loads((tmp_path / ".data" / "stack.json").read_text())["pid"] == process.pid
    code, out, err = await run_tool(tmp_path, "-m", "shopmesh_platform.traces")
    assert (code, out) == (0, "no traces yet (`make run` records them; call a service first)\n")
    assert err == f"ignoring .data/stack.json: its launcher (pid {process.pid}) is gone; {USING_MAKE_RUNS}\n"
    # It is the stack's own: --reset takes it with the rest.
    run.reset_data_dir(tmp_path / ".data")
    assert list((tmp_path / ".data").iterdir()) == []


async def test_no_throwaway_postgres_outlives_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    process = await start_launcher(tmp_path / "data", "--services", "", "--postgres")
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 120)
        [said] = [line for line in lines if line.startswith("Databases: ")]
        port = int(said.split("127.0.0.1:")[1].split()[0])
        assert accepting(port)
        process.kill()  # no chance to stop anything itself
        await process.wait()
    finally:
        await stop_launcher(process)
    try:
        # The kernel sends the orphaned server SIGINT (PR_SET_PDEATHSIG): PostgreSQL's fast shutdown.
        await eventually(lambda: not accepting(port), "the throwaway PostgreSQL gone with its launcher", timeout=15)
    finally:
        await asyncio.to_thread(stop_left_behind, process.pid, port)
    assert_next_launcher_removes_the_folder_of(process.pid)


def test_a_gone_launchers_folder_of_another_account_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's launcher, or one in another container sharing /tmp, may look gone from here."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = tmp_path / f"shopmesh-run-pg-{gone.pid}-abc"
    folder.mkdir()
    odd = tmp_path / "shopmesh-run-pg-\u00b2-abc"  # a superscript two: isdigit(), yet not a process id
    odd.mkdir()
    monkeypatch.setattr(run, "_data_dir_owner", lambda: os.geteuid() + 1)
    assert run.remove_orphaned_data_dirs(tmp_path) == []
    assert folder.exists()
    assert odd.exists()
    monkeypatch.setattr(run, "_data_dir_owner", os.geteuid)
    assert run.remove_orphaned_data_dirs(tmp_path) == [folder]
    assert odd.exists(), "not a launcher's folder: its name has no process id"
