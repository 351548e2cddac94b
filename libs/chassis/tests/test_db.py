"""Database behaviour every service relies on: serialized writers, non-blocking reads, URL handling."""

from __future__ import annotations

import asyncio
import socket
import threading
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from shopmesh_chassis.db import Database, normalize_url
from shopmesh_chassis.testing import eventually

scratch = MetaData()
counter = Table("counter", scratch, Column("id", Integer, primary_key=True), Column("value", Integer))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    async with database.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    async with database.transaction() as session:
        await session.execute(insert(counter).values(id=1, value=0))
    yield database
    await database.dispose()


async def test_concurrent_read_modify_write_transactions_lose_no_update(db: Database) -> None:
    async def increment() -> None:
        async with db.transaction() as session:
            value = (await session.execute(select(counter.c.value))).scalar_one()
            await asyncio.sleep(0)  # let the others run between the read and the write
            await session.execute(update(counter).values(value=value + 1))

    await asyncio.gather(*(increment() for _ in range(50)))
    async with db.read() as session:
        assert (await session.execute(select(counter.c.value))).scalar_one() == 50


async def test_a_read_does_not_wait_for_an_open_write(db: Database) -> None:
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_write() -> None:
        async with db.transaction() as session:
            await session.execute(update(counter).values(value=99))
            writing.set()
            await release.wait()

    writer = asyncio.create_task(slow_write())
    await writing.wait()
    async with db.read() as session:
        # The snapshot from before the uncommitted write, and no waiting for it.
        assert (await session.execute(select(counter.c.value))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(counter))).scalar_one() == 1
    release.set()
    await writer


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgresql://u:p@h/d", "postgresql+asyncpg://u:p@h/d"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_people_paste_are_accepted(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


