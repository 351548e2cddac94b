"""Idempotency keys behave as Stripe's: replay, reuse detection, in-flight duplicates, leases, retention;
the store's tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import logging
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import wrappers_pb2
from google.rpc import status_pb2
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import DBAPIError

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.config import ConfigError, IdempotencySettings, load_settings
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import database_unavailable
from shopmesh_chassis.idempotency import IdempotencyStore, RequestFingerprint, fingerprint_key
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.tables import idempotency_records
from shopmesh_chassis.testing.postgres import PostgresServer

FINGERPRINT = RequestFingerprint(b"test-fingerprint-key-of-32-bytes")

scratch = MetaData()
effects = Table("effects", scratch, Column("id", Integer, primary_key=True), Column("what", String(50)))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def db(blank_db: Database, tmp_path: Path) -> Database:
    versions = tmp_path / "versions"
    versions.mkdir()
    await migrate(blank_db, versions)
    async with blank_db.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    return blank_db


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, clock: Clock) -> IdempotencyStore:
    return IdempotencyStore(db, "shopmesh.test", fingerprint=FINGERPRINT, lease=timedelta(seconds=30), clock=clock)


async def count_effects(db: Database) -> int:
    async with db.transaction() as session:
        return int((await session.execute(select(func.count()).select_from(effects))).scalar_one())


def request(text: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=text)


def effect(result: str = "done") -> object:
    async def operation(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what=result))
        return wrappers_pb2.StringValue(value=result)

    return operation


async def run(
    store: IdempotencyStore,
    key: str | None,
    req: wrappers_pb2.StringValue,
    op: object,
    check: Callable[[], object] = lambda: None,
) -> str:
    response = await store.run(
        method="Charge",
        key=key,
        request=req,
        response_type=wrappers_pb2.StringValue,
        operation=op,  # type: ignore[arg-type]
        check=check,
    )
    return response.value


async def test_same_key_and_request_replays_the_response_without_running_again(
    store: IdempotencyStore, db: Database
) -> None:
    assert await run(store, "k1", request("a"), effect("first")) == "first"
    assert await run(store, "k1", request("a"), effect("second")) == "first"
    assert await count_effects(db) == 1


async def test_same_key_with_a_different_request_is_rejected(store: IdempotencyStore) -> None:
    await run(store, "k1", request("a"), effect())
    with pytest.raises(errors.InvalidArgument) as caught:
        await run(store, "k1", request("b"), effect())
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_the_requests_check_is_passed_by_for_a_stored_outcome_and_a_refused_request_takes_no_key(
    store: IdempotencyStore, db: Database
) -> None:
    """A retry of a request a release with looser rules accepted replays its outcome; a new request the rules
    refuse is refused before its key is claimed, so the key is free for the request the caller sends instead."""

    def refuse() -> None:
        raise errors.InvalidArgument("refused", [errors.FieldViolation("value", "bad", "INVALID_CHARACTERS")])

    async def checked(key: str, text: str) -> str:
        return await run(store, key, request(text), effect(text), refuse if "\n" in text else lambda: None)

    await run(store, "k1", request("a\nb"), effect("a\nb"))
    assert await checked("k1", "a\nb") == "a\nb"
    with pytest.raises(errors.InvalidArgument):
        await checked("k2", "a\nb")
    assert await checked("k2", "a b") == "a b"
    assert await count_effects(db) == 2


async def test_the_requests_check_is_passed_by_for_an_outcome_stored_after_the_first_look(
    store: IdempotencyStore, db: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look without the lock finds nothing, then another attempt (an older pod in a rolling update)
    completes the request under the same key before the check refuses it: its outcome is replayed, the
    tightened rules' refusal giving way to it (a second look, as lock-free as the first)."""
    other = IdempotencyStore(db, "shopmesh.test", fingerprint=FINGERPRINT, clock=clock)
    real_read = db.read
    completed_elsewhere = False

    @asynccontextmanager
    async def read_then_completed_elsewhere() -> AsyncIterator[DbConnection]:
        nonlocal completed_elsewhere
        async with real_read() as session:
            yield session
        if not completed_elsewhere:
            completed_elsewhere = True
            await run(other, "k1", request("a\nb"), effect("a\nb"))

    monkeypatch.setattr(db, "read", read_then_completed_elsewhere)
    checked: list[str] = []

    def refuse() -> None:
        checked.append("refused")
        raise errors.InvalidArgument("refused", [errors.FieldViolation("value", "bad", "INVALID_CHARACTERS")])

    replayed = await run(store, "k1", request("a\nb"), effect("again"), refuse)
    assert completed_elsewhere
    assert (replayed, checked) == ("a\nb", ["refused"])
    assert await count_effects(db) == 1


