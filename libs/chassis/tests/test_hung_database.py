"""A PostgreSQL that does not answer (stopped, or a statement queued behind another session's lock) is a database
unavailable for a call with a deadline: UNAVAILABLE DATABASE_UNAVAILABLE before the call's deadline, its connection
discarded, not DEADLINE_EXCEEDED with nothing naming the cause. Work outside a call keeps waiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import call_context, db
from shopmesh_chassis.db import Database, database_time_bound
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.postgres import WAITING_ON_A_LOCK, PostgresServer, postgres_server
from shopmesh_chassis.testing.sample_service import SampleServicer, binding

from .conftest import sample_settings

BUMP = text("UPDATE counters SET n = n + 1 WHERE id = 1")


# Echo's message that has it start its bump as work that outlives the call, and answer without waiting for it.
DETACHED = "detached"


class Bumping(SampleServicer):
    """Echo bumps the counter row in a transaction first, as a store's write would; for the message DETACHED it
    starts that bump as work that outlives the call (as orders' saga does) and answers at once."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database
        self.detached: list[asyncio.Task[None]] = []

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        if request.message == DETACHED:
            task = asyncio.get_running_loop().create_task(bump(self.database), context=call_context.detached_context())
            self.detached.append(task)
        else:
            await bump(self.database)
        return await super().Echo(request, context)


async def bump(database: Database) -> None:
    async with database.transaction() as connection:
        await connection.execute(BUMP)


async def counter(database: Database) -> int:
    async with database.read() as connection:
        return int(await connection.scalar(text("SELECT n FROM counters WHERE id = 1")))


async def counters_database(url: str) -> Database:
    database = Database(url)
    async with database.transaction() as connection:
        await connection.execute(text("CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL)"))
        await connection.execute(text("INSERT INTO counters VALUES (1, 0)"))
    return database


@contextlib.asynccontextmanager
async def row_locked(url: str) -> AsyncIterator[None]:
    """Another session holding the counter row's lock (an UPDATE left uncommitted) until the block ends."""
    holder = Database(url)
    try:
        async with holder.postgres_engine.connect() as connection:
            await connection.execute(BUMP)
            yield
            await connection.rollback()
    finally:
        await holder.dispose()


def assert_database_unavailable(error: grpc.aio.AioRpcError) -> None:
    details = details_of(error)
    assert details.code == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert details.error_info is not None
    assert details.error_info.reason == DATABASE_UNAVAILABLE
    assert details.retry_delay_seconds is not None
    assert details.retry_delay_seconds > 0


async def echo(address: str, timeout: float, message: str = "hi") -> sample_pb2.EchoResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        return await stub.Echo(sample_pb2.EchoRequest(message=message), timeout=timeout)


async def test_a_call_queued_behind_another_sessions_row_lock_answers_unavailable_before_its_deadline(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres.create_database()
    database = await counters_database(url)
    caplog.set_level(logging.WARNING)
    try:
        async with serve_in_process(sample_settings(), [binding(Bumping(database))]) as server:
            async with row_locked(url):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await echo(server.address, timeout=2)
                assert_database_unavailable(caught.value)
                assert database.postgres_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
                # Nor does its statement wait on in the server, holding its place and a connection slot there.
                await eventually(
                    lambda: not_waiting_on_the_lock(database), "the cut-off statement no longer waiting on the lock"
                )
            # The lock gone, the next call works: the pool did not keep the connection cut off mid-statement.
            await echo(server.address, timeout=20)
        assert await counter(database) == 1
    finally:
        await database.dispose()
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len([line for line in said if "did not answer" in line]) == 1, said


def _server_processes(data_dir: Path) -> list[int]:
    """The postmaster of the server in `data_dir` and every process it started (its backends, its writers)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The parent's pid is the second field after the command name, which is in parentheses.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    """The test's own server frozen (SIGSTOP) while the block runs: it accepts TCP connections into its backlog and
    answers nothing, as a hung host does."""
    pids = _server_processes(server.data_dir)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_a_stopped_postgresql_answers_a_call_unavailable_before_its_deadline() -> None:
    with postgres_server() as server:
        database = await counters_database(server.create_database())
        try:
            async with serve_in_process(sample_settings(), [binding(Bumping(database))]) as served:
                await echo(served.address, timeout=20)  # a pooled connection, as a serving replica has
                with stopped(server), pytest.raises(grpc.aio.AioRpcError) as caught:
                    await echo(served.address, timeout=2)
                assert_database_unavailable(caught.value)
                assert database.postgres_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
                await echo(served.address, timeout=20)
            assert await counter(database) == 2
        finally:
            await database.dispose()


async def test_work_outside_a_call_and_a_calls_detached_work_wait_on_a_lock_past_the_bound_that_cuts_a_call(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database()
    database = await counters_database(url)
    servicer = Bumping(database)
    try:
        async with serve_in_process(sample_settings(), [binding(servicer)]) as server:
            async with row_locked(url):
                outside = asyncio.create_task(bump(database))  # a relay's, a consumer's, a migration's: no call
                await echo(server.address, timeout=2, message=DETACHED)
                await eventually(lambda: waiting_on_the_lock(database, 2), "the two bumps waiting on the lock")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await echo(server.address, timeout=2)
                assert_database_unavailable(caught.value)
                # Cut off: the call that started the detached bump, and one that came later, with as long.
                assert not outside.done()
                assert not servicer.detached[0].done()
            await asyncio.wait_for(asyncio.gather(outside, *servicer.detached), timeout=30)
        assert await counter(database) == 2
    finally:
        await database.dispose()


async def waiting_on_the_lock(database: Database, count: int) -> bool:
    """Whether `count` sessions of the database wait on the counter row's lock (the holder's is not one)."""
    async with database.read() as connection:
        return int(await connection.scalar(text(f"{WAITING_ON_A_LOCK} AND query LIKE 'UPDATE counters%'"))) >= count


async def not_waiting_on_the_lock(database: Database) -> bool:
    return not await waiting_on_the_lock(database, 1)


@pytest.mark.parametrize(("remaining", "bound"), [(2.0, 1.8), (15.0, 14.75), (0.5, 0.45)])
def test_the_database_bound_leaves_the_smaller_of_a_tenth_and_a_quarter_second_to_answer(
    remaining: float, bound: float
) -> None:
    assert database_time_bound(remaining) == pytest.approx(bound)


@pytest.mark.parametrize("seconds", [0.0, 0.01], ids=["passed", "10ms"])
async def test_a_call_with_no_time_left_for_the_database_answers_deadline_exceeded_not_database_unavailable(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture, seconds: float
) -> None:
    database = await counters_database(postgres.create_database())
    caplog.set_level(logging.WARNING)
    try:
        for work in (bump, counter):
            with call_context.deadline_within(seconds), pytest.raises(grpc.aio.AioRpcError) as caught:
                await work(database)
            details = details_of(caught.value)
            assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED, (caught.value.code(), caught.value.details())
            assert details.error_info is not None
            assert details.error_info.reason == "INBOUND_DEADLINE_EXCEEDED"
        assert await counter(database) == 0
    finally:
        await database.dispose()
    # The database did nothing wrong: no warning about it.
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


# A commit that takes 1 s, past the call's database bound (made a quarter of its remaining time here: ~0.5 s of a
# 2 s call) yet well within the statement_timeout the write sets (the call's whole remaining time, ~1.9 s, counted
# from the COMMIT's own start) and the call's deadline: a deferred constraint trigger runs at COMMIT. Wide margins
# on each side, for a loaded machine.
SLOW_COMMIT = (
    "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_sleep(1.0); RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON counters DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION slow_commit()",
)


async def test_a_commit_still_running_at_the_bound_is_never_answered_database_unavailable(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "database_time_bound", lambda remaining: remaining / 4)
    database = await counters_database(postgres.create_database())
    async with database.transaction() as connection:
        for statement in SLOW_COMMIT:
            await connection.execute(text(statement))
    try:
        async with serve_in_process(sample_settings(), [binding(Bumping(database))]) as server:
            # The write may be stored: only the call's own deadline may end it, which says nothing is sure.
            assert await answered(echo(server.address, timeout=2)) in {
                grpc.StatusCode.OK,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            }
        # And it was: DATABASE_UNAVAILABLE, which says retrying is safe, would have had it applied twice.
        await eventually(lambda: counted(database, 1), "the bump committed")
    finally:
        await database.dispose()


async def counted(database: Database, n: int) -> bool:
    return await counter(database) == n


async def answered(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
