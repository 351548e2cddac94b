"""The outbox relay publishes every event to JetStream exactly once, in the order written, even across crashes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, text, update

from shopmesh_chassis.app import run_shutdown_hooks
from shopmesh_chassis.config import SHUTDOWN_HOOKS_MARGIN_SECONDS, DatabaseSettings, ServiceName, load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.events import DeferredJetStream, JetStreamPublisher, ensure_stream
from shopmesh_chassis.metrics import OutboxMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.outbox import _PG_RELAY_LOCK, OutboxRelay, add_event, new_event_id
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server
from shopmesh_chassis.testing.postgres import WAITING_ON_A_LOCK, PostgresServer

from .nats_kit import LostCancel

SUBJECT = "tests.v1.thing_happened"


@pytest.fixture
async def client(nats_srv: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_srv.url)
    await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
    yield nc
    await nc.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/outbox.db")
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    yield database
    await database.dispose()


@pytest.fixture
async def two_replicas(postgres: PostgresServer, tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two replicas' connections to one migrated PostgreSQL database, for the relay lock's tests."""
    url = postgres.create_database()
    a_db, b_db = Database(url), Database(url)
    (tmp_path / "versions").mkdir()
    await migrate(a_db, tmp_path / "versions")
    yield a_db, b_db
    await a_db.dispose()
    await b_db.dispose()


async def add(db: Database, *values: str) -> list[str]:
    ids = []
    async with db.transaction() as session:
        for value in values:
            event_id = new_event_id()
            await add_event(session, subject=SUBJECT, message=wrappers_pb2.StringValue(value=value), event_id=event_id)
            ids.append(event_id)
    return ids


async def stream_contents(client: Client) -> list[tuple[str, str]]:
    js = client.jetstream()
    info = await js.stream_info("TESTS")
    out = []
    for seq in range(1, info.state.messages + 1):
        msg = await js.get_msg("TESTS", seq)
        out.append(
            (msg.headers["Nats-Msg-Id"] if msg.headers else "", wrappers_pb2.StringValue.FromString(msg.data).value)
        )
    return out


async def test_relay_publishes_in_order_with_event_ids(db: Database, client: Client) -> None:
    ids = await add(db, "a", "b", "c")
    relay = OutboxRelay(db, JetStreamPublisher(client))
    assert await relay.publish_pending() == 3
    assert await relay.publish_pending() == 0
    assert await stream_contents(client) == list(zip(ids, ["a", "b", "c"], strict=True))


async def test_events_of_a_rolled_back_transaction_are_never_published(db: Database, client: Client) -> None:
    async def failing_state_change() -> None:
        async with db.transaction() as session:
            await add_event(session, subject=SUBJECT, message=wrappers_pb2.StringValue(value="x"), event_id="evt_x")
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        await failing_state_change()
    assert await OutboxRelay(db, JetStreamPublisher(client)).publish_pending() == 0


class CrashAfterPublish:
    """Publishes for real, then dies before the relay can mark the event as published."""

    def __init__(self, inner: JetStreamPublisher, crash_on: int) -> None:
        self.inner = inner
        self.crash_on = crash_on
        self.calls = 0

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        self.calls += 1
        result = await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)
        if self.calls == self.crash_on:
            raise ConnectionError("relay died after publish, before marking sent")
        return result


async def test_relay_killed_between_publish_and_mark_causes_no_duplicate(db: Database, client: Client) -> None:
    ids = await add(db, "a", "b", "c")
    crashing = CrashAfterPublish(JetStreamPublisher(client), crash_on=2)
    with pytest.raises(ConnectionError):
        await OutboxRelay(db, crashing).publish_pending()
    # "b" reached the stream but is still unpublished in the outbox: the next relay sends it again.
    assert await OutboxRelay(db, JetStreamPublisher(client)).publish_pending() == 2
    assert await stream_contents(client) == list(zip(ids, ["a", "b", "c"], strict=True))