# How long the lock's holder keeps it at most: only a refusal that waits for the lock meets the bound.
LOCK_HELD_AT_MOST_SECONDS = 30.0


@asynccontextmanager
async def writer_of_this_service(db: Database, refused: asyncio.Event) -> AsyncIterator[list[bool]]:
    """The service's own writer in a transaction (the refusal queues behind it on the writer lock), holding it
    until the refusal has arrived, or the bound; yields whether it gave it up because the refusal arrived."""
    held, released_after_refusal = asyncio.Event(), []

    async def hold() -> None:
        async with db.transaction():
            held.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(refused.wait(), timeout=LOCK_HELD_AT_MOST_SECONDS)
            released_after_refusal.append(refused.is_set())

    holder = asyncio.ensure_future(hold())
    try:
        await asyncio.wait_for(held.wait(), timeout=LOCK_HELD_AT_MOST_SECONDS)
        yield released_after_refusal
    finally:
        await asyncio.wait_for(holder, timeout=LOCK_HELD_AT_MOST_SECONDS * 2)


@asynccontextmanager
async def writer_of_another_process(db: Database, refused: asyncio.Event) -> AsyncIterator[list[bool]]:
    """Another connection to the file (a second process, an operator's sqlite3) in BEGIN IMMEDIATE, in a thread
    of its own: a BEGIN IMMEDIATE of the service waits for it between tries, the loop free (db._begin_writing),
    and fails "database is locked" after 5 s."""
    path = db.address
    held, arrived, released_after_refusal = threading.Event(), threading.Event(), []

    def hold() -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            held.set()
            arrived.wait(timeout=LOCK_HELD_AT_MOST_SECONDS)
            released_after_refusal.append(arrived.is_set())
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    holder = asyncio.ensure_future(asyncio.to_thread(hold))
    assert await asyncio.to_thread(held.wait, LOCK_HELD_AT_MOST_SECONDS), "the other connection took no lock"
    # The refusal arrives on the loop; the holder waits in its thread.
    waiter = asyncio.ensure_future(refused.wait())
    waiter.add_done_callback(lambda _: arrived.set())
    try:
        yield released_after_refusal
    finally:
        arrived.set()
        waiter.cancel()
        await asyncio.wait_for(holder, timeout=LOCK_HELD_AT_MOST_SECONDS * 2)


@pytest.mark.parametrize("blank_db", ["sqlite"], indirect=True)
@pytest.mark.parametrize("holder", [writer_of_this_service, writer_of_another_process])
async def test_a_request_its_check_refuses_is_answered_without_waiting_for_the_write_lock(
    store: IdempotencyStore, db: Database, holder: Callable[..., Any]
) -> None:
    """A refusal reads, and never writes: with the write lock held elsewhere (a long write of the service, or
    another connection to the file), a malformed request with a fresh key gets its INVALID_ARGUMENT while the
    lock is still held. Checked under the lock, it waited for it (behind every queued writer) and, with the
    lock held past the 5 s a writer waits for it, failed with "database is locked" instead."""
    refused = asyncio.Event()

    def refuse() -> None:
        raise errors.InvalidArgument("refused", [errors.FieldViolation("value", "bad", "INVALID_CHARACTERS")])

    async with holder(db, refused) as released_after_refusal:
        with pytest.raises(errors.InvalidArgument) as caught:
            await asyncio.wait_for(
                run(store, "fresh", request("a\nb"), effect(), refuse), LOCK_HELD_AT_MOST_SECONDS * 2
            )
        refused.set()
    assert caught.value.violations[0].reason == "INVALID_CHARACTERS"
    assert released_after_refusal == [True], "the lock was given up before the refusal came"
    assert await count_effects(db) == 0


