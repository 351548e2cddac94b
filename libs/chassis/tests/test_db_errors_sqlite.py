"""On SQLite only an outage (a locked, full, missing or unwritable database file) is "database unavailable": a
statement or schema bug raises sqlite3's OperationalError too, but it is the caller's fault. Retried as an outage,
a consumer would hold its message for ever and a client would retry a bug; it must be parked, or INTERNAL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE, as_domain_error, database_unavailable
from shopmesh_chassis.deadletters import DEAD_LETTER_STREAM
from shopmesh_chassis.errors import Unavailable
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually, health_status, serve_in_process
from shopmesh_chassis.testing.nats_server import NatsServer
from shopmesh_chassis.testing.sample_service import SampleServicer, binding

from .conftest import sample_settings
from .consumer_kit import client, consumer, db, publish, record, until_applied
from .test_consumer import messages_parked

__all__ = ["client", "db"]  # fixtures, used by name

# Statements a release can get wrong, each an sqlite3.OperationalError with SQLITE_ERROR.
BUGS = [
    pytest.param("SELECT * FROM table_a_migration_forgot", id="no-such-table"),
    pytest.param("SELECT column_a_migration_forgot FROM outbox", id="no-such-column"),
    pytest.param("SELEC 1", id="syntax-error"),
    pytest.param("SELECT " + ", ".join(["1"] * 40_000), id="too-many-columns"),
]


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/db/service.db")
    async with database.transaction() as connection:
        await connection.execute(text("CREATE TABLE outbox (id INTEGER PRIMARY KEY, payload BLOB)"))
    try:
        yield database
    finally:
        await database.dispose()


async def failure_of(database: Database, statement: str) -> Exception:
    """What `statement` raises in a transaction: SQLAlchemy's wrapping of the sqlite3 error, or sqlite3's own
    when BEGIN IMMEDIATE fails (`Database` issues it on the sqlite3 connection)."""
    with pytest.raises((DBAPIError, sqlite3.Error)) as caught:
        async with database.transaction() as connection:
            await connection.execute(text(statement))
    return caught.value


def sqlite_error_name(error: Exception) -> str | None:
    cause = error.orig if isinstance(error, DBAPIError) else error
    return getattr(cause, "sqlite_errorname", None)


@contextmanager
def write_locked(database: Database) -> Iterator[None]:
    """Another process' writer holding the file's write lock (a migration, an operator's sqlite3 shell)."""
    path = database.sync_engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.close()


@pytest.mark.parametrize("statement", BUGS)
async def test_a_statement_or_schema_bug_on_sqlite_is_not_a_database_outage(
    sqlite_db: Database, statement: str
) -> None:
    error = await failure_of(sqlite_db, statement)
    assert as_domain_error(error) is None
    assert not database_unavailable(error)


async def test_a_full_sqlite_database_is_unavailable(sqlite_db: Database) -> None:
    # SQLITE_FULL, as a full disk answers; max_page_count makes the database "full" without filling the disk.
    async with sqlite_db.transaction() as connection:
        await connection.execute(text("PRAGMA max_page_count = 3"))
    error = await failure_of(sqlite_db, "INSERT INTO outbox (payload) VALUES (zeroblob(100000))")
    assert sqlite_error_name(error) == "SQLITE_FULL"
    assert database_unavailable(error)


async def test_a_sqlite_database_whose_directory_went_away_is_unavailable(tmp_path: Path) -> None:
    # An unmounted volume: SQLITE_CANTOPEN on the next connection.
    database = Database(f"sqlite:///{tmp_path}/db/service.db")
    try:
        shutil.rmtree(tmp_path / "db")
        error = await failure_of(database, "SELECT 1")
    finally:
        await database.dispose()
    assert sqlite_error_name(error) == "SQLITE_CANTOPEN"
    mapped = as_domain_error(error)
    assert isinstance(mapped, Unavailable)
    assert mapped.reason == DATABASE_UNAVAILABLE


async def test_a_locked_sqlite_database_is_unavailable(sqlite_db: Database) -> None:
    with write_locked(sqlite_db):
        error = await failure_of(sqlite_db, "INSERT INTO outbox (payload) VALUES (x'00')")
    assert sqlite_error_name(error) == "SQLITE_BUSY"
    assert database_unavailable(error)


class RunsAStatement(SampleServicer):
    """Fail runs `statement` in a transaction of `database`, as a store would."""

    def __init__(self, database: Database, statement: str) -> None:
        super().__init__()
        self.database = database
        self.statement = statement

    async def Fail(self, request: sample_pb2.FailRequest, context: Any) -> sample_pb2.FailResponse:
        async with self.database.transaction() as connection:
            await connection.execute(text(self.statement))
        return sample_pb2.FailResponse()


async def call_fail(servicer: RunsAStatement) -> grpc.aio.AioRpcError:
    # A bare channel, which does not retry: the test sees the server's first answer.
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sample_pb2_grpc.SampleServiceStub(channel).Fail(sample_pb2.FailRequest(), timeout=30)
    return caught.value


async def test_a_grpc_call_hitting_a_missing_table_on_sqlite_answers_internal_without_a_retry_delay(
    sqlite_db: Database,
) -> None:
    answer = await call_fail(RunsAStatement(sqlite_db, "SELECT * FROM table_a_migration_forgot"))
    details = details_of(answer)
    assert answer.code() == grpc.StatusCode.INTERNAL
    assert details.reason != DATABASE_UNAVAILABLE
    assert details.retry_delay_seconds is None


async def test_a_grpc_call_finding_its_sqlite_database_locked_answers_unavailable_with_a_retry_delay(
    sqlite_db: Database,
) -> None:
    with write_locked(sqlite_db):
        answer = await call_fail(RunsAStatement(sqlite_db, "INSERT INTO outbox (payload) VALUES (x'00')"))
    details = details_of(answer)
    assert (answer.code(), details.reason) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
    assert details.retry_delay_seconds is not None


# Another process holding the file's write lock for this long (an operator's `sqlite3` shell, a backup), unless
# the test ends it first.
_LOCK_HELD_SECONDS = 20
_HOLD_THE_WRITE_LOCK = (
    "import sqlite3, sys, time\n"
    "holder = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "holder.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


@contextlib.asynccontextmanager
async def locked_by_another_process(database: Database) -> AsyncIterator[asyncio.subprocess.Process]:
    """A second process holding `database`'s write lock (BEGIN EXCLUSIVE) for _LOCK_HELD_SECONDS: it is still
    holding it as long as it has not exited."""
    path = database.sync_engine.url.database
    assert path is not None
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_THE_WRITE_LOCK, path, str(_LOCK_HELD_SECONDS), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), timeout=15) == b"locked\n"
        yield holder
    finally:
        if holder.returncode is None:
            holder.kill()
        await asyncio.wait_for(holder.wait(), timeout=15)


