"""aiosqlite connections that run each SQLite call on the event loop's thread instead of a worker thread.

Why: aiosqlite hands every call (cursor, execute, fetch, commit, ...) to a per-connection thread and
wakes the event loop when it is done. For a service's own SQLite file in WAL mode with
`synchronous=NORMAL` a statement takes microseconds and a commit does not fsync, so the hand-off costs
far more than the work: measured here ~1.1 ms of CPU per one-statement transaction (1.5 ms with the
thread vs 0.4 ms without; `docs/benchmarks.md`). Running the call inline removes that, at one price:
while SQLite waits for a lock held by *another process* (busy timeout), the event loop waits too. In
shopmesh one process owns each SQLite file, and writers inside it queue on `Database`'s asyncio lock
before they reach SQLite, so SQLite itself never has to wait; PostgreSQL is the choice for more than
one process per database.

Everything else (SQLAlchemy's aiosqlite dialect, the aiosqlite cursor API) stays as it is: this only
replaces where aiosqlite runs a call.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import aiosqlite


class _RunNow:
    """Stands in for aiosqlite's queue to the worker thread: runs each queued call at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An `aiosqlite.Connection` whose calls run on the calling (event loop) thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _RunNow()  # type: ignore[assignment]

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Every cursor/execute/fetch/commit comes through here: call directly, without the future and
        # partial that aiosqlite's queue needs (`_RunNow` serves only the few calls that bypass this).
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        # No worker thread to start.
        return self._connect().__await__()


def inline_connector(database: str, **kwargs: Any) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    """An `async_creator` for `create_async_engine`: connections to `database` that run inline."""

    def connect() -> Awaitable[aiosqlite.Connection]:
        # Calls come from the loop's thread, except that the pool may close a connection it garbage-collects
        # from another one; SQLite's serialized threading mode makes that safe.
        return InlineConnection(lambda: sqlite3.connect(database, check_same_thread=False, **kwargs))

    return connect