async def test_missing_key_is_invalid_argument(store: IdempotencyStore) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        await run(store, None, request("a"), effect())
    assert caught.value.reason == "IDEMPOTENCY_KEY_MISSING"


async def test_duplicate_while_the_first_runs_is_aborted(store: IdempotencyStore, db: Database) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(session: DbConnection) -> wrappers_pb2.StringValue:
        started.set()
        await release.wait()
        return wrappers_pb2.StringValue(value="slow")

    # The slow operation holds SQLite's write lock; the duplicate's claim must not wait for it, so the
    # first request runs its operation outside the claim transaction (which already committed).
    first = asyncio.create_task(run(store, "k1", request("a"), slow))
    await started.wait()
    second_store = IdempotencyStore(db, "shopmesh.test", fingerprint=FINGERPRINT, clock=store._clock)
    # A claim that waited would wait until `release`, never set meanwhile: any bound tells the two apart, and
    # a generous one never fails an answer a loaded machine slowed (0.5 s did: on PostgreSQL the claim opens
    # a connection of its own, a new server process, 0.2 s of it seen at a load of 19 on 2 cores).
    with pytest.raises(errors.Aborted) as caught:
        await asyncio.wait_for(run(second_store, "k1", request("a"), effect()), timeout=30)
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    release.set()
    assert await first == "slow"


async def test_another_request_while_the_first_runs_is_in_use_and_reused_only_once_its_outcome_is_stored(
    store: IdempotencyStore,
) -> None:
    """Answered REUSED while the first still ran, orders read "nothing captured under the key" and cancelled
    "nothing was charged"; the first Charge then captured, refunded late. IN_USE sends it back to ask again."""
    await store._claim("-|-|Charge", "k1", FINGERPRINT(request("a")), "first")
    with pytest.raises(errors.Aborted) as caught:
        await run(store, "k1", request("b"), effect())
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    await run(store, "k2", request("a"), effect())
    with pytest.raises(errors.InvalidArgument) as reused:
        await run(store, "k2", request("b"), effect())
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_another_request_takes_over_a_claim_whose_lease_ran_out_and_its_retry_replays(
    store: IdempotencyStore, db: Database, clock: Clock
) -> None:
    # The first request's process died: nothing was stored under the key, so no outcome was reused.
    await store._claim("-|-|Charge", "k1", FINGERPRINT(request("a")), "dead")
    clock.now += timedelta(seconds=31)
    assert await run(store, "k1", request("b"), effect("second")) == "second"
    assert await run(store, "k1", request("b"), effect("again")) == "second"
    with pytest.raises(errors.InvalidArgument) as reused:
        await run(store, "k1", request("a"), effect())
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await count_effects(db) == 1


async def test_domain_errors_are_stored_and_replayed(store: IdempotencyStore, db: Database) -> None:
    calls = 0

    async def declined(session: DbConnection) -> wrappers_pb2.StringValue:
        nonlocal calls
        calls += 1
        raise errors.FailedPrecondition("card declined", reason="CARD_DECLINED")

    with pytest.raises(errors.FailedPrecondition):
        await run(store, "k1", request("a"), declined)
    with pytest.raises(errors.ReplayedError) as replayed:
        await run(store, "k1", request("a"), declined)
    status = status_pb2.Status.FromString(replayed.value.status)
    assert status.message == "card declined"
    assert calls == 1