async def test_sqlite_statements_run_on_the_event_loops_thread(db: Database) -> None:
    """No hand-off to a worker thread per call (what aiosqlite does): SQLite runs where the loop runs."""

    @event.listens_for(db.sync_engine, "connect")
    def _probe(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("executing_thread", 0, threading.get_ident)

    await db.dispose()  # new connections, with the probe
    async with db.read() as connection:
        executed_on = (await connection.execute(text("SELECT executing_thread()"))).scalar_one()
    assert executed_on == threading.get_ident()


async def test_sqlite_errors_reach_the_caller_and_roll_back(db: Database) -> None:
    async def update_then_fail() -> None:
        async with db.transaction() as connection:
            await connection.execute(update(counter).values(value=7))
            await connection.execute(text("UPDATE missing_table SET x = 1"))

    with pytest.raises(OperationalError, match="no such table"):
        await update_then_fail()
    async with db.read() as connection:
        assert (await connection.execute(select(counter.c.value))).scalar_one() == 0
    # The connection went back to the pool in working order.
    async with db.transaction() as connection:
        await connection.execute(update(counter).values(value=8))
    async with db.read() as connection:
        assert (await connection.execute(select(counter.c.value))).scalar_one() == 8


async def test_more_concurrent_sqlite_reads_than_the_pool_keeps_never_block_the_loop(db: Database) -> None:
    """A pool that waited for a free connection would block the loop thread that has to give one back."""
    all_open, release = asyncio.Event(), asyncio.Event()
    opened = 0

    async def hold_a_read() -> int:
        nonlocal opened
        async with db.read() as connection:
            value = (await connection.execute(select(counter.c.value))).scalar_one()
            opened += 1
            if opened == 20:
                all_open.set()
            await release.wait()
            return int(value)

    readers = [asyncio.create_task(hold_a_read()) for _ in range(20)]  # the pool keeps 5
    await asyncio.wait_for(all_open.wait(), timeout=5)
    release.set()
    assert await asyncio.gather(*readers) == [0] * 20


@pytest.fixture
async def either_db(blank_db: Database) -> Database:
    async with blank_db.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    return blank_db


async def test_a_read_sees_one_snapshot_while_writers_commit(either_db: Database) -> None:
    """What `read()` promises on both databases: its statements see the database as of its first one,
    so two reads that belong together (stock levels, then the units reserved) agree with each other."""

    async def count(session: Any) -> int:
        return int((await session.execute(select(func.count()).select_from(counter))).scalar_one())

    async with either_db.read() as session:
        assert await count(session) == 0
        async with either_db.transaction() as writer:
            await writer.execute(insert(counter).values(id=1, value=1))
        assert await count(session) == 0
    async with either_db.read() as session:
        assert await count(session) == 1
    # The pooled connection the reads used writes again: the read-only setting left with the read.
    async with either_db.transaction() as writer:
        await writer.execute(update(counter).values(value=2))
    async with either_db.read() as session:
        assert (await session.execute(select(counter.c.value))).scalar_one() == 2


async def test_a_failed_statements_error_never_quotes_its_values(either_db: Database) -> None:
    # The error's text reaches the logs (a traceback, a "database trouble" line): the values may be a
    # signing key, a customer's address or an event's payload. The statement still says what failed.
    async with either_db.transaction() as writer:
        await writer.execute(insert(counter).values(id=1, value=7))
    with pytest.raises(IntegrityError) as failed:
        async with either_db.transaction() as writer:
            await writer.execute(insert(counter).values(id=1, value=424242))
    assert "424242" not in str(failed.value)
    assert "INSERT INTO counter" in str(failed.value)


async def test_a_failed_statements_error_never_quotes_its_values_even_in_the_databases_own_detail(
    either_db: Database,
) -> None:
    """hide_parameters hides SQLAlchemy's "[parameters: ...]", but PostgreSQL's error carries values of its
    own: a unique violation's DETAIL quotes the key ("Key (id)=(424242) already exists", an e-mail or a key
    id in a real table), and a NOT NULL or CHECK violation's quotes the whole failing row. asyncpg puts
    the DETAIL in its own error's text, the cause a logged traceback prints under SQLAlchemy's."""
    key = 2 * 212121  # as a number only at run time: the traceback quotes this file's lines
    async with either_db.transaction() as writer:
        await writer.execute(insert(counter).values(id=key, value=7))
    with pytest.raises(IntegrityError) as failed:
        async with either_db.transaction() as writer:
            await writer.execute(insert(counter).values(id=key, value=8))
    # What a log line with exc_info shows: the error and the chain of causes under it.
    logged = "".join(traceback.format_exception(failed.value))
    assert str(key) not in logged, logged


@pytest.mark.parametrize("query", ["sslmode=disable", "sslmode=prefer"])
async def test_a_postgresql_url_with_libpq_sslmode_connects(postgres: Any, query: str) -> None:
    """Managed PostgreSQL hands out `postgresql://...?sslmode=require` (libpq's parameter); DATABASE_URL is
    pasted as given. asyncpg names it `ssl`: passed through unchanged, `sslmode` made every connection
    fail with TypeError ("connect() got an unexpected keyword argument 'sslmode'")."""
    url = postgres.create_database().replace("postgresql+asyncpg://", "postgresql://", 1)
    database = Database(f"{url}?{query}")
    try:
        async with database.read() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await database.dispose()


async def test_libpq_connect_timeout_and_application_name_reach_asyncpg(postgres: Any) -> None:
    """asyncpg wants a number for its connect `timeout` and a mapping for `server_settings`: passed through
    as query strings, libpq's two made every connection fail with TypeError as sslmode did."""
    url = postgres.create_database().replace("postgresql+asyncpg://", "postgresql://", 1)
    database = Database(f"{url}?sslmode=disable&connect_timeout=10&application_name=shopmesh-test")
    try:
        async with database.read() as connection:
            assert (await connection.scalar(text("SELECT current_setting('application_name')"))) == "shopmesh-test"
    finally:
        await database.dispose()


def test_sqlalchemys_host_parameter_is_kept_for_unix_sockets_and_several_hosts() -> None:
    url = normalize_url("postgresql://shop@/shop?host=/run/postgresql&host=db2:5433&sslmode=require")
    assert make_url(url).query["host"] == ("/run/postgresql", "db2:5433")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("sslrootcert=/etc/ca.pem", "'sslrootcert'"),
        ("sslmode=requier", "sslmode='requier'"),
        ("connect_timeout=0", "connect_timeout='0'"),
    ],
)
def test_a_libpq_parameter_asyncpg_has_no_meaning_for_is_refused_by_name(query: str, named: str) -> None:
    """Dropped, `sslrootcert` would connect without verifying the server: refused, naming the parameter."""
    with pytest.raises(ValueError, match=named) as caught:
        normalize_url(f"postgresql://shop:S3cret@db/shop?{query}")
    assert "S3cret" not in str(caught.value)