async def test_a_republish_jetstream_drops_as_a_duplicate_is_counted_apart_from_the_events_published(
    db: Database, client: Client
) -> None:
    registry = CollectorRegistry()
    relay = OutboxRelay(db, JetStreamPublisher(client), metrics=OutboxMetrics(registry))
    [event_id] = await add(db, "once")
    assert await relay.publish_pending() == 1
    # As a relay that died between the publish and the mark leaves it: sent, still unpublished in the outbox.
    async with db.transaction() as session:
        await session.execute(update(outbox_events).values(published_at=None))
    assert await relay.publish_pending() == 1

    def counted(name: str) -> float | None:
        return registry.get_sample_value(f"shopmesh_outbox_events_{name}_total", {"subject": SUBJECT})

    assert (counted("published"), counted("deduplicated")) == (1, 1)
    assert await stream_contents(client) == [(event_id, "once")]


async def test_relay_keeps_events_while_nats_is_down_sends_them_later_and_its_metrics_say_so(
    db: Database, tmp_path: Path
) -> None:
    with nats_server(tmp_path / "nats2") as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
        port, store = server.port, server.store_dir
    # NATS is down. The relay runs, fails its passes, and keeps the event.
    registry = CollectorRegistry()
    relay = OutboxRelay(
        db, JetStreamPublisher(nc, timeout=0.5), poll_interval=0.05, max_backoff=0.2, metrics=OutboxMetrics(registry)
    )
    relay.start()
    ids = await add(db, "while down")
    relay.wake()
    await asyncio.sleep(0.5)
    async with db.transaction() as session:
        unpublished = (
            (await session.execute(select(outbox_events.c.event_id).where(outbox_events.c.published_at.is_(None))))
            .scalars()
            .all()
        )
    assert unpublished == ids
    # An operator sees it: failed passes, and an oldest waiting event that keeps getting older.
    await eventually(
        lambda: (registry.get_sample_value("shopmesh_outbox_relay_failures_total") or 0) >= 1, "a failed pass counted"
    )

    def oldest_age() -> float:
        return registry.get_sample_value("shopmesh_outbox_oldest_unpublished_age_seconds") or 0.0

    age = await eventually(oldest_age, "an age of the oldest waiting event")
    await eventually(lambda: oldest_age() > age + 0.2, "the waiting event getting older")
    with nats_server(store, port=port):
        # Back up: the relay's retries deliver the event.
        async def delivered() -> bool:
            try:
                return [event_id for event_id, _ in await stream_contents(nc)] == ids
            except nats.errors.Error:  # the test's own client may still be reconnecting
                return False

        await eventually(delivered, "the event kept while NATS was down on the stream", interval=0.1)
        await relay.stop()
    # Once each: acknowledged as new, or, when the send that reached the stream lost its acknowledgement to the
    # restart, as the retry's duplicate.
    counted = [
        registry.get_sample_value(f"shopmesh_outbox_events_{how}_total", {"subject": SUBJECT}) or 0
        for how in ("published", "deduplicated")
    ]
    assert sum(counted) == len(ids), counted
    assert oldest_age() == 0
    await nc.close()


async def wait_for_stream(client: Client, count: int) -> list[tuple[str, str]]:
    """The stream's contents once it holds `count` messages or more (the caller checks which)."""

    async def enough() -> list[tuple[str, str]] | None:
        contents = await stream_contents(client)
        return contents if len(contents) >= count else None

    return await eventually(enough, f"{count} message(s) on the stream")


async def test_a_running_relay_sends_more_events_than_one_batch_without_waiting_for_its_poll(
    db: Database, client: Client
) -> None:
    ids = await add(db, "a", "b", "c", "d", "e")
    # The poll interval is far beyond the wait below: only the relay's own continuation can send the rest.
    relay = OutboxRelay(db, JetStreamPublisher(client), batch_size=2, poll_interval=600)
    relay.start()
    try:
        assert await wait_for_stream(client, 5) == list(zip(ids, ["a", "b", "c", "d", "e"], strict=True))
    finally:
        await relay.stop()