async def test_transient_errors_are_not_stored(store: IdempotencyStore, db: Database) -> None:
    async def unavailable(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="rolled back"))
        raise errors.Unavailable("processor down")

    with pytest.raises(errors.Unavailable):
        await run(store, "k1", request("a"), unavailable)
    assert await count_effects(db) == 0
    assert await run(store, "k1", request("a"), effect("retried")) == "retried"


async def test_a_refusal_that_is_no_outcome_is_not_stored_and_the_retry_runs(
    store: IdempotencyStore, db: Database
) -> None:
    # A state only a newer release can act on: the contract says to retry, under the same key, once it serves.
    async def not_yet(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="rolled back"))
        raise errors.FailedPrecondition("a state this release cannot name", reason="NOT_YET", outcome=False)

    with pytest.raises(errors.FailedPrecondition):
        await run(store, "k1", request("a"), not_yet)
    assert await count_effects(db) == 0
    assert await run(store, "k1", request("a"), effect("retried")) == "retried"


async def test_effect_and_record_commit_together(store: IdempotencyStore, db: Database) -> None:
    async def crashes(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="half"))
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await run(store, "k1", request("a"), crashes)
    assert await count_effects(db) == 0
    assert await run(store, "k1", request("a"), effect("again")) == "again"
    assert await count_effects(db) == 1


async def test_abandoned_key_is_taken_over_after_its_lease(store: IdempotencyStore, clock: Clock) -> None:
    # Simulate a process that claimed the key and died: claim, never complete.
    await store._claim("-|-|Charge", "k1", "f", "dead")
    with pytest.raises(errors.Aborted):
        await store._claim("-|-|Charge", "k1", "f", "early")
    clock.now += timedelta(seconds=31)
    assert await store._claim("-|-|Charge", "k1", "f", "late") is None


class AfterTransaction:
    """The database as one attempt sees it, with `then` happening as soon as its `number`-th transaction
    ended, committed or rolled back (the claim is the first, the operation's the second): a stall, or a
    cancellation while the connection goes back to the pool."""

    def __init__(self, db: Database, number: int, then: Callable[[], Awaitable[None]]) -> None:
        self._db = db
        self._countdown = number
        self._then = then

    def read(self) -> Any:
        return self._db.read()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DbConnection]:
        self._countdown -= 1
        try:
            async with self._db.transaction() as session:
                yield session
        finally:
            if self._countdown == 0:
                await self._then()


def attempt_seeing(
    db: Database, store: IdempotencyStore, then: Callable[[], Awaitable[None]], *, after_transaction: int = 1
) -> IdempotencyStore:
    return IdempotencyStore(
        AfterTransaction(db, after_transaction, then),  # type: ignore[arg-type]
        "shopmesh.test",
        fingerprint=FINGERPRINT,
        lease=timedelta(seconds=30),
        clock=store._clock,
    )


async def test_a_retry_after_the_lease_of_a_still_running_attempt_replays_its_outcome_instead_of_running_again(
    store: IdempotencyStore, db: Database, clock: Clock
) -> None:
    """The first attempt outlives its lease (a slow processor call, a lock wait, a stalled loop) and the
    client retries with the same key: the retry waits for the first attempt to commit and replays it."""
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="first"))
        started.set()
        await finish.wait()
        return wrappers_pb2.StringValue(value="first")

    first = asyncio.create_task(run(store, "k1", request("a"), slow))
    await started.wait()
    clock.now += timedelta(seconds=31)
    retry = asyncio.create_task(run(store, "k1", request("a"), effect("retry")))
    # Long enough for the retry to reach the first attempt's lock (PostgreSQL) or the writer (SQLite).
    await asyncio.sleep(0.5)
    finish.set()
    assert await asyncio.gather(first, retry) == ["first", "first"]
    assert await count_effects(db) == 1


