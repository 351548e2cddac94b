"""The launcher's own PostgreSQL (`make run --postgres`) watched as its exit, not as the end of its output.

asyncio's `Process.wait()` (Python 3.11) returns only once every copy of the child's stdout pipe is closed
too. The postmaster's children (backends, the checkpointer: each in a session of its own) inherit that pipe,
so a watch built on it stayed quiet for as long as any of them lived on around a dead server. Here a copy
opened through /proc stands in for them, as for the stack's children (test_stack.py).
"""

from __future__ import annotations

import asyncio
import os
import signal

from shopmesh_platform.run import _POSTGRES_STOP_SECONDS, throwaway_postgres


async def test_a_postgresql_crash_is_reported_while_another_process_still_holds_its_output() -> None:
    async with throwaway_postgres() as postgres:
        watching = asyncio.ensure_future(postgres.crashed())
        holder = os.open(f"/proc/{postgres.process.pid}/fd/1", os.O_WRONLY)
        try:
            os.kill(postgres.process.pid, signal.SIGKILL)
            crash = await asyncio.wait_for(asyncio.shield(watching), 30)
        finally:
            os.close(holder)
    assert crash.summary == "PostgreSQL exited unexpectedly (killed by SIGKILL)"


async def test_a_postgresql_stop_ends_once_the_server_exits_while_another_process_still_holds_its_output() -> None:
    """Waiting on `Process.wait()`, the stop took a server that had shut down at once for one that outlived its
    fast shutdown, SIGKILLed it after 15 s, and then waited on for the pipe."""
    loop = asyncio.get_running_loop()
    async with throwaway_postgres() as postgres:
        holder = os.open(f"/proc/{postgres.process.pid}/fd/1", os.O_WRONLY)
        try:
            started = loop.time()
            code, crash = await asyncio.wait_for(postgres.stop(), _POSTGRES_STOP_SECONDS + 30)
            took = loop.time() - started
        finally:
            os.close(holder)
    assert (code, crash) == (0, None)
    # An idle server's fast shutdown takes well under a second; the bound is where the SIGKILL would come.
    assert took < _POSTGRES_STOP_SECONDS, f"the stop took {took:.1f} s: it waited out the fast shutdown's bound"
