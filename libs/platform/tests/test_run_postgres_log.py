"""What the launcher's throwaway PostgreSQL (`make run --postgres`) leaves to look at: its log in the data
directory, and after a crash of the stack its folder.

Its output was kept only as its last 20 lines, printed if it crashed: a deadlock or a failed statement left no
trace anywhere, and a crash of any process took the databases with it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import stat
import subprocess
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from shopmesh_chassis.local_stack import PRIVATE_FILE_MODE
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.postgres import PASSFILE_NAME
from shopmesh_platform import run
from shopmesh_platform.processes import OVER_LONG_LINE

from .run_kit import ctrl_c, database_passfile, database_port, kept_folders, launched, stop_left_behind, table_rows

POSTGRES_ONLY = ("--services", "", "--http-port", "0", "--postgres")


def server_reading(output: asyncio.StreamReader) -> asyncio.subprocess.Process:
    """A stand-in for the server whose output is `output`: all that `_keep_last_lines` reads of it."""
    return cast(asyncio.subprocess.Process, SimpleNamespace(stdout=output))


def server_that_wrote(data: bytes, *, limit: int | None = None) -> asyncio.subprocess.Process:
    """A stand-in for the server whose whole output was `data` (read `limit` bytes a line at most)."""
    output = asyncio.StreamReader() if limit is None else asyncio.StreamReader(limit=limit)
    output.feed_data(data)
    output.feed_eof()
    return server_reading(output)


def log_lines(count: int) -> bytes:
    return b"".join(f"LOG:  line {n}\n".encode() for n in range(count))


async def test_a_log_file_that_cannot_be_written_says_so_once_and_the_server_output_is_still_drained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A drain that ended with the write left the server blocked on its full pipe, and every query with it.
    server = server_that_wrote(log_lines(3))
    kept: deque[str] = deque(maxlen=20)
    # A folder where the file should be: as a read-only or full disk, every append fails.
    await asyncio.wait_for(run._keep_last_lines(server, kept, tmp_path), 10)
    assert list(kept) == ["LOG:  line 0", "LOG:  line 1", "LOG:  line 2"]
    said = [line for line in capsys.readouterr().out.splitlines() if str(tmp_path) in line]
    assert len(said) == 1, said
    assert "no longer written (Is a directory)" in said[0]


async def test_an_over_long_server_line_is_dropped_and_the_output_after_it_still_drained(tmp_path: Path) -> None:
    # asyncio raises on a line past the reader's limit; a drain that ended there blocked the server as above.
    server = server_that_wrote(b"STATEMENT:  " + b"x" * 200 + b"\nLOG:  after it\n", limit=64)
    kept: deque[str] = deque(maxlen=20)
    log = tmp_path / "server.log"
    await asyncio.wait_for(run._keep_last_lines(server, kept, log), 10)
    assert list(kept) == [OVER_LONG_LINE, "LOG:  after it"]
    assert log.read_text().splitlines() == [OVER_LONG_LINE, "LOG:  after it"]


async def test_the_log_file_is_opened_once_for_all_the_server_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was opened, and its folder made, for each line: a busy server's every statement logged cost that.
    server = server_that_wrote(log_lines(5))
    log = tmp_path / "postgres" / "server.log"
    opened: list[str] = []
    real_open = os.open

    def counted_open(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counted_open)
    await asyncio.wait_for(run._keep_last_lines(server, deque(maxlen=20), log), 10)
    assert opened.count(str(log)) == 1, opened
    assert log.read_text().splitlines() == [f"LOG:  line {n}" for n in range(5)]
    assert stat.S_IMODE(log.stat().st_mode) == PRIVATE_FILE_MODE


async def test_a_log_file_removed_while_written_is_made_again(tmp_path: Path) -> None:
    """`--reset` empties the data directory once the server runs: the lines after it go to a new log file,
    not to the removed one, which nobody can read."""
    output = asyncio.StreamReader()
    server = server_reading(output)
    log = tmp_path / "postgres" / "server.log"
    drain = asyncio.create_task(run._keep_last_lines(server, deque(maxlen=20), log))
    try:
        output.feed_data(b"LOG:  before the reset\n")
        await eventually(lambda: log.exists() and "before" in log.read_text(), "the first line in the log")
        shutil.rmtree(log.parent)
        output.feed_data(b"LOG:  after the reset\n")
        output.feed_eof()
        await asyncio.wait_for(drain, 10)
    finally:
        drain.cancel()
    assert log.read_text().splitlines() == ["LOG:  after the reset"]
    assert stat.S_IMODE(log.stat().st_mode) == PRIVATE_FILE_MODE


def log_path(lines: list[str]) -> Path:
    """The server's log file, as the banner names it."""
    [said] = [line for line in lines if line.startswith("  PostgreSQL's log")]
    return Path(said.rsplit(": ", 1)[1])


async def test_a_failed_statement_is_in_the_postgresql_log_file_the_banner_names_which_outlives_the_stop(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with launched(data, *POSTGRES_ONLY, ready_within=120) as (process, lines):
        log = log_path(lines)
        assert log.absolute() == (data / "postgres" / "server.log").absolute()
        psql = ["psql", "-w", "-h", "127.0.0.1", "-p", str(database_port(lines)), "-U", "postgres", "-d", "postgres"]
        env = {**os.environ, "PGPASSFILE": str(database_passfile(lines))}
        failed = await asyncio.to_thread(
            subprocess.run, [*psql, "-c", "SELECT 1/0"], env=env, capture_output=True, text=True, timeout=30
        )
        assert "division by zero" in failed.stderr, failed.stderr
        await eventually(lambda: log.exists() and "division by zero" in log.read_text(), "the error in the log file")
        assert stat.S_IMODE(log.stat().st_mode) == PRIVATE_FILE_MODE
        assert "stopped cleanly" in await ctrl_c(process)
    assert "division by zero" in log.read_text(), "the log went with the stop"
    assert not kept_folders(process.pid), "a Ctrl-C kept the throwaway server's folder"


async def test_a_child_killed_with_sigkill_leaves_the_database_folder_and_a_line_saying_how_to_start_it(
    tmp_path: Path,
) -> None:
    async with launched(tmp_path / "data", *POSTGRES_ONLY, ready_within=120) as (process, lines):
        port = database_port(lines)
        try:
            os.kill(int(table_rows(lines)["traces"]["pid"]), signal.SIGKILL)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await asyncio.to_thread(stop_left_behind, process.pid, port)
    said = rest.decode()
    assert process.returncode == 1, said
    [folder] = kept_folders(process.pid)
    try:
        [line] = [line for line in said.splitlines() if str(folder) in line]
        assert (folder / "PG_VERSION").exists(), "the kept folder holds no database"
        start, remove = (shlex.split(command) for command in line.split("`")[1::2])
        assert remove == ["rm", "-rf", str(folder)]
        # In a group of its own, which a Ctrl-C signals as a terminal does its foreground group (runuser, run as
        # root, passes no signal on).
        server = await asyncio.create_subprocess_exec(
            *start, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        try:
            psql = ["psql", "-w", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"]
            env = {**os.environ, "PGPASSFILE": str(folder / PASSFILE_NAME)}

            def answers() -> bool:
                query = [*psql, "-c", "SELECT 1"]
                return subprocess.run(query, env=env, capture_output=True, text=True, timeout=30).stdout.strip() == "1"

            await eventually(answers, "the kept server, started as the line says, answering psql", timeout=60)
        finally:
            os.killpg(server.pid, signal.SIGINT)
            await asyncio.wait_for(server.wait(), 60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
