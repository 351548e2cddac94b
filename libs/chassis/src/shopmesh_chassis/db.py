"""Databases: one per service. SQLite by default (a file under the data folder), PostgreSQL when
`DATABASE_URL` points at one (asyncpg). SQLAlchemy 2 Core; Alembic migrations at startup.

Stores see one interface, `DbConnection`, on both: on PostgreSQL it is SQLAlchemy's `AsyncConnection`
(asyncpg, statements wait on the network); on SQLite a plain SQLAlchemy connection whose calls run on
the event loop's thread (`SqliteConnection`, below, says why).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Never, ParamSpec, Protocol, TypeVar, TypeVarTuple, overload

import sqlalchemy
from sqlalchemy import ColumnElement, CursorResult, Dialect, Executable, Insert, ScalarResult, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, ExceptionContext, make_url
from sqlalchemy.engine.interfaces import _CoreAnyExecuteParams, _CoreSingleExecuteParams
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from shopmesh_chassis import call_context
from shopmesh_chassis.backoff import backoff_delay
from shopmesh_chassis.db_errors import (
    DatabaseUnreachable,
    database_did_not_answer,
    server_said,
    sqlite_primary_code,
    without_key_values,
)
from shopmesh_chassis.grpc_errors import inbound_deadline_passed

if TYPE_CHECKING:
    from sqlalchemy.sql.selectable import TypedReturnsRows
    from sqlalchemy.util.typing import TupleAny

    from shopmesh_chassis.config import DatabaseSettings

# How long a write transaction waits for the write lock another process holds (a backup, an operator's sqlite3
# shell) before it fails DATABASE_UNAVAILABLE, counted from the call's start, its time queued for this service's
# writer included. Inside a service, writers queue on an asyncio lock, so SQLite's lock is busy only for that.
_SQLITE_BUSY_SECONDS = 5.0
# SQLite's own busy timeout, which every statement may wait in on the event loop's thread: the whole service
# waits with it, health checks included. Short: BEGIN IMMEDIATE, where a writer meets another process's lock,
# waits for it in `_begin_writing`, sleeping on the loop between tries; this only rides out a blip (a reader
# meeting another process's WAL recovery or checkpoint).
_SQLITE_LOOP_BUSY_MS = 5
# `_begin_writing`'s waits between tries: from the first, doubled up to the last. Never reached while no other
# process holds the lock, which is the normal path: its cost is one BEGIN IMMEDIATE, as before.
_SQLITE_RETRY_FIRST_SECONDS = 0.005
_SQLITE_RETRY_MAX_SECONDS = 0.1

# What a call's PostgreSQL work leaves of the time its call has left, for the service to send its answer: a tenth,
# at most a quarter of a second (a 2 s call's work gets 1.8 s, a 15 s checkout's 14.75 s). Enough for the answer
# to cross a mesh's sidecars, small beside the deadlines the services set (the gateway's floor included).
_ANSWER_SHARE = 0.1
_ANSWER_MARGIN_MAX_SECONDS = 0.25
# A call with less time left than this starts no database work: it answers as an outbound call past its deadline
# does (DEADLINE_EXCEEDED INBOUND_DEADLINE_EXCEEDED), not UNAVAILABLE DATABASE_UNAVAILABLE, which callers' breakers
# count against this service. Within a few milliseconds a healthy server under load may not get through a checkout,
# its pre-ping and a statement or two; missing them would then say how short the caller was of time, not that the
# database is away. 50 ms is several such round trips on a loaded node, and far below any deadline a service sets.
_DATABASE_TIME_FLOOR_SECONDS = 0.05
# PostgreSQL's own end of the same bound, set on each bounded write transaction (a round trip more): a statement
# that runs longer than the call's remaining time, counted from that statement's own start, it cancels itself. Per
# statement, not per call: it never ends the call's work by the deadline (the client's bound does that, cutting the
# connection), but it stops what the client cannot: a backend waiting on a row lock notices its client gone only
# once it has the lock, and would hold its place in the queue, the locks its transaction took and a connection slot
# until then (each call cut off behind a long lock one more, up to max_connections). Not on reads, the hot path:
# they take no row locks, and queue only behind a table lock (a migration's rewrite, an operator's LOCK TABLE).
# Nothing bounds how long that lock is held (the migrations' lock_timeout bounds only their own wait to take it),
# so reads cut off behind it do queue up on the server until it is released: the price of no round trip more.
_SERVER_BOUND = sqlalchemy.text("SELECT set_config('statement_timeout', :milliseconds, true)")
# PostgreSQL's query_canceled: in a bounded write, its statement_timeout (above) met before the client's bound, on
# a loop late to it. Met at COMMIT, too, the transaction is rolled back: nothing was stored.
_QUERY_CANCELED = "57014"
# Set while a call's PostgreSQL work runs under its bound: a connection invalidated then is closed without a word
# to the server (`_close_at_once`).
_BOUNDED: ContextVar[bool] = ContextVar("shopmesh_database_bounded", default=False)

log = logging.getLogger("shopmesh.db")

P = ParamSpec("P")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DbConnection(Protocol):
    """What a store may do with the connection `Database.transaction()` / `read()` hands out.

    SQLAlchemy's `AsyncConnection` is one (PostgreSQL); `SqliteConnection` is the other. The overloads
    are SQLAlchemy's, so that typed statements give typed rows on both."""

    @property
    def dialect(self) -> Dialect: ...

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*Ts], parameters: _CoreAnyExecuteParams | None = None
    ) -> CursorResult[*Ts]: ...
    @overload
    async def execute(
        self, statement: Executable, parameters: _CoreAnyExecuteParams | None = None
    ) -> CursorResult[*TupleAny]: ...

    @overload
    async def scalar(
        self, statement: TypedReturnsRows[Never], parameters: _CoreSingleExecuteParams | None = None
    ) -> Any | None: ...
    @overload
    async def scalar(
        self, statement: TypedReturnsRows[T], parameters: _CoreSingleExecuteParams | None = None
    ) -> T | None: ...
    @overload
    async def scalar(self, statement: Executable, parameters: _CoreSingleExecuteParams | None = None) -> Any: ...

    @overload
    async def scalars(
        self, statement: TypedReturnsRows[T], parameters: _CoreAnyExecuteParams | None = None
    ) -> ScalarResult[T]: ...
    @overload
    async def scalars(
        self, statement: Executable, parameters: _CoreAnyExecuteParams | None = None
    ) -> ScalarResult[Any]: ...

    async def run_sync(
        self, fn: Callable[Concatenate[sqlalchemy.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...


class SqliteConnection:
    """A SQLAlchemy connection to the service's SQLite file, called inline on the event loop's thread.

    Why not SQLAlchemy's async engine (aiosqlite): with WAL and `synchronous=NORMAL` a SQLite statement
    takes microseconds and a commit does not fsync, but the async adaptation around it (a greenlet per
    call, aiosqlite's cursor coroutines and, without more, a hand-off to a worker thread per call) costs
    several times the work: a two-statement transaction took 0.62 ms of CPU through the async engine
    with calls already inline, 0.26 ms this way (docs/benchmarks.md). The price is the one inline calls
    always had: while SQLite waits for a lock held by another *process*, the loop waits too, which the
    busy timeout keeps to a few milliseconds (a writer waits for such a lock between tries, the loop free:
    `_begin_writing`). In shopmesh one process owns each SQLite file, and writers inside it queue on
    `Database`'s asyncio lock before they reach SQLite, so SQLite itself never has to wait; PostgreSQL
    is the choice for more than one process per database.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlalchemy.Connection) -> None:
        self._connection = connection

    @property
    def dialect(self) -> Dialect:
        return self._connection.dialect

    async def execute(
        self, statement: Executable, parameters: _CoreAnyExecuteParams | None = None
    ) -> CursorResult[*TupleAny]:
        return self._connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: _CoreSingleExecuteParams | None = None) -> Any:
        return self._connection.scalar(statement, parameters)

    async def scalars(
        self, statement: Executable, parameters: _CoreAnyExecuteParams | None = None
    ) -> ScalarResult[Any]:
        return self._connection.scalars(statement, parameters)

    async def run_sync(
        self, fn: Callable[Concatenate[sqlalchemy.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return fn(self._connection, *args, **kwargs)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database, as an aware UTC datetime (SQLite returns naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Stored = TypeVar("_Stored", bound=Enum)


def stored_enum(kind: type[_Stored], value: str) -> _Stored:
    """An enum value read back from the database; the enum's UNSPECIFIED for one this release does not
    know: a newer release added it, and both run on the same database during a rollout, a canary or after
    a rollback (docs/chassis.md). UNSPECIFIED is only ever read: never decided, never written back."""
    try:
        return kind(value)
    except ValueError:
        return kind["UNSPECIFIED"]


def known_values(kind: type[Enum]) -> list[str]:
    """The stored values this release knows of `kind` (UNSPECIFIED left out): for queries that must pass
    over what a newer release wrote."""
    return [member.value for member in kind if member.name != "UNSPECIFIED"]


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


def code_point_order(dialect: str, text: ColumnElement[str]) -> ColumnElement[str]:
    """`text` to ORDER BY as Python sorts strings, by code point, on both databases: SQLite's default
    collation (BINARY) does; PostgreSQL's follows the database's locale (the official image's en_US passes
    over '_' and case at first), so it gets COLLATE "C". For results that SQL cuts (LIMIT) and Python
    compares or sorts, which must agree on which ties were kept."""
    return text.collate("C") if dialect == "postgresql" else text


def sqlite_url(data_dir: str | Path, service_name: str) -> str:
    return f"sqlite:///{Path(data_dir) / service_name}.db"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# libpq's sslmode words, which asyncpg also takes as `ssl`.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters that asyncpg (or SQLAlchemy's dialect) takes as they are, as strings. `host` and `port`
# are SQLAlchemy's, as libpq's: a Unix socket folder (`?host=/run/postgresql`), or several hosts (repeated).
# `user`, `password`, `passfile` and `database` are asyncpg.connect()'s keywords as well as libpq's (but
# `database`, libpq's `dbname`): the dialect passes them over the URL's own user, password and name, and
# URLs that give the credentials so (`postgresql://db/shop?user=shop&password=...`) connected before
# parameters were checked, so they must still.
_PASSED_THROUGH = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "passfile",
        "database",
        "target_session_attrs",
        "prepared_statement_cache_size",
    }
)
_REPEATABLE = frozenset({"host", "port"})
_TRANSLATED = frozenset({"sslmode", "ssl", "connect_timeout", "application_name", "dbname"})


def asyncpg_connect_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """`url` without libpq's query parameters, and those parameters as asyncpg's connect() keywords.

    Managed PostgreSQL hands out libpq URLs (`?sslmode=require&connect_timeout=10`), and SQLAlchemy's asyncpg
    dialect passes every query parameter to asyncpg.connect() as a keyword, by name and as a string: libpq's
    names are not asyncpg's (TypeError on every connection), and asyncpg wants a number for `timeout` and a
    mapping for `server_settings`, which a query string cannot carry; libpq's `dbname` is asyncpg's `database`.
    `user`, `password` and `passfile` pass as they are. A parameter with no asyncpg meaning is
    refused (ValueError) rather than dropped: its absence could change what the operator asked for (an
    `sslrootcert` left out would still connect, unverified). The messages name parameters, never values
    beyond the ones checked here, so they may go to logs."""
    connect_args: dict[str, Any] = {}
    query: dict[str, str | tuple[str, ...]] = {}
    unknown = sorted(set(url.query) - _TRANSLATED - _PASSED_THROUGH)
    if unknown:
        raise ValueError(
            f"query parameter {', '.join(map(repr, unknown))} is not supported on PostgreSQL (shopmesh connects "
            "with asyncpg): use sslmode, connect_timeout, application_name, target_session_attrs, host, port, "
            "user, password, passfile or dbname"
        )
    for name, value in url.query.items():
        if name in _PASSED_THROUGH:
            if not isinstance(value, str) and name not in _REPEATABLE:
                raise ValueError(f"query parameter {name!r} is given more than once")
            query[name] = value
        elif not isinstance(value, str):
            raise ValueError(f"query parameter {name!r} is given more than once")
        elif name in ("sslmode", "ssl"):
            if "ssl" in connect_args:
                raise ValueError("give sslmode or ssl, not both")
            if value not in _SSL_MODES:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(_SSL_MODES)}")
            connect_args["ssl"] = value
        elif name == "connect_timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = 0.0
            # libpq waits for ever at 0; asyncpg has no such setting, and a pool checkout should not hang.
            if not 0 < seconds <= 86400:
                raise ValueError(f"connect_timeout={value!r} must be a number of seconds above 0, at most a day")
            connect_args["timeout"] = seconds
        elif name == "dbname":
            if "database" in url.query:
                raise ValueError("give dbname or database, not both")
            query["database"] = value
        else:  # application_name: a server setting, sent at connection start as libpq does
            connect_args["server_settings"] = {"application_name": value}
    return url.set(query=query), connect_args


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (`postgresql://`, `postgres://`, `sqlite+aiosqlite://`, libpq's
    `?sslmode=...`) and pick the drivers shopmesh runs on: asyncpg for PostgreSQL, the standard library's
    sqlite3 for SQLite. ValueError for a URL shopmesh cannot open a database from; its message never
    holds the URL (nor so its password)."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    except ArgumentError:
        raise ValueError("not a database URL (postgresql://user:password@host:5432/name or sqlite:///path)") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            parsed = parsed.set(drivername="postgresql+asyncpg")
        asyncpg_connect_args(parsed)  # refused here, at startup, rather than at the first connection
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    else:
        raise ValueError(f"unsupported database {backend!r}: shopmesh runs on PostgreSQL or SQLite")
    return parsed.render_as_string(hide_password=False)


# A database error's message would otherwise quote the statement's values, and the traceback goes to the
# logs: a signing key being stored, a customer's e-mail and address, an event's payload. The statement
# itself (with its placeholders) still says what failed.
HIDE_PARAMETERS = True


def create_sqlite_engine(url: str, *, pool_size: int = 5) -> Engine:
    database = make_url(url).database or ":memory:"
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(
        url,
        # Calls come from the loop's thread, except that the pool may close a connection it
        # garbage-collects from another one; SQLite's serialized threading mode makes that safe.
        connect_args={"check_same_thread": False, "timeout": _SQLITE_LOOP_BUSY_MS / 1000},
        poolclass=QueuePool,
        # A full pool would block the event loop's thread while the connections it waits for can only
        # come back through that loop: never wait, open one more (connections beyond pool_size are
        # closed when returned). Calls run inline, so a task holds a connection only while it awaits
        # something else inside a transaction, which stores do not.
        pool_size=pool_size,
        max_overflow=-1,
        hide_parameters=HIDE_PARAMETERS,
    )
    _configure_sqlite_connections(engine)
    return engine


# A replica's PostgreSQL connections: `pool_size` kept open, up to `max_overflow` more under load (closed when
# returned). Everything of the replica takes from this one pool: its calls, the outbox relay's lock connection
# while it leads, the migrations' connection at start, until the last shutdown hook disposes of it. So the
# replica never holds more than their sum, and the sum times the pods of every service on one server (their
# replicas, a rolling update's surge pod and the old pods still draining) must fit its max_connections
# (docs/kubernetes.md, "PostgreSQL connections"). The defaults, 6 a replica, let the seven services that own a
# database run one replica each through a rolling update of all of them (one more pod each, the new one or the
# draining old one) on a stock PostgreSQL: 7 x 2 x 6 = 84 of its 97 (100, 3 kept for superusers). One event
# loop per replica overlaps a few round trips at most; more connections only queue.
POSTGRES_POOL_SIZE = 4
POSTGRES_MAX_OVERFLOW = 2


def create_postgres_engine(
    url: str, *, pool_size: int = POSTGRES_POOL_SIZE, max_overflow: int = POSTGRES_MAX_OVERFLOW
) -> AsyncEngine:
    engine_url, connect_args = asyncpg_connect_args(make_url(url))
    engine = create_async_engine(
        engine_url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        hide_parameters=HIDE_PARAMETERS,
        # Pinned, not the server's default: the services' guards lock, then look (a cancel key used by another
        # order, an order's cancellation), and only READ COMMITTED lets the look after the lock wait see what
        # the lock holder committed. A database or role set to REPEATABLE READ (a DBA's choice, a managed
        # server's parameter group) would take the snapshot before the wait. Part of BEGIN: no round trip.
        isolation_level="READ COMMITTED",
    )
    event.listen(engine.sync_engine, "handle_error", _without_postgres_detail)
    event.listen(engine.sync_engine, "invalidate", _close_at_once)
    return engine


def _close_at_once(dbapi_connection: Any, _record: Any, _error: BaseException | None) -> None:
    """A connection invalidated under a call's bound (its statement, its commit or its checkout's ping cut off)
    is closed at once: SQLAlchemy's close first says goodbye to the server and waits up to 2 s for it, which a
    server that stopped answering never does, and the call's answer would wait with it."""
    if _BOUNDED.get() and dbapi_connection is not None:
        dbapi_connection.driver_connection.terminate()


def database_time_bound(remaining: float) -> float:
    """How long a call with `remaining` seconds before its deadline gives its PostgreSQL work (a transaction, a
    read, the checkout of their connection): all but the margin its answer needs."""
    return remaining - min(remaining * _ANSWER_SHARE, _ANSWER_MARGIN_MAX_SECONDS)


@asynccontextmanager
async def _postgres_transaction(engine: AsyncEngine, address: str, *, writer: bool) -> AsyncIterator[AsyncConnection]:
    """A pooled connection of `engine`'s in a transaction, committed at the end for a `writer`, else rolled back;
    within the inbound call's time (`database_time_bound`) when it has a deadline. Work outside a call (migrations,
    the outbox relay, consumers, purges) and a call's detached work (a saga's) have none, and wait as long as the
    database takes.

    Past the bound (a stopped server answers nothing, a statement waits behind another session's lock), the
    connection is discarded, never returned to the pool mid-statement; one warning; and the call answers
    UNAVAILABLE DATABASE_UNAVAILABLE with a retry delay (`database_did_not_answer`), as for a database that
    refuses connections, rather than DEADLINE_EXCEEDED naming nothing, which no breaker takes for an outage.
    The bound ends where a write's COMMIT begins: cut off once COMMIT is sent, the write may be stored, and
    DATABASE_UNAVAILABLE tells the caller that retrying is safe. Only the call's own deadline ends a commit, which
    answers DEADLINE_EXCEEDED: the outcome unknown. A call with almost no time left (`_DATABASE_TIME_FLOOR_SECONDS`)
    starts nothing and answers `inbound_deadline_passed`."""
    remaining = call_context.inbound_time_remaining()
    if remaining is not None and remaining < _DATABASE_TIME_FLOOR_SECONDS:
        raise inbound_deadline_passed()
    token = _BOUNDED.set(remaining is not None)  # not inherited by detached work started inside a bounded one
    try:
        if remaining is None:
            async with _in_transaction(engine, writer=writer) as connection:
                yield connection
            return
        bound = database_time_bound(remaining)
        try:
            async with asyncio.timeout(bound) as scope, _connected(engine) as connection:
                try:
                    if writer:
                        await connection.begin()
                        milliseconds = str(max(1, math.ceil(remaining * 1000)))  # 0 would be no timeout at all
                        await connection.execute(_SERVER_BOUND, {"milliseconds": milliseconds})
                    yield connection
                    if writer:
                        # Once sent, COMMIT may store the write however it is cut off: only the call's deadline
                        # ends it (outcome unknown), never the bound's DATABASE_UNAVAILABLE (safe to retry).
                        scope.reschedule(None)
                        await connection.commit()
                except asyncio.CancelledError:
                    # Cut off (by the bound, or the call's end during a commit): its ROLLBACK would wait for the
                    # server as long as it likes.
                    await connection.invalidate()
                    raise
        except (TimeoutError, DBAPIError) as error:
            if isinstance(error, TimeoutError) and not scope.expired():
                raise
            if isinstance(error, DBAPIError) and not (writer and server_said(error)[1] == _QUERY_CANCELED):
                raise
            log.warning(
                "the database at %s did not answer within %.3gs (the call had %.3gs left): the call answers "
                "UNAVAILABLE DATABASE_UNAVAILABLE",
                address,
                bound,
                remaining,
            )
            raise database_did_not_answer(bound) from error
    finally:
        _BOUNDED.reset(token)


@asynccontextmanager
async def _in_transaction(engine: AsyncEngine, *, writer: bool) -> AsyncIterator[AsyncConnection]:
    """A pooled connection; for a `writer`, in a transaction committed on success. Else the transaction its first
    statement begins is rolled back when the connection goes back to the pool."""
    async with _connected(engine) as connection:
        if not writer:
            yield connection
            return
        async with connection.begin():
            yield connection


def _without_postgres_detail(context: ExceptionContext) -> None:
    """PostgreSQL's DETAIL quotes values: a unique violation's key ("Key (email)=(ada@example.com) already
    exists"), a NOT NULL or CHECK violation's whole row ("Failing row contains (...)", a signing key's PEM).
    asyncpg prints it in its error's text, the cause under SQLAlchemy's in every logged traceback, where
    hide_parameters does not reach. The SQLSTATE, constraint and table still say what failed, and a unique
    violation's DETAIL keeps its key's columns ("Key (email) already exists."): duplicates_raised reads them."""
    cause = context.original_exception.__cause__
    # asyncpg's PostgresError (untyped: checked by its attributes); it prints `detail` in its __str__.
    if getattr(cause, "sqlstate", None) and getattr(cause, "detail", None):
        cause.detail = without_key_values(cause.sqlstate, cause.detail)  # type: ignore[union-attr]


# A session-level advisory lock (the outbox relay's, the migrations') is held until the server ends its session.
# Cut off without a FIN or RST (the holder's node gone, a network partition), that session lives on the server
# for as long as its TCP takes to give up on the peer: about two hours idle (keepalives after 7200 s, then 9
# probes 75 s apart), about 15 minutes with rows in flight (tcp_retries2; keepalives probe only an idle
# connection). A lock session has the server probe it after 30 s idle, every 10 s, 3 probes unanswered, and
# give up on data unacknowledged for 60 s (tcp_user_timeout, PostgreSQL 12 and later). 60 s is what the
# keepalives add up to: on Linux a user timeout also decides when unanswered keepalives drop the connection
# (their count no longer does), so a shorter one would drop a session after fewer probes, a longer one keep
# the lock past the minute. A live client's kernel acknowledges within milliseconds, busy or not.
# Set on the session (SET, not a startup parameter, which a connection pooler in front of PostgreSQL may
# refuse); ignored on a Unix socket, where no network can break. In the statement that takes the lock, every
# attempt: a connection object may have reopened its session unseen (its backend killed by a restart or
# failover between attempts), and a session set up only when the object was made would then take the lock
# with the server's defaults.
_KEEPALIVE_IDLE_SECONDS = 30
_KEEPALIVE_INTERVAL_SECONDS = 10
_KEEPALIVE_COUNT = 3
_USER_TIMEOUT_MS = (_KEEPALIVE_IDLE_SECONDS + _KEEPALIVE_INTERVAL_SECONDS * _KEEPALIVE_COUNT) * 1000
_TRY_SESSION_LOCK = sqlalchemy.text(
    f"SELECT set_config('tcp_keepalives_idle', '{_KEEPALIVE_IDLE_SECONDS}', false),"
    f" set_config('tcp_keepalives_interval', '{_KEEPALIVE_INTERVAL_SECONDS}', false),"
    f" set_config('tcp_keepalives_count', '{_KEEPALIVE_COUNT}', false),"
    f" set_config('tcp_user_timeout', '{_USER_TIMEOUT_MS}', false),"
    " pg_try_advisory_lock(:key) AS locked"
)


async def try_session_lock(connection: AsyncConnection, key: int) -> bool:
    """Take the session-level advisory lock `key` on PostgreSQL if it is free, on a session the server drops
    about a minute after its client is cut off (above). Whether this session holds it now. The session must
    not return to the pool: it would go on holding the lock, with these settings."""
    result = await connection.execute(_TRY_SESSION_LOCK, {"key": key})
    return bool(result.one().locked)


@asynccontextmanager
async def _connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection; DatabaseUnreachable when none could be established (`connect_failures_unreachable`)."""
    async with AsyncExitStack() as stack:
        with connect_failures_unreachable(engine):
            # Entered as a context: its exit closes the connection to the end even when cancelled.
            connection = await stack.enter_async_context(engine.connect())
        yield connection


@contextmanager
def connect_failures_unreachable(engine: AsyncEngine) -> Iterator[None]:
    """Around a checkout from `engine`'s pool (`engine.connect()`): any failure to establish the connection
    becomes DatabaseUnreachable, its message the database's address and the server's SQLSTATE and words.

    Whatever the server answers a connection attempt with (55000 a database that allows no connections,
    3D000 no such database, 28P01 a password refused, 53300 too many connections, 57P03 starting up), the
    database cannot serve this service now and the call may work later: SQLAlchemy wraps most of these in a
    plain DBAPIError that a statement's failure also raises, and only here are they told apart. asyncpg
    reports a server it cannot reach, or one that does not answer in time, as a plain OSError (TimeoutError
    is one): only that one, raised while connecting, is the database's (an OSError of the caller's block
    stays as it is). The pool's own timeout (exc.TimeoutError: every connection in use) is no failure to
    connect, and stays as it is. The message never holds the password: the URL's is not in it, and the
    server does not echo it."""
    try:
        yield
    except (OSError, DBAPIError) as error:
        if isinstance(error, DBAPIError):
            said, sqlstate = server_said(error)
        else:
            # The socket's error says why (refused, no such host); a timeout says nothing of itself.
            said = str(error) or ("timed out" if isinstance(error, TimeoutError) else type(error).__name__)
            sqlstate = ""
        why = f"SQLSTATE {sqlstate}: {said}" if sqlstate else said
        address = postgres_address(engine.url)
        raise DatabaseUnreachable(
            f"cannot connect to the database at {address}: {why}", said=said, sqlstate=sqlstate
        ) from error


def postgres_address(url: URL) -> str:
    """Where a PostgreSQL database is, for messages: host:port (the `host` query parameter's value when the URL
    has one: a socket folder, several hosts). Never the password."""
    hosts = url.query.get("host")
    if hosts:
        return hosts if isinstance(hosts, str) else ",".join(hosts)
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def _configure_sqlite_connections(engine: Engine) -> None:
    """WAL, no fsync per commit, foreign keys, the busy timeout; and no transaction begun by sqlite3.

    pysqlite would begin transactions itself, deferred: two transactions could both read, then both
    try to write, and one dies with "database is locked". With its own transaction handling off,
    `Database` begins each transaction explicitly (BEGIN IMMEDIATE for writers, so a read-check-write
    such as a stock reservation is serialized exactly as on PostgreSQL).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # Database.transaction() / read() issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_LOOP_BUSY_MS}")
        cursor.close()


# A row `PRAGMA foreign_key_check` reports: (table, rowid, referenced table, the foreign key's id in the table).
ForeignKeyViolation = tuple[str, int | None, str, int]


def _foreign_key_orphans(dbapi_connection: Any) -> list[tuple[ForeignKeyViolation, tuple[object, ...]]]:
    """SQLite's rows whose foreign key matches no row, each with what names it across a rebuild of its table:
    the table, the referenced table, the key's columns and the values that match nothing there. Not the rowid
    alone: batch mode's copy of a table without an INTEGER PRIMARY KEY may number its rows anew, and the key's
    id is its place in the table's definition, which the copy may change."""
    columns: dict[tuple[str, int], list[str]] = {}
    orphans: list[tuple[ForeignKeyViolation, tuple[object, ...]]] = []
    for table, rowid, parent, key_id in dbapi_connection.execute("PRAGMA foreign_key_check").fetchall():
        if (table, key_id) not in columns:
            for found_id, column in dbapi_connection.execute(
                'SELECT id, "from" FROM pragma_foreign_key_list(?) ORDER BY id, seq', (table,)
            ):
                columns.setdefault((table, found_id), []).append(column)
        key = columns[(table, key_id)]
        # A WITHOUT ROWID table's rows have no rowid to look the values up by: such a row is known by its key.
        values = None
        if rowid is not None:
            listed = ", ".join(_quoted(column) for column in key)
            values = dbapi_connection.execute(
                f"SELECT {listed} FROM {_quoted(table)} WHERE rowid = ?", (rowid,)
            ).fetchone()
        orphans.append(((table, rowid, parent, key_id), (table, parent, tuple(key), values)))
    return orphans


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _added_orphans(
    before: list[tuple[ForeignKeyViolation, tuple[object, ...]]],
    after: list[tuple[ForeignKeyViolation, tuple[object, ...]]],
) -> list[ForeignKeyViolation]:
    """The rows of `after` that were no orphans `before`: each old orphan accounts for one row of the same
    table, referenced table and dangling key, the row with its old rowid first (a row the migration orphaned
    may dangle from the same missing parent as an old one)."""
    unclaimed = Counter(name for _violation, name in before)
    old_rows = {(violation[0], violation[1]) for violation, _name in before}
    claimed: set[int] = set()
    for index in sorted(range(len(after)), key=lambda i: (after[i][0][0], after[i][0][1]) not in old_rows):
        name = after[index][1]
        if unclaimed[name] > 0:
            unclaimed[name] -= 1
            claimed.add(index)
    return [violation for index, (violation, _name) in enumerate(after) if index not in claimed]


def _begin_sqlite(connection: sqlalchemy.Connection, statement: str) -> None:
    # Straight to sqlite3, not through a "begin" event: any connection-level listener sends every
    # statement through SQLAlchemy's event dispatch (~35 µs per statement here, docs/benchmarks.md),
    # and through SQLAlchemy's execution path this statement cost as much as a query.
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.execute(statement)


async def _begin_writing(connection: sqlalchemy.Connection, started: float) -> None:
    """BEGIN IMMEDIATE, waiting for a write lock another process holds with the event loop free: tried again
    after growing sleeps until _SQLITE_BUSY_SECONDS have passed since `started` (monotonic), then SQLITE_BUSY
    (UNAVAILABLE DATABASE_UNAVAILABLE). A writer that queued for the service's own writer lock past the bound
    tries once. In SQLite's busy handler, on the loop's thread, each queued writer in turn held up the whole
    service for the bound, health checks and every other call included."""
    for tries in itertools.count():
        try:
            _begin_sqlite(connection, "BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            left = started + _SQLITE_BUSY_SECONDS - time.monotonic()
            if sqlite_primary_code(error) != sqlite3.SQLITE_BUSY or left <= 0:
                raise
        await asyncio.sleep(min(backoff_delay(_SQLITE_RETRY_FIRST_SECONDS, tries, cap=_SQLITE_RETRY_MAX_SECONDS), left))


class ForeignKeysViolated(Exception):
    """A change of a SQLite schema left rows whose foreign key matches no row (`PRAGMA foreign_key_check`):
    rolled back. `violations` names the rows it orphaned, not those orphaned before it ran."""

    def __init__(self, violations: list[ForeignKeyViolation]) -> None:
        tables = sorted({f"{table} (referencing {parent})" for table, _rowid, parent, _key in violations})
        super().__init__(
            f"{len(violations)} row(s) whose foreign key matches no row, in {', '.join(tables)}: the schema "
            "change is rolled back"
        )
        self.violations = violations


class Database:
    """A service's database; `transaction()` is the unit of work, `read()` a snapshot.

    Both hand out SQLAlchemy Core connections (`DbConnection`), not ORM sessions: the stores speak Core
    (tables and statements, no mapped classes), and a session's bookkeeping cost ~0.2 ms per transaction
    for nothing (docs/benchmarks.md)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POSTGRES_POOL_SIZE,
        max_overflow: int = POSTGRES_MAX_OVERFLOW,
        migrate_only: bool = False,
    ) -> None:
        """`pool_size` and `max_overflow` size the PostgreSQL pool (see POSTGRES_POOL_SIZE); SQLite's never waits
        for a connection and ignores them. `migrate_only` (MIGRATE_ONLY): `migrations.migrate` stops the process
        once it has migrated the database."""
        self.url = normalize_url(url)
        self.migrate_only = migrate_only
        self._sqlite: Engine | None = None
        self._postgres: AsyncEngine | None = None
        self._postgres_reader: AsyncEngine | None = None
        if is_sqlite(self.url):
            self._sqlite = create_sqlite_engine(self.url)
        else:
            self._postgres = create_postgres_engine(self.url, pool_size=pool_size, max_overflow=max_overflow)
            # Writers' READ COMMITTED gives each statement its own snapshot; a read-only
            # REPEATABLE READ transaction gives a whole `read()` one, as WAL does on SQLite, and never
            # fails to serialize. Same pool: the BEGIN carries the settings (no extra round trip), and a
            # connection returned to the pool is reset to the defaults for writers.
            self._postgres_reader = self._postgres.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        # SQLite has one writer at a time. Waiting for it in SQLite's busy handler means sleeping in
        # growing steps (long tails under load); queueing here is FIFO and wakes at once.
        self._writer = asyncio.Lock() if self._sqlite is not None else None

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> Database:
        """The service's database as its settings give it (DATABASE_URL, the pool's DATABASE_POOL_SIZE and
        DATABASE_MAX_OVERFLOW, MIGRATE_ONLY): how every service opens it, so that a setting of the chassis reaches
        them all. MIGRATE_ONLY rides here because every service's wiring opens its database so and hands it to
        `migrate` first thing: the settings it loaded decide, not the environment read again behind them."""
        return cls(
            settings.resolved_database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            migrate_only=settings.migrate_only,
        )

    @property
    def dialect(self) -> str:
        return self.sync_engine.dialect.name

    @property
    def sync_engine(self) -> Engine:
        """The engine SQLAlchemy's events attach to (on PostgreSQL, the one inside the async engine)."""
        if self._sqlite is not None:
            return self._sqlite
        assert self._postgres is not None
        return self._postgres.sync_engine

    @property
    def address(self) -> str:
        """Where the database is, for messages: host:port on PostgreSQL (the `host` query parameter's value
        when the URL has one: a socket folder, several hosts), the file on SQLite. Never the password."""
        url = make_url(self.url)
        if self._sqlite is not None:
            return url.database or ":memory:"
        return postgres_address(url)

    @property
    def postgres_engine(self) -> AsyncEngine:
        """The async engine, for what only PostgreSQL has (session-level advisory locks)."""
        if self._postgres is None:
            raise TypeError(f"{self.url} is not a PostgreSQL database")
        return self._postgres

    @asynccontextmanager
    async def dedicated_connection(self) -> AsyncIterator[AsyncConnection]:
        """A PostgreSQL connection in no transaction, for what runs its own (migrations, one per step), and
        discarded after: its session state (advisory locks, SET lock_timeout) never reaches the pool."""
        async with _connected(self.postgres_engine) as connection:
            try:
                yield connection
            finally:
                await connection.invalidate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DbConnection]:
        """A connection in one transaction: committed on success, rolled back on any exception.

        Do not open a transaction while holding another in the same task: on SQLite they would wait for
        each other."""
        if self._sqlite is not None:
            assert self._writer is not None
            started = time.monotonic()
            async with self._writer:
                # SQLAlchemy's transaction for the bookkeeping (commit / rollback at the end; its BEGIN
                # is a no-op on pysqlite), sqlite3's for the lock: IMMEDIATE takes the write lock now.
                with self._sqlite.connect() as connection, connection.begin():
                    await _begin_writing(connection, started)
                    yield SqliteConnection(connection)
            return
        assert self._postgres is not None
        async with _postgres_transaction(self._postgres, self.address, writer=True) as async_connection:
            yield async_connection

    @asynccontextmanager
    async def sqlite_schema_transaction(self) -> AsyncIterator[DbConnection]:
        """SQLite: a write transaction for changes of the schema (migrations), in which foreign keys are not
        enforced, and checked before it commits (ForeignKeysViolated, rolled back, for a row whose key
        matches no row).

        Alembic's batch mode changes a table (a dropped column) by copying it into a new one and dropping the
        old: with foreign keys enforced, as on every other connection, that DROP TABLE deletes its rows first
        and cascades to every row that references them (a batch_alter_table on `orders` emptied
        `order_lines`). SQLite ignores the pragma inside a transaction: it is switched before BEGIN, and back
        after the end."""
        if self._sqlite is None:
            raise TypeError(f"{self.url} is not a SQLite database")
        assert self._writer is not None
        started = time.monotonic()
        async with self._writer:
            with self._sqlite.connect() as connection:
                dbapi_connection = connection.connection.dbapi_connection
                assert dbapi_connection is not None
                dbapi_connection.execute("PRAGMA foreign_keys=OFF")
                try:
                    with connection.begin():
                        await _begin_writing(connection, started)
                        # Only what this transaction adds is its doing: a row left orphaned before (a database
                        # written with foreign keys off by a tool) must not fail every later start.
                        found = _foreign_key_orphans(dbapi_connection)
                        yield SqliteConnection(connection)
                        added = _added_orphans(found, _foreign_key_orphans(dbapi_connection))
                        if added:
                            raise ForeignKeysViolated(added)
                finally:
                    try:
                        dbapi_connection.execute("PRAGMA foreign_keys=ON")
                    except BaseException:
                        # Never back in the pool without its foreign keys: the next caller would not know.
                        connection.invalidate()
                        raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbConnection]:
        """A connection for reads only: a consistent snapshot that never waits for (or blocks) the writer.
        Nothing is kept: the transaction is rolled back at the end."""
        if self._sqlite is not None:
            with self._sqlite.connect() as connection:
                # A deferred BEGIN: a snapshot at the first read, which WAL lets run beside the writer.
                # Nothing is committed: closing the connection rolls it back.
                _begin_sqlite(connection, "BEGIN")
                yield SqliteConnection(connection)
            return
        assert self._postgres_reader is not None
        async with _postgres_transaction(self._postgres_reader, self.address, writer=False) as async_connection:
            yield async_connection

    async def ping(self, timeout: float) -> None:
        """Return once the database answers a trivial statement; raise what a transaction would meet while it
        is away, or TimeoutError when it has not answered within `timeout` seconds (a server cut off by the
        network neither accepts nor refuses, and a connect waits for it far longer)."""
        async with asyncio.timeout(timeout), self.read() as connection:
            await connection.execute(sqlalchemy.text("SELECT 1"))

    async def dispose(self) -> None:
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._postgres is not None:
            await self._postgres.dispose()