async def test_a_stopping_relay_sends_what_was_committed_since_its_last_pass(db: Database, client: Client) -> None:
    """A shutdown lets running sagas finish, and they commit their events just before the relay stops:
    those go out with it, not at the next start."""
    relay = OutboxRelay(db, JetStreamPublisher(client), batch_size=2, poll_interval=600)
    # Its first pass, seen to end before the events are committed (a fixed sleep could end before it on a
    # loaded machine, and that pass would send them): it found nothing, and the next is ten minutes away.
    first_pass_done = asyncio.Event()
    publish_pending = relay.publish_pending

    async def seen_pass() -> int:
        try:
            return await publish_pending()
        finally:
            first_pass_done.set()

    relay.publish_pending = seen_pass  # type: ignore[method-assign]
    relay.start()
    await asyncio.wait_for(first_pass_done.wait(), 30)
    ids = await add(db, "a", "b", "c")
    await relay.stop()
    assert await stream_contents(client) == list(zip(ids, ["a", "b", "c"], strict=True))


class AddsAnEventWhilePublishing:
    """The first publish lets another transaction commit an event and wake the relay, as a saga would."""

    def __init__(self, inner: JetStreamPublisher, db: Database) -> None:
        self.inner = inner
        self.db = db
        self.relay: OutboxRelay | None = None
        self.added: list[str] = []

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        if not self.added and self.relay is not None:
            self.added = await add(self.db, "committed during the pass")
            self.relay.wake()
        return await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


async def test_an_event_committed_while_the_relay_publishes_is_sent_without_waiting_for_its_poll(
    db: Database, client: Client
) -> None:
    first = await add(db, "first")
    publisher = AddsAnEventWhilePublishing(JetStreamPublisher(client), db)
    relay = OutboxRelay(db, publisher, poll_interval=600)
    publisher.relay = relay
    relay.start()
    try:
        contents = await wait_for_stream(client, 2)
    finally:
        await relay.stop()
    assert contents == list(zip([*first, *publisher.added], ["first", "committed during the pass"], strict=True))


_LOCK_HOLDERS = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted")


class CountingPublisher:
    """Which events JetStream acknowledged to this relay: the publishes the relay took for sent and marks."""

    def __init__(self, inner: JetStreamPublisher) -> None:
        self.inner = inner
        self.published: list[str] = []

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        # Counted once acknowledged, not when tried: a publish cut off before its ack (a relay stopped while it
        # waited, the ack late under load) may have landed, and is sent again by design (JetStream drops the
        # copy by its Nats-Msg-Id). Two relays sending the same event would both be acknowledged.
        result = await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)
        self.published.append(msg_id)
        return result


async def test_two_replicas_relays_on_postgresql_publish_every_event_once_in_order(
    postgres: PostgresServer, client: Client, tmp_path: Path
) -> None:
    url = postgres.create_database()
    replicas = [Database(url), Database(url)]
    (tmp_path / "versions").mkdir()
    await migrate(replicas[0], tmp_path / "versions")
    publishers = [CountingPublisher(JetStreamPublisher(client)) for _ in replicas]
    relays = [
        OutboxRelay(db, publisher, batch_size=3, poll_interval=0.05)
        for db, publisher in zip(replicas, publishers, strict=True)
    ]
    for relay in relays:
        relay.start()
    ids: list[str] = []
    try:
        # Events keep coming, from both replicas, while both relays run.
        for i in range(30):
            ids += await add(replicas[i % 2], f"e{i}")
            relays[i % 2].wake()
            await asyncio.sleep(0.005)
        contents = await wait_for_stream(client, len(ids))
    finally:
        for relay in relays:
            await relay.stop()
        for db in replicas:
            await db.dispose()
    assert [event_id for event_id, _ in contents] == ids
    # One relay at a time holds the lock and marks what it sent before letting go: nothing is acknowledged twice.
    assert sorted(publishers[0].published + publishers[1].published) == sorted(ids)


