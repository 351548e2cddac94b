"""Databases: one per service. SQLite by default (a file under the data folder), PostgreSQL when
`DATABASE_URL` points at one (asyncpg). SQLAlchemy 2 async engines; Alembic migrations at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger("shopmesh.db")

READ_ONLY = "shopmesh_read_only"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database, as an aware UTC datetime (SQLite returns naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
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
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads take a snapshot (WAL lets them run beside the writer); everything else takes the write lock.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory; `transaction()` is the unit of work."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, pool_size=pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Waiting for it in SQLite's busy handler means sleeping in
        # growing steps in a worker thread (long tails under load); queueing here is FIFO and wakes at once.
        self._writer = asyncio.Lock() if is_sqlite(self.url) else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on any exception.

        Do not open a transaction while holding another in the same task: on SQLite they would wait for
        each other."""
        async with contextlib.AsyncExitStack() as stack:
            if self._writer is not None:
                await stack.enter_async_context(self._writer)
            session = await stack.enter_async_context(self.sessions())
            await stack.enter_async_context(session.begin())
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only: a consistent snapshot that never waits for (or blocks) the writer."""
        async with self.sessions() as session:
            if self._writer is not None:
                await session.connection(execution_options={READ_ONLY: True})
            try:
                yield session
            finally:
                await session.rollback()  # nothing to keep: end the snapshot

    async def dispose(self) -> None:
        await self.engine.dispose()