async def test_a_postgresql_url_giving_its_user_and_password_as_query_parameters_connects(postgres: Any) -> None:
    """`?user=...&password=...` are libpq's and asyncpg's (connect() keywords, and its own DSN parameters):
    SQLAlchemy passed them to asyncpg.connect() and such a DATABASE_URL connected. Refused since as "not
    supported on PostgreSQL", though asyncpg_connect_args refuses only "a parameter with no asyncpg meaning"."""
    url = make_url(postgres.create_database())
    database = Database(
        f"postgresql://{url.host}:{url.port}/{url.database}?user={url.username}&password={url.password}"
    )
    try:
        async with database.read() as connection:
            assert (await connection.scalar(text("SELECT current_user"))) == url.username
    finally:
        await database.dispose()


async def test_libpqs_dbname_query_parameter_names_the_database_asyncpg_connects_to(postgres: Any) -> None:
    """libpq's `?dbname=` is asyncpg's `database`: passed as it is, asyncpg.connect() refused the keyword."""
    url = make_url(postgres.create_database())
    database = Database(f"{postgres.url(driver='postgresql')}?dbname={url.database}")
    try:
        async with database.read() as connection:
            assert (await connection.scalar(text("SELECT current_database()"))) == url.database
    finally:
        await database.dispose()


async def test_a_ping_returns_once_the_database_answers(blank_db: Database) -> None:
    await blank_db.ping(30.0)


async def test_a_ping_of_a_postgresql_server_that_never_answers_gives_up_at_its_bound() -> None:
    """A server cut off by the network: the connection is accepted (here by the kernel, for a socket that never
    reads) and nothing answers, and the connect waits for its own timeout (a minute by default, ten minutes
    here). The consumer pings before it parks an event, in its delivery loop: the ping ends at its own bound,
    as TimeoutError."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        database = Database(f"postgresql://shop@127.0.0.1:{port}/shop?connect_timeout=600")
        ping = asyncio.create_task(database.ping(0.5))
        try:
            await eventually(ping.done, "the ping gave up")
            assert isinstance(ping.exception(), TimeoutError)
        finally:
            ping.cancel()
            await asyncio.gather(ping, return_exceptions=True)
            await database.dispose()


async def test_writers_wait_then_see_what_the_lock_holder_committed_whatever_the_servers_default_isolation(
    postgres: Any,
) -> None:
    """The services' guards lock, then look (notifications locks an order, then looks for its cancellation;
    orders for a cancel key used elsewhere): that needs READ COMMITTED, where the look after the wait sees the
    rows the lock holder committed. A DBA's or a managed server's default of REPEATABLE READ would take the
    snapshot before the wait and miss them (one cancel key cancelled two orders and refunded twice): writers
    pin READ COMMITTED, readers keep their REPEATABLE READ READ ONLY snapshot."""
    url = postgres.create_database()
    setup = Database(url)
    async with setup.transaction() as session:
        await session.execute(text("CREATE TABLE guard (id int PRIMARY KEY)"))
        await session.execute(text("CREATE TABLE seen (id int PRIMARY KEY)"))
        await session.execute(text("INSERT INTO guard VALUES (1)"))
        await session.execute(
            text(f"ALTER DATABASE \"{make_url(url).database}\" SET default_transaction_isolation TO 'repeatable read'")
        )
    await setup.dispose()
    database = Database(url)
    holding, waiting = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with database.transaction() as session:
            await session.execute(text("SELECT id FROM guard FOR UPDATE"))
            holding.set()
            await asyncio.wait_for(waiting.wait(), timeout=30)
            await session.execute(text("INSERT INTO seen VALUES (1)"))

    async def follower() -> int:
        await asyncio.wait_for(holding.wait(), timeout=30)
        async with database.transaction() as session:
            await session.execute(text("SELECT 1"))  # the transaction's first statement: a snapshot if RR
            waiting.set()
            await session.execute(text("SELECT id FROM guard FOR UPDATE"))
            return int((await session.execute(text("SELECT count(*) FROM seen"))).scalar_one())

    try:
        _, found = await asyncio.wait_for(asyncio.gather(holder(), follower()), timeout=60)
        async with database.transaction() as session:
            writers = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
        async with database.read() as session:
            readers = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
    finally:
        await database.dispose()
    assert found == 1, "the writer looked at a snapshot taken before it waited for the lock"
    assert (writers, readers) == ("read committed", "repeatable read")
