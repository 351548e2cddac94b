"""What the event machinery keeps does not grow for ever: published outbox rows and applied event ids are
deleted past their retention (only those), and event streams drop messages past their max age."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from sqlalchemy import insert, select, update

from shopmesh_chassis.config import ConfigError, EventSettings, load_settings
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database, DbConnection, as_utc
from shopmesh_chassis.events import DeferredJetStream, ensure_stream
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.outbox import OutboxRelay, add_event, new_event_id
from shopmesh_chassis.tables import outbox_events, processed_events
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server

from .consumer_kit import HeldClock, consumer, record, scratch, until_applied, until_durable
from .nats_kit import a_month_publisher

DAY = 86400.0


@pytest.fixture
async def either_db(blank_db: Database, tmp_path: Path) -> Database:
    (tmp_path / "versions").mkdir()
    await migrate(blank_db, tmp_path / "versions")
    return blank_db


class Accepting:
    """A publisher JetStream always acknowledges."""

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        return True


def ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


async def add(db: Database, count: int) -> list[str]:
    ids = [new_event_id() for _ in range(count)]
    async with db.transaction() as session:
        for event_id in ids:
            message = wrappers_pb2.StringValue(value=event_id)
            await add_event(session, subject="tests.v1.thing_happened", message=message, event_id=event_id)
    return ids


async def age_outbox(db: Database, event_ids: list[str], *, published: datetime | None, created: datetime) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(outbox_events)
            .where(outbox_events.c.event_id.in_(event_ids))
            .values(published_at=published, created_at=created)
        )


async def outbox_ids(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.execute(select(outbox_events.c.event_id))).scalars())


async def test_the_relay_deletes_published_events_past_its_retention_and_nothing_else(either_db: Database) -> None:
    old, recent, waiting = await add(either_db, 3), await add(either_db, 1), await add(either_db, 1)
    relay = OutboxRelay(either_db, Accepting(), retention_seconds=DAY, purge_batch_size=2)
    try:
        assert await relay.publish_pending() == 5
    finally:
        await relay.stop()
    await age_outbox(either_db, old, published=ago(2), created=ago(2))
    await age_outbox(either_db, recent, published=ago(0.9), created=ago(3))
    # Never published (NATS away for a month): kept however old, the relay has yet to send it.
    await age_outbox(either_db, waiting, published=None, created=ago(30))
    assert await relay.purge_published() == 3  # two batches: a full one, then the rest
    assert await outbox_ids(either_db) == set(recent + waiting)
    assert await relay.purge_published() == 0
    # Retention 0 keeps published rows for ever.
    await age_outbox(either_db, recent, published=ago(400), created=ago(400))
    assert await OutboxRelay(either_db, Accepting(), retention_seconds=0).purge_published() == 0
    assert await outbox_ids(either_db) == set(recent + waiting)


async def remember(db: Database, rows: list[tuple[str, str, datetime]]) -> None:
    async with db.transaction() as session:
        for durable, event_id, when in rows:
            await session.execute(
                insert(processed_events).values(consumer=durable, event_id=event_id, processed_at=when)
            )


async def remembered(db: Database) -> set[tuple[str, str]]:
    async with db.read() as session:
        rows = await session.execute(select(processed_events.c.consumer, processed_events.c.event_id))
        return {(row.consumer, row.event_id) for row in rows}


async def test_a_consumer_forgets_only_its_own_event_ids_past_its_retention(
    either_db: Database, client: Client, nats_srv: NatsServer
) -> None:
    await ensure_stream(client.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)
    await remember(
        either_db,
        [
            ("tester", "e1", ago(9)),
            ("tester", "e2", ago(8.5)),
            ("tester", "e3", ago(8.1)),
            ("tester", "e4", ago(7.9)),
            # Another consumer in the same database, applying the same event: its own retention decides.
            ("other", "e1", ago(9)),
        ],
    )
    running = consumer(
        either_db,
        nats_srv.url,
        record,
        stream_max_age_seconds=7 * DAY,
        processed_retention_seconds=8 * DAY,
        purge_batch_size=2,
    )
    # Before it has reached NATS it cannot know the stream's max age, so it keeps every id.
    assert await running.purge_processed() == 0
    running.start()
    try:
        await until_durable(client)

        # Its purge runs once it has connected (in batches of two here).
        async def purged() -> bool:
            return await remembered(either_db) == {("tester", "e4"), ("other", "e1")}

        await eventually(purged, "the ids past the retention purged once the consumer connected")
        assert await running.purge_processed() == 0
    finally:
        await running.stop()


async def test_a_running_consumer_keeps_ids_by_a_max_age_raised_since_it_connected(
    either_db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """The publisher raises the max age (a consumer will be down longer): a consumer already running must
    keep its ids by it from its next purge, not only after its next reconnect."""
    js = client.jetstream()
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)
    cutoffs: list[datetime] = []

    async def purged(cutoff: datetime) -> None:
        cutoffs.append(cutoff)

    running = consumer(either_db, nats_srv.url, record, processed_retention_seconds=8 * DAY, on_purge=purged)
    running.start()
    try:
        await until_durable(client)
        # The purge run once connected (its next an hour away) first: late, under load, it would purge the ids
        # below itself, and read the max age before the raise, or after it and leave the test's purge nothing.
        await eventually(lambda: cutoffs, "the purge run at connection")
        await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=10 * DAY)
        await remember(either_db, [("tester", "old", ago(11.5)), ("tester", "kept", ago(9))])
        assert await running.purge_processed() == 1
        assert await remembered(either_db) == {("tester", "kept")}, "its event may still be on the 10-day stream"
    finally:
        await running.stop()


async def test_a_consumer_stamps_the_event_ids_it_applies_with_its_own_clock(
    either_db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """processed_at is read from the clock the purge's cutoff is measured on: the consumer's injected one."""
    clock = HeldClock()
    clock.advance(-3 * DAY)

    async def apply_nothing(session: DbConnection, event: Event) -> None:
        pass

    running = consumer(either_db, nats_srv.url, apply_nothing, clock=clock)
    running.start()
    try:
        await until_durable(client)
        await client.jetstream().publish("things.v1.happened", b"x", headers={"Nats-Msg-Id": "e1"})
        await eventually(lambda: remembered(either_db), "the event applied")
    finally:
        await running.stop()
    async with either_db.read() as session:
        stamped = (await session.execute(select(processed_events.c.processed_at))).scalar_one()
    assert as_utc(stamped) == clock.now


async def test_a_consumer_forgets_event_ids_by_its_own_clock_moved_past_the_retention(
    either_db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """The cutoff is measured on the consumer's clock: moved nine days on, its purge forgets what it applied
    more than eight days before that, at once and without a row aged by hand."""
    await ensure_stream(client.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)
    clock = HeldClock()
    started = clock.now
    await remember(either_db, [("tester", "applied", started), ("tester", "later", started + timedelta(days=2))])
    cutoffs: list[datetime] = []

    async def purged(cutoff: datetime) -> None:
        cutoffs.append(cutoff)

    running = consumer(
        either_db, nats_srv.url, record, processed_retention_seconds=8 * DAY, on_purge=purged, clock=clock
    )
    running.start()
    try:
        # The purge run once connected first (its next an hour away): it forgets nothing yet.
        await eventually(lambda: cutoffs, "the purge run at connection")
        clock.advance(9 * DAY)
        assert await running.purge_processed() == 1
        assert await remembered(either_db) == {("tester", "later")}
        assert cutoffs[-1] == started + timedelta(days=1)
    finally:
        await running.stop()


async def test_a_running_relay_and_consumer_purge_on_their_own(tmp_path: Path, nats_srv: NatsServer) -> None:
    db = Database(f"sqlite:///{tmp_path}/running.db")
    (tmp_path / "versions").mkdir()
    await migrate(db, tmp_path / "versions")
    old, recent = await add(db, 1), await add(db, 1)
    relay = OutboxRelay(db, Accepting(), poll_interval=0.05, retention_seconds=DAY, purge_interval_seconds=0.05)
    running = consumer(db, nats_srv.url, record, processed_retention_seconds=8 * DAY, purge_interval_seconds=0.05)
    relay.start()
    running.start()
    try:

        async def all_published() -> bool:
            async with db.read() as session:
                rows = await session.execute(select(outbox_events.c.seq).where(outbox_events.c.published_at.is_(None)))
                return rows.first() is None

        # Aged only once published: the relay's marking would make them young again.
        await eventually(all_published, "both events published")
        await age_outbox(db, recent, published=ago(0.5), created=ago(0.5))
        await age_outbox(db, old, published=ago(2), created=ago(2))
        await remember(db, [("tester", "old", ago(9)), ("tester", "recent", ago(1))])

        async def purged() -> bool:
            return await outbox_ids(db) == set(recent) and await remembered(db) == {("tester", "recent")}

        await eventually(purged, "the old outbox row and event id purged, the recent ones kept")
    finally:
        await running.stop()
        await relay.stop()
        await db.dispose()


@pytest.fixture
async def client(nats_srv: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_srv.url)
    yield nc
    await nc.close()


async def test_a_stream_made_without_a_max_age_gets_one_and_keeps_what_is_younger(client: Client) -> None:
    js = client.jetstream()
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600)  # as releases before made it
    await js.publish("things.v1.happened", b"x", headers={"Nats-Msg-Id": "e1"})
    assert not (await js.stream_info("THINGS")).config.max_age
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)
    info = await js.stream_info("THINGS")
    assert info.config.max_age == 7 * DAY
    assert info.state.messages == 1
    assert info.config.duplicate_window == 600


async def test_an_event_older_than_the_streams_max_age_is_dropped(client: Client) -> None:
    js = client.jetstream()
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=1, max_age=1)
    await js.publish("things.v1.happened", b"never consumed", headers={"Nats-Msg-Id": "e1"})
    assert (await js.stream_info("THINGS")).state.messages == 1

    async def dropped() -> bool:
        return (await js.stream_info("THINGS")).state.messages == 0

    await eventually(dropped, "the unconsumed event dropped past the max age")


async def test_the_publisher_sets_the_streams_max_age_and_a_consumer_keeps_ids_as_long_as_it(
    client: Client, nats_srv: NatsServer, tmp_path: Path
) -> None:
    """Consumers of other settings (or an older release) must not set a shared stream's max age back and
    forth: the publisher's holds, and a consumer keeps its event ids at least as long as the stream keeps
    their events, whatever its own retention says."""
    js = client.jetstream()

    async def max_age() -> float | None:
        try:
            return (await js.stream_info("THINGS")).config.max_age
        except NotFoundError:
            return None

    publisher = DeferredJetStream(
        nats_srv.url, name="tests", stream="THINGS", subjects=["things.v1.>"], duplicate_window_seconds=600
    )
    publisher.start()
    try:
        await eventually(lambda: _equals(max_age, 7 * DAY), "the publisher's default max age")
    finally:
        await publisher.close()
    db = Database(f"sqlite:///{tmp_path}/consumer.db")
    (tmp_path / "versions").mkdir()
    await migrate(db, tmp_path / "versions")

    async def nothing(session: DbConnection, event: Event) -> None:
        return None

    running = consumer(db, nats_srv.url, nothing, stream_max_age_seconds=2 * DAY, processed_retention_seconds=3 * DAY)
    running.start()
    try:
        await client.jetstream().publish("things.v1.happened", b"x", headers={"Nats-Msg-Id": "e1"})

        async def applied() -> bool:
            return ("tester", "e1") in await remembered(db)

        await eventually(applied, "the event applied (the consumer has read the stream's configuration)")
        assert await max_age() == 7 * DAY, "the consumer left the publisher's max age"
        await remember(db, [("tester", "old", ago(8.5)), ("tester", "kept", ago(7.5))])
        assert await running.purge_processed() == 1
        assert ("tester", "kept") in await remembered(db), "its event may still be on the 7-day stream"
    finally:
        await running.stop()
        await db.dispose()


async def _equals(read: Any, expected: float) -> bool:
    return bool(await read() == expected)


def test_event_settings_default_to_retentions_that_fit_together() -> None:
    settings = load_settings(EventSettings, service_name="svc")
    assert settings.nats_stream_max_age_seconds == 7 * DAY
    assert settings.processed_events_retention_seconds >= settings.nats_stream_max_age_seconds
    assert settings.outbox_retention_seconds > settings.nats_duplicate_window_seconds


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"processed_events_retention_seconds": 6 * DAY}, "PROCESSED_EVENTS_RETENTION_SECONDS (518400)"),
        ({"nats_stream_max_age_seconds": 0}, "PROCESSED_EVENTS_RETENTION_SECONDS (691200)"),
        ({"nats_stream_max_age_seconds": 60}, "NATS_STREAM_MAX_AGE_SECONDS (60) must be at least"),
    ],
)
def test_retentions_that_do_not_fit_together_stop_startup(overrides: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(EventSettings, service_name="svc", **overrides)


def test_event_ids_may_be_kept_for_ever_whatever_the_streams_max_age() -> None:
    for max_age in (0.0, DAY):
        settings = load_settings(
            EventSettings, service_name="svc", nats_stream_max_age_seconds=max_age, processed_events_retention_seconds=0
        )
        assert settings.processed_events_retention_seconds == 0


async def test_a_consumer_starting_keeps_the_ids_its_streams_max_age_needs_from_its_first_purge(
    client: Client, nats_srv: NatsServer, tmp_path: Path
) -> None:
    """The purge a consumer runs as it starts must not use its own max age before it has read the stream's:
    an id deleted then is gone for good, and its event, still on the stream, has a second effect if it is
    delivered again."""
    js = client.jetstream()
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)  # the publisher's
    db = Database(f"sqlite:///{tmp_path}/consumer.db")
    (tmp_path / "versions").mkdir()
    await migrate(db, tmp_path / "versions")
    await remember(db, [("tester", "five-days-old", ago(5))])

    async def nothing(session: DbConnection, event: Event) -> None:
        return None

    running = consumer(db, nats_srv.url, nothing, stream_max_age_seconds=2 * DAY, processed_retention_seconds=3 * DAY)
    running.start()
    try:
        await js.publish("things.v1.happened", b"x", headers={"Nats-Msg-Id": "e1"})

        async def applied() -> bool:
            return ("tester", "e1") in await remembered(db)

        await eventually(applied, "the event applied (the consumer has read the stream's configuration)")
        assert ("tester", "five-days-old") in await remembered(db), "its event may still be on the 7-day stream"
    finally:
        await running.stop()
        await db.dispose()


async def test_a_starting_consumer_purges_once_it_has_read_the_streams_max_age_not_an_interval_later(
    either_db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """The purge's first run comes at start, before the consumer has connected: it now skips (the max age is
    unread) and the next run is EVENT_PURGE_INTERVAL_SECONDS (an hour) away. A consumer that restarts more
    often than that (deploys, autoscaling, a crash loop) never purges, and its processed ids grow for ever;
    before the change its start purged at once."""
    await ensure_stream(client.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY)
    await remember(either_db, [("tester", "old", ago(30)), ("tester", "recent", ago(1))])
    running = consumer(either_db, nats_srv.url, record, processed_retention_seconds=8 * DAY)  # interval 3600 s
    running.start()
    try:
        await until_durable(client)

        async def purged() -> bool:
            return await remembered(either_db) == {("tester", "recent")}

        await eventually(purged, "the 30-day-old id purged soon after the consumer connected")
    finally:
        await running.stop()


async def test_a_stream_nats_lost_with_its_store_gets_the_publishers_max_age_back_not_a_consumers(
    tmp_path: Path,
) -> None:
    """NATS restarted without its JetStream store, publisher and consumer running throughout. The operator
    raised the stream's max age on the publisher (docs: "Raising the max age ... is the publisher's
    setting"); the consumer keeps the default. The consumer reconnects first and creates the missing stream
    with its own max age, and the publisher's next publish finds a stream there and never declares it again:
    "the publisher's value holds" no longer does until the publisher restarts, and events older than the
    consumer's 7 days are dropped though 30 were configured."""
    db = Database(f"sqlite:///{tmp_path}/consumer.db")
    (tmp_path / "versions").mkdir()
    await migrate(db, tmp_path / "versions")
    async with db.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    store = tmp_path / "nats"
    with nats_server(store) as first:
        port, url = first.port, first.url
        publisher = await a_month_publisher(url)
        running = consumer(db, url, record)  # the default max age: 7 days
        running.start()
        await publisher.publish("things.v1.happened", b"x", msg_id="e1", headers={})
        await until_applied(db, Counter({"e1": 1}))
    shutil.rmtree(store)  # the store is lost
    with nats_server(store, port=port):
        try:
            await asyncio.sleep(2)  # both reconnect
            await publisher.publish("things.v1.happened", b"x", msg_id="e2", headers={})
            await until_applied(db, Counter({"e1": 1, "e2": 1}))
            client = await nats.connect(url)
            try:
                max_age = (await client.jetstream().stream_info("THINGS")).config.max_age
            finally:
                await client.close()
        finally:
            await running.stop()
            await publisher.close()
            await db.dispose()
    assert max_age == 30 * DAY, f"the stream keeps events {max_age / DAY:g} days, its publisher says 30"


async def test_a_stream_deleted_and_created_by_a_consumer_while_the_publisher_stays_connected_gets_its_max_age_back(
    client: Client, nats_srv: NatsServer
) -> None:
    """No reconnect to tell the publisher: the stream is deleted (`nats stream rm`) and a consumer creates it
    again with its own max age before the next publish. The publisher sees its stream's sequence start over."""
    js = client.jetstream()
    publisher = await a_month_publisher(nats_srv.url)
    try:
        await publisher.publish("things.v1.happened", b"x", msg_id="e1", headers={})
        await publisher.publish("things.v1.happened", b"x", msg_id="e2", headers={})
        await js.delete_stream("THINGS")
        # As a consumer creates a missing stream: its own max age, never an update.
        await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * DAY, update=False)
        await publisher.publish("things.v1.happened", b"x", msg_id="e3", headers={})

        async def max_age() -> float:
            return float((await js.stream_info("THINGS")).config.max_age or 0)

        await eventually(lambda: _equals(max_age, 30 * DAY), "the publisher's max age back on the new stream")
    finally:
        await publisher.close()
