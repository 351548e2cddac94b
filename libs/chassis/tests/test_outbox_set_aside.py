"""An outbox event NATS refuses for good is set aside, said and counted, and the events behind it go on; an
operator re-sends or deletes it with the SQL of docs/operations.md. And the order the relay keeps on
PostgreSQL, where it is the order events were written, not the order their transactions committed."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from shopmesh_chassis.db import Database
from shopmesh_chassis.events import EVENT_TYPE, MSG_ID, JetStreamPublisher, ensure_stream, header_block_size
from shopmesh_chassis.metrics import OutboxMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.outbox import OutboxRelay, add_event
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing.nats_server import nats_server
from shopmesh_chassis.testing.postgres import PostgresServer

from .test_outbox import SUBJECT, add, client, db, stream_contents

__all__ = ["client", "db"]

# docs/operations.md, "ShopmeshOutboxEventsSetAside": what an operator runs, run here as written there.
FIND = (
    "SELECT seq, event_id, subject, length(payload) AS bytes, failed_at, error FROM chassis_outbox_events"
    " WHERE failed_at IS NOT NULL ORDER BY seq"
)
RESEND = "UPDATE chassis_outbox_events SET failed_at = NULL, error = NULL WHERE event_id = :event_id"
DISCARD = "DELETE FROM chassis_outbox_events WHERE event_id = :event_id AND failed_at IS NOT NULL"


@pytest.fixture
def small_payload_nats(tmp_path: Path) -> Iterator[str]:
    """A NATS whose max_payload is 4 KiB (an operator's setting; the default is 1 MiB)."""
    with nats_server(tmp_path / "nats-small", config="max_payload: 4096\n") as server:
        yield server.url


@pytest.fixture
async def pg(postgres: PostgresServer, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(postgres.create_database())
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    yield database
    await database.dispose()


async def set_aside_rows(database: Database) -> list[tuple[str, str]]:
    async with database.read() as session:
        rows = (await session.execute(text(FIND))).all()
    return [(row.event_id, row.error) for row in rows]


async def test_an_event_over_the_servers_max_payload_is_set_aside_and_the_events_behind_it_are_published(
    db: Database, small_payload_nats: str, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(small_payload_nats)
    try:
        await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
        [big] = await add(db, "x" * 8000)
        [small] = await add(db, "small")
        metrics = OutboxMetrics(CollectorRegistry())
        relay = OutboxRelay(db, JetStreamPublisher(nc), metrics=metrics)
        with caplog.at_level(logging.ERROR, logger="shopmesh.outbox"):
            assert await relay.publish_pending() == 1
        assert await stream_contents(nc) == [(small, "small")]
        [(event_id, error)] = await set_aside_rows(db)
        assert event_id == big
        assert "max_payload" in error
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        said = record.getMessage()
        for named in (big, SUBJECT, "google.protobuf.StringValue", "max_payload"):
            assert named in said
        assert metrics.set_aside._value.get() == 1
        assert metrics.unpublished._value.get() == 0
        assert relay.oldest_unpublished_age() == 0.0
        # Set aside for good: later passes neither try it again nor say it again, and the next event goes on.
        caplog.clear()
        [later] = await add(db, "later")
        with caplog.at_level(logging.ERROR, logger="shopmesh.outbox"):
            assert await relay.publish_pending() == 1
        assert caplog.records == []
        assert await stream_contents(nc) == [(small, "small"), (later, "later")]
        assert metrics.set_aside._value.get() == 1
    finally:
        await nc.close()


async def test_an_event_whose_headers_push_it_over_the_servers_max_payload_is_set_aside_and_the_connection_kept(
    db: Database, small_payload_nats: str
) -> None:
    """nats-py measures only the payload against max_payload; the server counts the header block too, and
    answers a message over it with -ERR and a closed connection: an outage to the relay, for ever."""
    nc = await nats.connect(small_payload_nats)
    try:
        await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
        # A StringValue of n < 16384 characters encodes to n + 3 bytes: exactly max_payload, which nats-py lets by.
        value = "x" * (nc.max_payload - 3)
        assert len(wrappers_pb2.StringValue(value=value).SerializeToString()) == nc.max_payload
        [big] = await add(db, value)
        [small] = await add(db, "small")
        relay = OutboxRelay(db, JetStreamPublisher(nc, timeout=2.0), metrics=OutboxMetrics(CollectorRegistry()))
        assert await relay.publish_pending() == 1
        assert await stream_contents(nc) == [(small, "small")]
        [(event_id, error)] = await set_aside_rows(db)
        assert event_id == big
        assert "max_payload" in error
        assert nc.is_connected
    finally:
        await nc.close()


async def test_a_message_is_refused_before_sending_only_when_payload_and_headers_exceed_max_payload(
    small_payload_nats: str,
) -> None:
    """The header block is counted as nats-py encodes it: a message exactly at max_payload goes out and is
    stored; one byte more is refused (MaxPayloadError) with the connection kept."""
    nc = await nats.connect(small_payload_nats)
    try:
        await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
        publisher = JetStreamPublisher(nc, timeout=2.0)
        headers = {
            EVENT_TYPE: "google.protobuf.StringValue",
            "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        }
        room = nc.max_payload - header_block_size({**headers, MSG_ID: "evt_fits"})
        assert not (await publisher.send(SUBJECT, b"x" * room, msg_id="evt_fits", headers=headers)).duplicate
        with pytest.raises(MaxPayloadError):
            await publisher.send(SUBJECT, b"x" * (room + 1), msg_id="evt_over", headers=headers)
        assert nc.is_connected
        stored = await nc.jetstream().get_msg("TESTS", 1)
        assert stored.headers is not None
        assert stored.headers[MSG_ID] == "evt_fits"
        assert len(stored.data or b"") == room
        assert (await nc.jetstream().stream_info("TESTS")).state.messages == 1
    finally:
        await nc.close()


async def test_an_event_the_stream_refuses_as_too_large_is_set_aside_then_resent_by_the_operators_sql(
    pg: Database, client: Client
) -> None:
    js = client.jetstream()
    config = (await js.stream_info("TESTS")).config
    await js.update_stream(dataclasses.replace(config, max_msg_size=2000))
    [big] = await add(pg, "x" * 4000)
    [small] = await add(pg, "small")
    metrics = OutboxMetrics(CollectorRegistry())
    relay = OutboxRelay(pg, JetStreamPublisher(client), metrics=metrics)
    try:
        assert await relay.publish_pending() == 1
        assert await stream_contents(client) == [(small, "small")]
        [(event_id, error)] = await set_aside_rows(pg)
        assert event_id == big
        assert "max message size" in error
        assert metrics.set_aside._value.get() == 1
        # The operator raises the limit and re-sends it: the next pass publishes it and the count falls to 0.
        await js.update_stream(dataclasses.replace(config, max_msg_size=-1))
        async with pg.transaction() as session:
            await session.execute(text(RESEND), {"event_id": big})
        assert await relay.publish_pending() == 1
        assert [value[:1] for _, value in await stream_contents(client)] == ["s", "x"]
        assert await set_aside_rows(pg) == []
        assert metrics.set_aside._value.get() == 0
    finally:
        await relay.stop()


async def test_an_event_set_aside_is_deleted_by_the_operators_sql_and_no_longer_counted(
    db: Database, client: Client
) -> None:
    js = client.jetstream()
    config = (await js.stream_info("TESTS")).config
    await js.update_stream(dataclasses.replace(config, max_msg_size=2000))
    [big] = await add(db, "x" * 4000)
    metrics = OutboxMetrics(CollectorRegistry())
    relay = OutboxRelay(db, JetStreamPublisher(client), metrics=metrics)
    assert await relay.publish_pending() == 0
    assert metrics.set_aside._value.get() == 1
    async with db.transaction() as session:
        assert (await session.execute(text(DISCARD), {"event_id": big})).rowcount == 1
    assert await relay.publish_pending() == 0
    assert metrics.set_aside._value.get() == 0
    async with db.read() as session:
        assert (await session.execute(select(outbox_events.c.event_id))).all() == []
    assert await stream_contents(client) == []


async def test_a_relay_that_cannot_reach_nats_sets_nothing_aside(db: Database, tmp_path: Path) -> None:
    """An outage is not a refusal: the pass fails, and every event waits for the next one."""
    await add(db, "a")
    with nats_server(tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        await ensure_stream(nc.jetstream(), "TESTS", ["tests.v1.>"], duplicate_window=600)
    # Stopped: the publish times out waiting for the stream's acknowledgement.
    relay = OutboxRelay(db, JetStreamPublisher(nc, timeout=0.5))
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await relay.publish_pending()
        assert await set_aside_rows(db) == []
    finally:
        await nc.close()


async def test_on_postgresql_an_event_is_published_after_every_event_committed_before_it_was_written(
    pg: Database, client: Client
) -> None:
    """The order the relay keeps (outbox.py's docstring): an event written after another transaction committed
    goes out after that one's events. Not commit order between overlapping transactions: one that took its
    seq first and commits last goes out after events written later, and nothing is lost."""
    relay = OutboxRelay(pg, JetStreamPublisher(client))
    try:
        async with pg.transaction() as slow:
            message = wrappers_pb2.StringValue(value="slow")
            await add_event(slow, subject=SUBJECT, message=message, event_id="evt_slow")
            await add(pg, "a")  # commits while `slow` is open, with a later seq
            await add(pg, "b")  # written after "a" committed: after it, whatever the relay does meanwhile
            assert await relay.publish_pending() == 2
        await add(pg, "c")
        assert await relay.publish_pending() == 2
        assert [value for _, value in await stream_contents(client)] == ["a", "b", "slow", "c"]
    finally:
        await relay.stop()
