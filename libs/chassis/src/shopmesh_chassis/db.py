"""Databases: one per service. SQLite by default (a file under the data folder), PostgreSQL when
`DATABASE_URL` points at one (asyncpg). SQLAlchemy 2 async engines; Alembic migrations at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Insert, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shopmesh_chassis.sqlite_inline import inline_connector

log = logging.getLogger("shopmesh.db")

READ_ONLY = "shopmesh_read_only"

# How long SQLite waits for a lock another process holds. Calls run on the event loop (sqlite_inline), so
# the whole service waits with it: this bounds that. Inside a service, writers queue on an asyncio lock.
_SQLITE_BUSY_SECONDS = 5.0


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database, as an aware UTC datetime (SQLite returns naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The INSERT of `dialect` (SQLite or PostgreSQL), which has `on_conflict_do_nothing/do_update`:
    both databases have the same upsert, only the construct's module differs."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported database {dialect!r}: shopmesh runs on SQLite or PostgreSQL")


@functools.cache
def insert_skipping_existing(dialect: str, table: Table) -> Insert:
    """`INSERT .. ON CONFLICT DO NOTHING`: a row whose key exists is skipped, never overwritten, and
    `rowcount` says how many were inserted. On PostgreSQL a concurrent insert of the same key waits for
    the other transaction, then skips (it committed) or inserts (it rolled back). Built once per
    (dialect, table)."""
    return dialect_insert(dialect, table).on_conflict_do_nothing()


def sqlite_url(data_dir: str | Path, service_name: str) -> str:
    return f"sqlite+aiosqlite:///{Path(data_dir) / service_name}.db"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (`postgresql://`, `postgres://`) and pick the async drivers."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.get_driver_name() != "asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and parsed.get_driver_name() != "aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database or ":memory:"
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, async_creator=inline_connector(database, timeout=_SQLITE_BUSY_SECONDS))
        _serialize_sqlite_writers(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """Every SQLite transaction starts with BEGIN IMMEDIATE.

    pysqlite's default deferred BEGIN lets two transactions read, then both try to write, and one dies
    with "database is locked". IMMEDIATE takes the write lock up front (waiting on busy_timeout), so a
    read-check-write such as a stock reservation is serialized exactly as on PostgreSQL.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_SECONDS * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads take a snapshot (WAL lets them run beside the writer); everything else takes the write lock.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """An engine; `transaction()` is the unit of work, `read()` a snapshot.

    Both hand out SQLAlchemy Core connections, not ORM sessions: the stores speak Core (tables and
    statements, no mapped classes), and a session's bookkeeping cost ~0.2 ms per transaction for nothing
    (docs/benchmarks.md)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, pool_size=pool_size)
        # SQLite has one writer at a time. Waiting for it in SQLite's busy handler means sleeping in
        # growing steps in a worker thread (long tails under load); queueing here is FIFO and wakes at once.
        self._writer = asyncio.Lock() if is_sqlite(self.url) else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one transaction: committed on success, rolled back on any exception.

        Do not open a transaction while holding another in the same task: on SQLite they would wait for
        each other."""
        async with self._writer or contextlib.nullcontext(), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only: a consistent snapshot that never waits for (or blocks) the writer.
        Nothing is kept: the transaction is rolled back at the end."""
        async with self.engine.connect() as connection:
            if self._writer is not None:
                connection = await connection.execution_options(**{READ_ONLY: True})
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()