async def test_a_relay_stopped_while_it_marks_what_was_acknowledged_sends_none_of_it_again(
    postgres: PostgresServer, client: Client, tmp_path: Path
) -> None:
    url = postgres.create_database()
    database, other = Database(url), Database(url)
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    ids = await add(database, "a", "b")
    publisher = CountingPublisher(JetStreamPublisher(client))
    relay = OutboxRelay(database, publisher, poll_interval=600, retention_seconds=0)
    try:
        async with other.transaction() as blocker:
            # Row locks the relay's mark waits for: the stop comes while it marks, as a slow database makes it.
            await blocker.execute(select(outbox_events.c.seq).with_for_update())
            relay.start()
            await eventually(lambda: len(publisher.published) == 2, "both events acknowledged")

            async def marking() -> bool:
                async with other.read() as session:
                    waiting = await session.scalar(
                        text(f"{WAITING_ON_A_LOCK} AND query LIKE 'UPDATE chassis_outbox_events%'")
                    )
                return bool(waiting)

            await eventually(marking, "the relay's mark waiting for the row locks")
            stopping = asyncio.create_task(relay.stop())
            relay_task = next(task for task in asyncio.all_tasks() if task.get_name() == "outbox-relay")
            await eventually(lambda: relay_task.cancelling() or relay_task.done(), "the relay cancelled")
        await stopping
        async with database.read() as session:
            unmarked = await session.scalar(
                select(func.count()).select_from(outbox_events).where(outbox_events.c.published_at.is_(None))
            )
    finally:
        await relay.stop()
        await database.dispose()
        await other.dispose()
    assert unmarked == 0
    # Marked before it let go: its last pass found nothing to send again.
    assert publisher.published == ids
    assert [event_id for event_id, _ in await stream_contents(client)] == ids


async def test_a_relay_whose_lock_connection_dies_takes_the_lock_again_and_goes_on(
    postgres: PostgresServer, client: Client, tmp_path: Path
) -> None:
    url = postgres.create_database()
    database, other = Database(url), Database(url)
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    relay = OutboxRelay(database, JetStreamPublisher(client), poll_interval=0.05, max_backoff=0.2)
    relay.start()
    try:
        ids = await add(database, "before")
        assert [event_id for event_id, _ in await wait_for_stream(client, 1)] == ids
        # The lock's connection is killed (a failover, an idle-connection reaper); the lock goes with it.
        async with other.transaction() as session:
            killed = await session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objid = :k AND granted"
                ),
                {"k": _PG_RELAY_LOCK},
            )
        assert killed == 1
        for i in range(3):
            ids += await add(database, f"after {i}")
            relay.wake()
        contents = await wait_for_stream(client, len(ids))
        # It publishes as the lock's holder again, not on a reconnected session that lost the lock.
        async with other.read() as session:
            holders = await session.scalar(_LOCK_HOLDERS, {"k": _PG_RELAY_LOCK})
    finally:
        await relay.stop()
        async with other.read() as session:
            holders_after_stop = await session.scalar(_LOCK_HOLDERS, {"k": _PG_RELAY_LOCK})
        await database.dispose()
        await other.dispose()
    assert [event_id for event_id, _ in contents] == ids
    assert holders == 1
    assert holders_after_stop == 0  # a stopped relay lets the next replica lead at once


_DEAD_PEER_SETTINGS = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")


async def _dead_peer_settings(relay: OutboxRelay) -> dict[str, str]:
    """The TCP keepalives and user timeout of the relay's own lock session, read on that session (the test
    server is reached over TCP: on a Unix socket they read 0)."""
    leader = relay._leader
    assert leader is not None
    return {name: await leader.scalar(text(f"SHOW {name}")) for name in _DEAD_PEER_SETTINGS}