async def test_an_attempt_that_stalls_past_its_lease_before_the_operation_finds_its_key_taken_over_and_aborts(
    store: IdempotencyStore, db: Database, clock: Clock
) -> None:
    stalled, resume = asyncio.Event(), asyncio.Event()

    async def stall() -> None:
        stalled.set()
        await resume.wait()

    first = asyncio.create_task(run(attempt_seeing(db, store, stall), "k1", request("a"), effect("first")))
    await stalled.wait()
    clock.now += timedelta(seconds=31)
    assert await run(store, "k1", request("a"), effect("retry")) == "retry"
    resume.set()
    with pytest.raises(errors.Aborted) as caught:
        await first
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    assert await run(store, "k1", request("a"), effect("again")) == "retry"
    assert await count_effects(db) == 1


async def test_an_error_of_an_attempt_whose_key_was_taken_over_after_it_failed_is_not_stored_over_the_new_outcome(
    store: IdempotencyStore, db: Database, clock: Clock
) -> None:
    """The error is stored in a transaction of its own, after the operation's rolled back: a retry can take
    the key over in between."""
    stalled, resume = asyncio.Event(), asyncio.Event()

    async def stall() -> None:
        stalled.set()
        await resume.wait()

    async def declined(session: DbConnection) -> wrappers_pb2.StringValue:
        raise errors.FailedPrecondition("card declined", reason="CARD_DECLINED")

    attempt = attempt_seeing(db, store, stall, after_transaction=2)
    first = asyncio.create_task(run(attempt, "k1", request("a"), declined))
    await stalled.wait()
    clock.now += timedelta(seconds=31)
    assert await run(store, "k1", request("a"), effect("retry")) == "retry"
    resume.set()
    with pytest.raises(errors.Aborted) as caught:  # not the error: a retry gets the key's outcome, "retry"
        await first
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    assert await run(store, "k1", request("a"), effect("again")) == "retry"


async def test_an_attempt_failing_transiently_after_its_key_was_taken_over_leaves_the_new_claim_in_place(
    store: IdempotencyStore, db: Database, clock: Clock
) -> None:
    """The failed attempt releases the key for a retry; after a takeover the key is the retry's, still
    running, and a third request must not get to run beside it."""
    first_started, fail_first = asyncio.Event(), asyncio.Event()
    retry_started, finish_retry = asyncio.Event(), asyncio.Event()

    async def fails(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="first"))
        first_started.set()
        await fail_first.wait()
        raise errors.Unavailable("processor down")

    async def retried(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="retry"))
        retry_started.set()
        await finish_retry.wait()
        return wrappers_pb2.StringValue(value="retry")

    first = asyncio.create_task(run(store, "k1", request("a"), fails))
    await first_started.wait()
    clock.now += timedelta(seconds=31)
    retry = asyncio.create_task(run(store, "k1", request("a"), retried))
    # Long enough for the retry to wait on the first attempt's lock or the writer, so that it takes the key
    # over before the first attempt releases it.
    await asyncio.sleep(0.5)
    fail_first.set()
    with pytest.raises(errors.Unavailable):
        await first
    await retry_started.wait()
    with pytest.raises(errors.Aborted) as caught:
        await asyncio.wait_for(run(store, "k1", request("a"), effect("third")), timeout=5)
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    finish_retry.set()
    assert await retry == "retry"
    assert await count_effects(db) == 1