async def test_a_sqlite_file_another_process_keeps_locked_fails_each_write_unavailable_while_the_service_answers(
    sqlite_db: Database,
) -> None:
    """Writers queued behind a lock of another process wait for it off the event loop, each for the bound only:
    the service keeps answering (health checks) meanwhile, and every write fails DATABASE_UNAVAILABLE while the
    lock is still held. Waiting inside SQLite's busy handler, on the loop's thread, each writer in turn froze the
    whole service for the bound, health checks included, and a queue of them for its sum."""
    servicer = RunsAStatement(sqlite_db, "INSERT INTO outbox (payload) VALUES (x'00')")
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
        locked_by_another_process(sqlite_db) as holder,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        writes = [asyncio.ensure_future(stub.Fail(sample_pb2.FailRequest(), timeout=60)) for _ in range(3)]
        health: list[int | None] = []
        while not all(write.done() for write in writes):
            health.append(await health_status(server.address, timeout=2.0))
            await asyncio.sleep(0.1)
        still_held = holder.returncode is None
        answers = await asyncio.gather(*writes, return_exceptions=True)
    assert still_held, "the lock was released before the writes ended: this proves nothing of the bound"
    assert health, "no health check ran while the writes waited"
    assert set(health) == {health_pb2.HealthCheckResponse.SERVING}, health
    for answer in answers:
        assert isinstance(answer, grpc.aio.AioRpcError), answer
        assert (answer.code(), details_of(answer).reason) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)


async def test_a_consumer_parks_an_event_whose_handler_hits_a_missing_sqlite_table(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The bug is the handler's: the message uses up its attempts and is parked, while the database, which
    answers every other event, is not taken for away."""

    async def forgot_a_migration(session: DbConnection, event: Event) -> None:
        if event.payload == b"poison":
            await session.execute(text("SELECT * FROM table_a_migration_forgot"))
        await record(session, event)

    caplog.set_level(logging.INFO, "shopmesh.consumer")
    running = consumer(db, nats_srv.url, forgot_a_migration, max_attempts=3)
    running.start()
    try:
        await publish(client, "bad", b"poison")
        await publish(client, "good", b"fine")

        async def parked() -> bool:
            return await messages_parked(client) == 1

        await eventually(parked, "the event hitting the missing table dead-lettered")
        message = await client.jetstream().get_msg(DEAD_LETTER_STREAM, 1)
        assert message.headers is not None
        assert message.headers["Shopmesh-Original-Event-Id"] == "bad"
        assert message.headers["Shopmesh-Attempts"] == "3"
        await until_applied(db, Counter({"good": 1}))
    finally:
        await running.stop()
    assert not [r for r in caplog.records if "cannot reach its database" in r.getMessage()]


async def test_a_consumer_holds_an_event_while_its_sqlite_database_is_locked_and_applies_it_once_free(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock another process holds past the 5 s a writer waits for it is an outage, not the event's fault: with a
    single attempt allowed the event is still not parked, and it is applied once the lock is released."""
    caplog.set_level(logging.INFO, "shopmesh.consumer")
    running = consumer(db, nats_srv.url, record, max_attempts=1)
    running.start()
    try:
        with write_locked(db):
            await publish(client, "e1")

            def held() -> bool:
                return any("cannot reach its database" in r.getMessage() for r in caplog.records)

            await eventually(held, "the consumer holding the event for its locked database")
        await until_applied(db, Counter({"e1": 1}))
    finally:
        await running.stop()
    assert await messages_parked(client) == 0