async def test_the_relay_lock_connection_asks_the_server_to_drop_it_within_about_a_minute_after_a_network_break(
    two_replicas: tuple[Database, Database], client: Client
) -> None:
    """The lock's connection is idle between passes. Cut off without a FIN or RST (the replica's node gone, a
    network partition), it is a session PostgreSQL keeps, the lock with it, for the kernel's default TCP
    keepalive, about two hours: no replica publishes meanwhile. The connection has the server probe it (TCP
    keepalives after 30 s idle, every 10 s, 3 unanswered), so the lock is free about a minute after the break.
    Cut off while the server was sending it rows, it is past keepalives' reach (they probe only an idle
    connection) and the server would retransmit for about 15 minutes: its TCP user timeout (60 s) drops it
    once data has gone unacknowledged that long.
    Also the session of a replica whose lock connection's backend was killed while it did not lead (a
    PostgreSQL restart or failover): its connection was reopened unseen, and took the lock with the server's
    defaults (7200 s idle)."""
    a_db, b_db = two_replicas
    a = OutboxRelay(a_db, JetStreamPublisher(client))
    b = OutboxRelay(b_db, JetStreamPublisher(client))
    try:
        await a.publish_pending()
        first_leader = await _dead_peer_settings(a)
        assert await b.publish_pending() == 0  # b does not lead, and keeps its connection for the next try
        assert b._leader is not None
        async with b._on_leader() as connection:
            b_backend = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with a_db.transaction() as session:
            assert await session.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": b_backend})
        await a.stop()  # the lock is free: b takes it on a pass that gets through
        for _ in range(3):
            with contextlib.suppress(Exception):  # the attempt on the killed session fails
                await b.publish_pending()
            if b._leading:
                break
        assert b._leading
        after_reconnect = await _dead_peer_settings(b)
    finally:
        await a.stop()
        await b.stop()
    expected = {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "60000",  # milliseconds
    }
    assert first_leader == expected
    assert after_reconnect == expected, "the lock was taken on a session without the keepalives"


AGE = "shopmesh_outbox_oldest_unpublished_age_seconds"


class FailsOnce:
    """A publish that fails once (a NATS blip: a timeout waiting for the stream's ack), then works."""

    def __init__(self, inner: JetStreamPublisher) -> None:
        self.inner = inner
        self.failed = False

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        if not self.failed:
            self.failed = True
            raise TimeoutError("nats: timeout")
        return await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


async def test_a_replica_that_lost_the_relay_lock_does_not_report_a_stuck_outbox(
    two_replicas: tuple[Database, Database], client: Client
) -> None:
    """Two replicas on PostgreSQL. The leader's pass fails once (it steps down, as designed); the other
    replica takes the lock and publishes everything. The former leader reports 0, as a replica that does not
    lead does: the age it saw would grow for ever, and the chart's alert on the maximum over replicas
    (> 60 s) fire on an empty outbox."""
    a_db, b_db = two_replicas
    a_registry, b_registry = CollectorRegistry(), CollectorRegistry()
    a = OutboxRelay(a_db, FailsOnce(JetStreamPublisher(client)), metrics=OutboxMetrics(a_registry))
    b = OutboxRelay(b_db, JetStreamPublisher(client), metrics=OutboxMetrics(b_registry))
    try:
        ids = await add(a_db, "one")
        with contextlib.suppress(TimeoutError):
            await a.publish_pending()  # a leads, its publish fails: it steps down
        assert await b.publish_pending() == 1  # b takes the lock and publishes it
        assert [event_id for event_id, _ in await stream_contents(client)] == ids
        assert await a.publish_pending() == 0  # a is not the leader any more
        assert b_registry.get_sample_value(AGE) == 0
        await asyncio.sleep(0.3)
        assert a_registry.get_sample_value(AGE) == 0, "the non-leader reports a stuck event that was published"
    finally:
        await a.stop()
        await b.stop()


LAST_PASS = "shopmesh_outbox_relay_pass_timestamp_seconds"
FAILURES = "shopmesh_outbox_relay_failures_total"