@pytest.mark.parametrize("blank_db", ["postgresql"], indirect=True)
async def test_a_key_that_cannot_be_released_while_the_database_refuses_connections_is_one_warning_line(
    store: IdempotencyStore, db: Database, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage is no bug: the release that fails for it says so in a line, not a traceback per call (the key's
    lease frees it anyway). The attempt's own connection is cut with the others, so its operation fails too."""
    name = db.url.rsplit("/", 1)[1]

    async def fails_as_the_database_goes(session: DbConnection) -> wrappers_pb2.StringValue:
        await asyncio.to_thread(postgres.refuse_connections, name)
        await session.execute(select(1))
        raise AssertionError("the statement ran on a connection the server cut")

    caplog.set_level(logging.WARNING, logger="shopmesh.idempotency")
    try:
        with pytest.raises(DBAPIError) as caught:
            await run(store, "k1", request("a"), fails_as_the_database_goes)
    finally:
        postgres.allow_connections(name)
    assert database_unavailable(caught.value)
    said = [record for record in caplog.records if record.name == "shopmesh.idempotency"]
    assert [(record.levelno, record.exc_info) for record in said] == [(logging.WARNING, None)]
    assert "could not release idempotency key" in said[0].getMessage()


class BeforeCommit(AfterTransaction):
    """AfterTransaction's `then` happening in the `number`-th transaction just before it commits, the locks it
    took still held: a retry's takeover caught between its UPDATE and its COMMIT."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DbConnection]:
        self._countdown -= 1
        async with self._db.transaction() as session:
            yield session
            if self._countdown == 0:
                await self._then()


# PostgreSQL only: on SQLite the retry's takeover holds the one writer lock, which every transaction waits for.
@pytest.mark.parametrize("blank_db", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("failure", "answer", "reason"),
    [
        # The release of the key, for the retry to run.
        (errors.Unavailable("processor down"), errors.Unavailable, errors.Unavailable.default_reason),
        # The error's outcome, not stored over the key the retry has taken over.
        (
            errors.FailedPrecondition("card declined", reason="CARD_DECLINED"),
            errors.Aborted,
            "IDEMPOTENCY_KEY_IN_USE",
        ),
    ],
    ids=["released", "error_not_stored"],
)
async def test_a_failed_attempt_answers_without_waiting_for_the_retry_taking_its_key_over(
    store: IdempotencyStore,
    db: Database,
    clock: Clock,
    failure: errors.DomainError,
    answer: type[errors.DomainError],
    reason: str,
) -> None:
    """What the failed attempt writes after its operation rolled back meets its claim locked by the retry
    taking it over: it leaves the claim to the retry instead of waiting for the retry's transactions. Its
    statement waited for the takeover's commit and then for the retry's whole operation, which holds the new
    claim: under load the transient test above hung so, its retry waiting for the first attempt's answer."""
    failed, taking_over, take_over = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def fails(session: DbConnection) -> wrappers_pb2.StringValue:
        await session.execute(insert(effects).values(what="first"))
        raise failure

    async def once_the_retry_is_taking_over() -> None:
        failed.set()
        await taking_over.wait()

    async def caught_taking_over() -> None:
        taking_over.set()
        await take_over.wait()

    # The first attempt writes once its operation rolled back and the retry holds the claim, uncommitted.
    first_attempt = attempt_seeing(db, store, once_the_retry_is_taking_over, after_transaction=2)
    first = asyncio.create_task(run(first_attempt, "k1", request("a"), fails))
    await failed.wait()
    clock.now += timedelta(seconds=31)
    retrying = IdempotencyStore(
        BeforeCommit(db, 1, caught_taking_over),  # type: ignore[arg-type]
        "shopmesh.test",
        fingerprint=FINGERPRINT,
        lease=timedelta(seconds=30),
        clock=clock,
    )
    retry = asyncio.create_task(run(retrying, "k1", request("a"), effect("retry")))
    with pytest.raises(answer) as caught:
        # Bounded only so that the old behaviour fails rather than hangs: it waited for `take_over`.
        await asyncio.wait_for(first, timeout=10)
    assert caught.value.reason == reason
    take_over.set()
    assert await retry == "retry"
    assert await run(store, "k1", request("a"), effect("again")) == "retry"
    assert await count_effects(db) == 1


async def test_a_request_cancelled_as_its_claim_commits_leaves_the_key_free_for_a_retry(
    store: IdempotencyStore, db: Database
) -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError  # the caller's deadline, landing after the commit

    with pytest.raises(asyncio.CancelledError):
        await run(attempt_seeing(db, store, cancelled), "k1", request("a"), effect("never"))
    assert await run(store, "k1", request("a"), effect("retried")) == "retried"
    assert await count_effects(db) == 1


async def test_keys_expire_after_retention(store: IdempotencyStore, clock: Clock) -> None:
    await run(store, "k1", request("a"), effect("old"))
    clock.now += timedelta(hours=49)
    assert await store.purge_expired() == 1
    assert await run(store, "k1", request("b"), effect("new")) == "new"


async def test_keys_are_scoped_per_method(store: IdempotencyStore) -> None:
    await run(store, "k1", request("a"), effect())
    other = await store.run(
        method="Refund",
        key="k1",
        request=request("b"),
        response_type=wrappers_pb2.StringValue,
        operation=effect("refund"),  # type: ignore[arg-type]
    )
    assert other.value == "refund"


async def test_keys_of_users_too_long_for_the_scope_column_stay_apart_and_replay(store: IdempotencyStore) -> None:
    """A scope wider than its column is stored as its digest (PostgreSQL refused the row: INTERNAL): two
    long user ids that differ only at their end still keep their keys apart, and each replays its own."""
    long_user = "usr_" + "u" * 400

    async def as_user(user: str, text: str, result: str) -> str:
        token = call_context.enter(None, [(call_context.USER_ID, user)])
        try:
            return await run(store, "k1", request(text), effect(result))
        finally:
            call_context.leave(token)

    assert await as_user(long_user + "a", "a", "first") == "first"
    assert await as_user(long_user + "b", "b", "second") == "second"
    assert await as_user(long_user + "a", "a", "never") == "first"


# --- fingerprints ------------------------------------------------------------------------------------------


async def test_the_stored_fingerprint_is_an_hmac_under_the_key_not_a_plain_hash(
    store: IdempotencyStore, db: Database
) -> None:
    # Requests carry card numbers: what is stored must not be checkable against guesses without the key.
    secret = wrappers_pb2.StringValue(value="4242424242424242")
    await run(store, "k1", secret, effect())
    async with db.read() as session:
        stored = (await session.execute(select(idempotency_records.c.request_hash))).scalar_one()
    encoded = secret.SerializeToString(deterministic=True)
    assert stored != hashlib.sha256(encoded).hexdigest()
    assert stored == hmac.new(b"test-fingerprint-key-of-32-bytes", encoded, hashlib.sha256).hexdigest()


def test_a_fingerprint_differs_by_request_and_by_key() -> None:
    other_key = RequestFingerprint(b"another-fingerprint-key-32-bytes")
    assert FINGERPRINT(request("a")) == FINGERPRINT(request("a"))
    assert FINGERPRINT(request("a")) != FINGERPRINT(request("b"))
    assert FINGERPRINT(request("a")) != other_key(request("a"))
    with pytest.raises(ValueError, match="32 bytes"):
        RequestFingerprint(b"short")


def test_the_configured_fingerprint_key_is_used(tmp_path: Path) -> None:
    settings = load_settings(
        IdempotencySettings, service_name="svc", data_dir=str(tmp_path), idempotency_fingerprint_key="x" * 40
    )
    assert fingerprint_key(settings) == b"x" * 40
    assert list(tmp_path.iterdir()) == []


def test_without_a_configured_key_one_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(IdempotencySettings, service_name="svc", data_dir=str(tmp_path / "data"))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: fingerprint_key(settings), range(16)))
    assert len(keys) == 1
    (key,) = keys
    assert len(key) == 64
    stored = tmp_path / "data" / "svc.fingerprint-key"
    assert stored.read_text() == key.decode()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    # Restarts find the same key, so a replay after a restart still matches.
    assert fingerprint_key(settings) == key
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["svc.fingerprint-key"]


