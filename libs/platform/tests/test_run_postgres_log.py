"""What the launcher's throwaway PostgreSQL (`make run --postgres`) leaves to look at: its log in the data
directory.

Its output was kept only as its last 20 lines, printed if it crashed: a deadlock or a failed statement left no
trace anywhere.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

from shopmesh_chassis.local_stack import PRIVATE_FILE_MODE
from shopmesh_chassis.testing import eventually

from .run_kit import ctrl_c, database_passfile, database_port, launched

POSTGRES_ONLY = ("--services", "", "--http-port", "0", "--postgres")


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