async def test_a_relay_that_stops_passing_shows_its_last_pass_falling_behind(db: Database, client: Client) -> None:
    """A relay whose every pass fails (here its database read: the outbox table is gone) publishes nothing,
    and its oldest-unpublished age keeps the value of its last good pass: 0, as it had sent everything it
    read. ShopmeshOutboxStuck stayed silent while events piled up. When it last completed a pass must show,
    from its start, and stay put through the stall."""
    registry = CollectorRegistry()
    relay = OutboxRelay(
        db, JetStreamPublisher(client), poll_interval=0.05, max_backoff=0.1, metrics=OutboxMetrics(registry)
    )

    def last_pass() -> float:
        value = registry.get_sample_value(LAST_PASS)
        assert value is not None, "no time of the last pass: a relay that never completes one shows nothing"
        return value

    def failures() -> float:
        return registry.get_sample_value(FAILURES) or 0.0

    started = last_pass()
    relay.start()
    try:
        ids = await add(db, "before")
        relay.wake()
        assert [event_id for event_id, _ in await wait_for_stream(client, 1)] == ids
        await eventually(lambda: last_pass() > started, "a pass completed")
        async with db.transaction() as session:
            await session.execute(text("ALTER TABLE chassis_outbox_events RENAME TO hidden_outbox_events"))
        await eventually(lambda: failures() >= 1, "a failed pass")
        # Passes run one after another: from the first failure on, every one fails.
        stalled, failed = last_pass(), failures()
        await eventually(lambda: failures() >= failed + 3, "three more failed passes")
        assert registry.get_sample_value(AGE) == 0, "the age gauge moved: the stall was never invisible"
        assert last_pass() == stalled, "a failing pass counted as one completed"
        async with db.transaction() as session:
            await session.execute(text("ALTER TABLE hidden_outbox_events RENAME TO chassis_outbox_events"))
        await eventually(lambda: last_pass() > stalled, "a pass completed again")
    finally:
        await relay.stop()


async def test_only_the_relay_holding_the_lock_counts_its_passes(
    two_replicas: tuple[Database, Database], client: Client
) -> None:
    """Two replicas on PostgreSQL: one holds the relay lock and publishes; the other's passes find the lock
    taken and do nothing. Counted as passes, theirs would keep the maximum over replicas fresh while the
    leader hangs with the lock held, and no alert would say that nothing leaves the outbox."""
    a_db, b_db = two_replicas
    a_registry, b_registry = CollectorRegistry(), CollectorRegistry()
    a = OutboxRelay(a_db, JetStreamPublisher(client), metrics=OutboxMetrics(a_registry))
    b = OutboxRelay(b_db, JetStreamPublisher(client), metrics=OutboxMetrics(b_registry))
    try:
        a_started, b_started = a_registry.get_sample_value(LAST_PASS), b_registry.get_sample_value(LAST_PASS)
        assert a_started is not None
        assert b_started is not None
        await add(a_db, "one")
        assert await a.publish_pending() == 1  # a leads from now on
        a_passed = a_registry.get_sample_value(LAST_PASS)
        assert a_passed is not None
        assert a_passed >= a_started
        # a hangs from here (it makes no more passes) and keeps the lock; b tries, and must not look alive.
        await add(b_db, "two")
        for _ in range(3):
            assert await b.publish_pending() == 0
        assert b_registry.get_sample_value(LAST_PASS) == b_started
        assert a_registry.get_sample_value(LAST_PASS) == a_passed
    finally:
        await a.stop()
        await b.stop()


async def test_a_publisher_declares_its_stream_again_when_nats_lost_it(client: Client, nats_srv: NatsServer) -> None:
    """NATS restarted without its JetStream store (or someone deleted the stream): the outbox's next event
    still goes out, into the stream as its publisher configures it."""
    publisher = DeferredJetStream(
        nats_srv.url, name="tests", stream="LOST", subjects=["lost.v1.>"], duplicate_window_seconds=600
    )
    ready = asyncio.Event()
    publisher.start(on_ready=ready.set)
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert await publisher.publish("lost.v1.happened", b"1", msg_id="e1", headers={})
        await client.jetstream().delete_stream("LOST")
        assert await publisher.publish("lost.v1.happened", b"2", msg_id="e2", headers={})
    finally:
        await publisher.close()
    info = await client.jetstream().stream_info("LOST")
    assert info.state.messages == 1
    assert info.config.max_age == 7 * 86400