def test_a_database_url_without_a_fingerprint_key_stops_startup_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(IdempotencySettings, service_name="svc", database_url="postgresql://db/svc")
    assert str(caught.value) == (
        "invalid configuration: IDEMPOTENCY_FINGERPRINT_KEY is required when DATABASE_URL is set "
        "(32+ characters, from a Secret)"
    )
    with pytest.raises(ConfigError, match="IDEMPOTENCY_FINGERPRINT_KEY"):
        load_settings(IdempotencySettings, service_name="svc", idempotency_fingerprint_key="too-short")


# Only SQLite kept an over-long scope before the upgrade (PostgreSQL refused it: the column is VARCHAR(300)).
@pytest.mark.parametrize("blank_db", ["sqlite"], indirect=True)
async def test_a_retry_across_the_upgrade_finds_the_record_an_earlier_release_kept_under_a_long_scope(
    store: IdempotencyStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scope_for: "the records of scopes that do [fit], written by earlier releases, are still found by a
    retry (hashing all would run a retry after the upgrade a second time)". SQLite kept the rows of scopes
    that do not fit too, written out in full by the earlier release: a retry after the upgrade looks under
    the digest only, misses that record, and runs the call (a Charge) a second time."""
    from shopmesh_chassis import idempotency

    long_user = "usr_" + "u" * 400
    token = call_context.enter(None, [(call_context.USER_ID, long_user)])
    try:
        # The earlier release: the scope written out whatever its length.
        def earlier_scope_for(method: str) -> str:
            inbound = call_context.current()
            caller = (inbound.caller if inbound else None) or "-"
            user = (inbound.user_id if inbound else None) or "-"
            return f"{caller}|{user}|{method}"

        with monkeypatch.context() as patched:
            patched.setattr(idempotency, "scope_for", earlier_scope_for)
            assert await run(store, "k1", request("a"), effect("first")) == "first"
        # The upgrade; the client retries the same call with the same key.
        assert await run(store, "k1", request("a"), effect("second")) == "first"
        assert await count_effects(db) == 1
    finally:
        call_context.leave(token)


async def test_purging_a_large_backlog_of_expired_keys_lets_charges_in_between(tmp_path: Path, clock: Clock) -> None:
    """The hourly purge deletes an hour of keys (at 50 charges/s, 180,000 rows). On SQLite the statements
    run inline on the event loop under the one writer lock: deleted in one statement, the whole service
    (every call, its health checks) stood still until the last row was gone — 2 s for 200,000 rows. Like
    the outbox's and the consumers' purges (`periodic.delete_in_batches`), it must delete in short
    transactions and let the service's own writes go in between."""
    database = Database(f"sqlite:///{tmp_path}/backlog.db")
    versions = tmp_path / "versions"
    versions.mkdir()
    await migrate(database, versions)
    async with database.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    store = IdempotencyStore(database, "shopmesh.test", fingerprint=FINGERPRINT, clock=clock)
    expired = clock.now - timedelta(hours=49)
    backlog = 5_000
    async with database.transaction() as session:
        await session.execute(
            insert(idempotency_records),
            [
                {
                    "scope": "orders|-|Charge",
                    "key": f"old-{index}",
                    "request_hash": "0" * 64,
                    "state": "completed",
                    "status_code": 0,
                    "response": b"",
                    "locked_until": expired,
                    "created_at": expired,
                    "claim_token": "0" * 32,
                }
                for index in range(backlog)
            ],
        )
    finished: list[str] = []

    async def purge() -> int:
        deleted = await store.purge_expired()
        finished.append("purge")
        return deleted

    async def charge() -> None:
        await run(store, "fresh", request("a"), effect("charged"))
        finished.append("charge")

    try:
        purging = asyncio.create_task(purge())
        await asyncio.sleep(0)  # the purge has started
        charging = asyncio.create_task(charge())
        assert await purging == backlog
        await charging
        assert finished == ["charge", "purge"], "a charge waited for the whole backlog to be deleted"
    finally:
        await database.dispose()