async def test_a_relay_pass_while_nats_is_not_reached_never_logs_the_nats_urls_token(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/chassis.md: NATS_URL's "user part (`user:password@` or a token) is masked in logs". While the
    publisher has not reached NATS (away at start, or refusing a wrong token), each relay pass fails with
    DeferredJetStream's NotConnected, whose text the relay logs: it quotes NATS_URL as given."""
    await add(db, "a")
    publisher = DeferredJetStream(
        f"nats://s3cret@127.0.0.1:{free_port()}",
        name="test",
        stream="TESTS",
        subjects=["tests.v1.>"],
        duplicate_window_seconds=600,
    )  # never started: as a service whose NATS is away or refuses its token
    relay = OutboxRelay(db, publisher, poll_interval=0.05)
    caplog.set_level(logging.INFO)
    relay.start()
    try:
        await eventually(
            lambda: any("outbox relay pass failed" in r.getMessage() for r in caplog.records), "a relay pass failed"
        )
    finally:
        await relay.stop()
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in lines, lines


class LosesTheCancel:
    """Publishes through `inner`; the first publish waits until the relay is cancelled, then publishes and
    returns as if nothing happened, as nats-py's request does on Python 3.11 when the cancel lands as the
    stream's acknowledgement arrives (its `wait_for` returns the reply and drops the cancel)."""

    def __init__(self, inner: JetStreamPublisher) -> None:
        self.inner = inner
        self.held = LostCancel()

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        await self.held.hold()
        return await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


async def test_a_relay_whose_publish_loses_the_cancel_still_stops_within_its_shutdown_budget(
    db: Database, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay carried on into its next poll (ten minutes here), and its shutdown hook was cut off at the
    budget: SIGTERM exited 1."""
    ids = await add(db, "sent as the relay stops")
    publisher = LosesTheCancel(JetStreamPublisher(client))
    relay = OutboxRelay(db, publisher, poll_interval=600)
    relay.start()
    await publisher.held.asked.wait()
    # The part of the hooks' budget that relays and consumers have after the grace (config.py).
    assert await run_shutdown_hooks([relay.stop], SHUTDOWN_HOOKS_MARGIN_SECONDS) == []
    assert publisher.held.lost
    assert await stream_contents(client) == [(ids[0], "sent as the relay stops")]


WAITING = "shopmesh_outbox_unpublished_events"


class Switchable:
    """A publisher whose NATS can be switched off: while `down`, every publish fails as JetStream's timeout."""

    def __init__(self, inner: JetStreamPublisher) -> None:
        self.inner = inner
        self.down = False

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        if self.down:
            raise TimeoutError("nats: timeout")
        return await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


async def test_the_unpublished_count_follows_inserts_and_publishes_and_is_0_once_drained(
    db: Database, client: Client
) -> None:
    """The age of the oldest waiting event says how long the outbox has been stuck, not how many events wait:
    the count does, past the relay's batch too (here 3), counted by the relay's passes."""
    registry = CollectorRegistry()
    publisher = Switchable(JetStreamPublisher(client))
    relay = OutboxRelay(db, publisher, batch_size=3, metrics=OutboxMetrics(registry))

    def waiting() -> float | None:
        return registry.get_sample_value(WAITING)

    assert waiting() == 0
    publisher.down = True
    await add(db, "a", "b", "c", "d", "e")
    with pytest.raises(TimeoutError):
        await relay.publish_pending()
    assert waiting() == 5  # a full batch read, and two more behind it
    await add(db, "f", "g")
    with pytest.raises(TimeoutError):
        await relay.publish_pending()
    assert waiting() == 7
    publisher.down = False
    assert await relay.publish_pending() == 3
    assert waiting() == 4
    assert await relay.publish_pending() == 3
    assert waiting() == 1
    await add(db, "h")
    assert await relay.publish_pending() == 2  # a short batch: it held every waiting event
    assert waiting() == 0
    assert await relay.publish_pending() == 0
    assert waiting() == 0
    assert len(await stream_contents(client)) == 8


async def test_the_unpublished_count_stops_at_its_cap_and_says_at_least(
    db: Database, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog larger than the cap shows as the cap (documented as "at least"), whatever its size: the count
    reads no more of the index than that. The cap is made small here, 5, for 9 events waiting."""
    monkeypatch.setattr("shopmesh_chassis.outbox.OUTBOX_COUNT_CAP", 5)
    registry = CollectorRegistry()
    publisher = Switchable(JetStreamPublisher(client))
    publisher.down = True
    relay = OutboxRelay(db, publisher, batch_size=2, metrics=OutboxMetrics(registry))
    await add(db, *"abcdefghi")
    with pytest.raises(TimeoutError):
        await relay.publish_pending()
    assert registry.get_sample_value(WAITING) == 5
    # The gauge's min() alone would show 5 too, had the count read the whole backlog: it reads no further than
    # the cap leaves past a batch (3), of these 9 as of a million.
    async with db.read() as session:
        assert await session.scalar(relay._count_beyond, {"b_after": 0}) == 3
    publisher.down = False
    for _ in range(3):
        await relay.publish_pending()
    assert registry.get_sample_value(WAITING) == 3  # 9 - 6 sent: below the cap, counted exactly again


async def test_only_the_relay_holding_the_lock_reports_unpublished_events_on_postgresql(
    two_replicas: tuple[Database, Database], client: Client
) -> None:
    """Two replicas on PostgreSQL: the leader counts what waits (the bounded count runs on PostgreSQL too);
    the other reports 0, also once it has led and lost the lock: else the maximum over replicas would show
    events that the new leader has long published."""
    a_db, b_db = two_replicas
    a_registry, b_registry = CollectorRegistry(), CollectorRegistry()
    a_publisher = Switchable(JetStreamPublisher(client))
    a = OutboxRelay(a_db, a_publisher, batch_size=3, metrics=OutboxMetrics(a_registry))
    b = OutboxRelay(b_db, JetStreamPublisher(client), batch_size=3, metrics=OutboxMetrics(b_registry))
    try:
        await add(a_db, "first")
        assert await a.publish_pending() == 1  # a leads from now on
        assert a_registry.get_sample_value(WAITING) == 0
        await add(b_db, "a", "b", "c", "d", "e")
        assert await b.publish_pending() == 0  # the lock is a's
        assert b_registry.get_sample_value(WAITING) == 0
        a_publisher.down = True
        with pytest.raises(TimeoutError):
            await a.publish_pending()  # a counts what waits, fails, and steps down
        assert a_registry.get_sample_value(WAITING) == 5
        assert await b.publish_pending() == 3  # b takes the lock
        assert b_registry.get_sample_value(WAITING) == 2
        assert await b.publish_pending() == 2
        assert b_registry.get_sample_value(WAITING) == 0
        a_publisher.down = False
        assert await a.publish_pending() == 0  # b's lock now
        assert a_registry.get_sample_value(WAITING) == 0, "a replica that lost the lock reports what it last saw"
    finally:
        await a.stop()
        await b.stop()


async def test_a_replica_never_holds_more_postgresql_connections_than_its_pool_its_relay_lock_included(
    postgres: PostgresServer, client: Client, tmp_path: Path
) -> None:
    """DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW is all a replica takes of the server's max_connections: the
    relay's lock connection, held while it leads, comes out of the same pool (the Helm charts' budget counts
    nothing beside it), and calls still get the other connection."""
    settings = load_settings(
        PooledSettings, database_url=postgres.create_database(), database_pool_size=1, database_max_overflow=1
    )
    database = Database.from_settings(settings)
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    relay = OutboxRelay(database, JetStreamPublisher(client))
    seen: list[int] = []

    async def a_call() -> None:
        async with database.transaction() as session:
            await session.execute(text("SELECT pg_sleep(0.05)"))
            # Every backend of this database is one of the replica's: nothing else connects to it.
            seen.append(await session.scalar(_BACKENDS) or 0)

    try:
        await add(database, "one")
        assert await relay.publish_pending() == 1  # it leads, and keeps the lock's connection
        await asyncio.wait_for(asyncio.gather(*(a_call() for _ in range(6))), timeout=60)
        async with database.read() as session:
            holders = await session.scalar(_LOCK_HOLDERS, {"k": _PG_RELAY_LOCK})
    finally:
        await relay.stop()
        await database.dispose()
    assert holders == 1
    assert len(seen) == 6
    assert max(seen) <= 2, f"the replica held {max(seen)} connections with a pool of 1 + 1"


class PooledSettings(DatabaseSettings):
    service_name: ServiceName = "pooled"


_BACKENDS = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
