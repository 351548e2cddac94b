"""A size limit an operator set on an events stream by hand (`nats stream edit --max-msgs`) refuses new events
once the stream is full; it never drops events a durable consumer has not read yet."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, StreamConfig, StreamInfo, StreamSource
from nats.js.errors import ServiceUnavailableError
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from shopmesh_chassis import events
from shopmesh_chassis.db import Database
from shopmesh_chassis.metrics import EventMetrics, OutboxMetrics
from shopmesh_chassis.outbox import OutboxRelay, add_event
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer

from .consumer_kit import applied, client, consumer, db, publish, record, until_applied, until_durable
from .nats_kit import a_month_publisher

__all__ = ["client", "db"]  # fixtures


async def set_max_msgs(client: Client, max_msgs: int) -> None:
    """What `nats stream edit THINGS --max-msgs N` does: the rest of the stream as it is."""
    js = client.jetstream()
    found = (await js.stream_info("THINGS")).config
    await js.update_stream(dataclasses.replace(found, max_msgs=max_msgs))


async def unpublished(db: Database) -> list[str]:
    async with db.read() as session:
        query = select(outbox_events.c.event_id).where(outbox_events.c.published_at.is_(None))
        return list((await session.execute(query.order_by(outbox_events.c.seq))).scalars())


async def durable_created_then_stopped(db: Database, nats_srv: NatsServer) -> None:
    """The consumer's durable exists; then its service is down."""
    stopped = consumer(db, nats_srv.url, record)
    stopped.start()
    client = await nats.connect(nats_srv.url)
    try:
        await until_durable(client)
    finally:
        await client.close()
        await stopped.stop()


async def test_a_full_stream_keeps_the_events_its_stopped_consumer_has_not_read(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Under JetStream's default discard policy (old), the stream made room for e4 and e5 by deleting e1 and
    e2, which the stopped consumer had not read: its confirmation e-mails were never sent, and the relay had
    marked them published."""
    caplog.set_level(logging.WARNING, logger="shopmesh.events")
    await set_max_msgs(client, 3)
    await durable_created_then_stopped(db, nats_srv)

    publisher = await a_month_publisher(nats_srv.url)
    try:
        relay = OutboxRelay(db, publisher)
        for i in range(1, 6):
            async with db.transaction() as session:
                message = wrappers_pb2.StringValue(value=str(i))
                await add_event(session, subject="things.v1.happened", message=message, event_id=f"e{i}")
        # The full stream refuses e4 (503 "maximum messages exceeded"): the relay's next pass tries it again.
        with contextlib.suppress(ServiceUnavailableError):
            await relay.publish_pending()

        running = consumer(db, nats_srv.url, record)
        running.start()
        try:

            async def three_applied() -> Counter[str]:
                got = await applied(db)
                return got if got.total() >= 3 else Counter()

            got = await eventually(three_applied, "three events applied")
            assert got == Counter({"e1": 1, "e2": 1, "e3": 1}), "events e1, e2 lost without a word"
            assert await unpublished(db) == ["e4", "e5"], "the events the full stream refused wait in the outbox"

            await set_max_msgs(client, 10)  # the operator, told by ShopmeshOutboxStuck
            await relay.publish_pending()
            await until_applied(db, Counter({f"e{i}": 1 for i in range(1, 6)}))
        finally:
            await running.stop()
    finally:
        await publisher.close()
    said = [r.getMessage() for r in caplog.records if r.name == "shopmesh.events" and r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert "NATS stream THINGS: discard policy changed from old to new" in said[0]
    assert "max_msgs 3" in said[0], "the limit is kept, and said"


async def test_a_size_limit_set_on_the_running_stream_under_discard_old_is_made_discard_new_by_its_publisher(
    client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nats stream edit THINGS --max-msgs 3` on a running stream keeps discard old: the publisher made the stream
    discard new only when it declared it again (its start, a reconnect), so a full stream deleted unread events
    in between, the relay having marked them published."""
    caplog.set_level(logging.WARNING, logger="shopmesh.events")
    monkeypatch.setattr(events, "DISCARD_CHECK_SECONDS", 0.2)
    publisher = await a_month_publisher(nats_srv.url)
    try:
        await set_max_msgs(client, 3)  # the operator, with the publisher running
        js = client.jetstream()

        async def discard_new() -> bool:
            return (await js.stream_info("THINGS")).config.discard == DiscardPolicy.NEW

        await eventually(discard_new, "the stream made discard new by its publisher")
        assert (await js.stream_info("THINGS")).config.max_msgs == 3, "the operator's limit is kept"
    finally:
        await publisher.close()
    said = [r.getMessage() for r in caplog.records if r.name == "shopmesh.events" and r.levelno == logging.WARNING]
    assert len(said) == 1, said
    assert "NATS stream THINGS: discard policy changed from old to new" in said[0]


class EditedWithTheWrite:
    """A JetStream context on which the operator's `edit` lands with the publisher's write, before the server
    answers it: the answer is the configuration with the edit."""

    def __init__(self, js: JetStreamContext, edit: Callable[[], Awaitable[None]]) -> None:
        self._js = js
        self._edit = edit

    async def stream_info(self, name: str) -> StreamInfo:
        return await self._js.stream_info(name)

    async def update_stream(self, config: StreamConfig) -> StreamInfo:
        await self._js.update_stream(config)
        await self._edit()
        return await self._js.stream_info(config.name or "")


async def test_the_publishers_discard_check_warns_when_the_stream_answers_with_a_configuration_other_than_it_read(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The check writes back the whole configuration it read (JetStream has no conditional update), so an
    operator's edit made at the same time may be lost: it said only that it changed the discard policy, though
    the server's answer showed another limit (here raised from 3 to 10) than the one read."""
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    await set_max_msgs(client, 3)
    js = client.jetstream()
    meanwhile = EditedWithTheWrite(js, lambda: set_max_msgs(client, 10))

    assert await events.keep_unread_messages(meanwhile, "THINGS")  # type: ignore[arg-type]

    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shopmesh.events"]
    assert any(level == logging.INFO and "wrote" in line and "'max_msgs': 3" in line for level, line in said), said
    [edited] = [line for level, line in said if level == logging.WARNING and "may have been overwritten" in line]
    assert "differs from the one read just before in max_msgs:" in edited


async def test_a_consumer_counts_and_says_the_events_its_stream_deleted_before_it_acknowledged_them(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A full stream under discard old (a limit set live, before its publisher's check) deleted e1 and e2, which
    the stopped consumer had not read: nothing counted or said it, and on-call learnt of it from customers."""
    await durable_created_then_stopped(db, nats_srv)
    await set_max_msgs(client, 3)  # discard old, no publisher running to change it
    for i in range(1, 6):
        await publish(client, f"e{i}")
    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, record, metrics=EventMetrics(registry))
    running.start()
    try:
        await until_applied(db, Counter({"e3": 1, "e4": 1, "e5": 1}))

        def lost() -> float | None:
            return registry.get_sample_value("shopmesh_events_lost_total", {"stream": "THINGS", "consumer": "tester"})

        assert lost() == 2
    finally:
        await running.stop()
    [said] = [r.getMessage() for r in caplog.records if r.name == "shopmesh.consumer" and r.levelno == logging.ERROR]
    assert "consumer tester lost 2 event(s) of stream THINGS: sequences 1 to 2" in said


async def test_a_message_this_replica_handles_when_its_stream_deletes_it_is_not_counted_lost_one_awaiting_redelivery_is(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The backlog poll read the durable's state, then the max age deleted e1..e3 while e2 was in this replica's
    handler's hands (delivered, not acknowledged): e2 is not lost. e1 was handed back (a NAK) and waits for a
    redelivery that will never come: lost. The count left out as many deleted messages as the durable had
    pending, e1 among them, and so hid its loss, for good."""
    await durable_created_then_stopped(db, nats_srv)
    js = client.jetstream()

    async def no_pull_left() -> bool:  # the stopped consumer's last pull request would take a message, unread
        return (await js.consumer_info("THINGS", "tester")).num_waiting == 0

    await eventually(no_pull_left, "the stopped consumer's pull request expired")
    for i in range(1, 4):
        await publish(client, f"e{i}")
    handler = await js.pull_subscribe_bind("tester", "THINGS")
    [handed_back] = await handler.fetch(1)
    await handed_back.nak(delay=600)
    [in_hand] = await handler.fetch(1)
    assert in_hand.metadata.sequence.stream == 2
    registry = CollectorRegistry()
    polling = consumer(db, nats_srv.url, record, metrics=EventMetrics(registry))
    polling._gauges.hold([in_hand])
    read_before = await js.consumer_info("THINGS", "tester")  # what the poll read, just before the deletion
    assert read_before.num_ack_pending == 2
    found = (await js.stream_info("THINGS")).config
    await js.update_stream(dataclasses.replace(found, max_age=1.0, duplicate_window=1.0))

    async def all_deleted() -> bool:
        return (await js.stream_info("THINGS")).state.first_seq == 4

    await eventually(all_deleted, "e1..e3 past the max age")
    await polling._gauges.look_for_lost(js, read_before)
    await in_hand.ack()

    lost = registry.get_sample_value("shopmesh_events_lost_total", {"stream": "THINGS", "consumer": "tester"})
    assert lost == 2, "e1, awaiting a redelivery, and e3, never delivered; not e2, being handled"
    [said] = [r.getMessage() for r in caplog.records if r.name == "shopmesh.consumer" and r.levelno == logging.ERROR]
    assert "consumer tester lost 2 event(s) of stream THINGS: sequences 1 to 3" in said
    assert "(1 of them, delivered and being handled, not counted)" in said


async def test_a_caught_up_consumer_of_a_stream_listing_no_subjects_does_not_count_others_deleted_messages(
    db: Database, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror lists no subjects: its durable's filter looked to cover all of them (every one of none), so
    while caught up the deleted messages of the subjects it does not read counted as its loss, and paged."""
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="MIRROR", mirror=StreamSource(name="THINGS")))
    await publish(client, "e1")
    for _ in range(2):
        await js.publish("things.v1.other", b"x")

    async def mirrored() -> bool:
        return (await js.stream_info("MIRROR")).state.last_seq == 3

    await eventually(mirrored, "the mirror holding seqs 1..3")
    reading = ConsumerConfig(durable_name="tester", ack_policy=AckPolicy.EXPLICIT, filter_subject="things.v1.happened")
    await js.add_consumer("MIRROR", reading)
    [e1] = await (await js.pull_subscribe_bind("tester", "MIRROR")).fetch(1)
    await e1.ack_sync()
    found = (await js.stream_info("MIRROR")).config
    await js.update_stream(dataclasses.replace(found, max_msgs=1))  # discard old: deletes seqs 1 and 2

    registry = CollectorRegistry()
    looking = consumer(db, "nats://unused", record, stream="MIRROR", metrics=EventMetrics(registry))
    await looking._gauges.look_for_lost(js)

    lost = registry.get_sample_value("shopmesh_events_lost_total", {"stream": "MIRROR", "consumer": "tester"})
    assert not lost, "seq 2 was a things.v1.other message, which this durable never reads"
    assert not [r for r in caplog.records if r.name == "shopmesh.consumer" and r.levelno == logging.ERROR]


async def test_a_caught_up_consumer_does_not_count_as_its_own_the_deleted_messages_of_a_subject_its_stream_gained(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer judged whether its filter covered the whole stream by the subjects it was configured with,
    not the stream's own: a subject the stream gained since (a newer publisher, an operator's edit) looked
    covered, and its messages, which the consumer never reads, counted as its loss when deleted, and paged."""
    before = consumer(db, nats_srv.url, record, subjects=("things.v1.>",))
    before.start()
    try:
        await publish(client, "e1")
        await until_applied(db, Counter({"e1": 1}))
    finally:
        await before.stop()
    js = client.jetstream()
    found = (await js.stream_info("THINGS")).config
    await js.update_stream(dataclasses.replace(found, subjects=["things.v1.>", "things.v2.>"], max_msgs=3))
    for _ in range(5):
        await js.publish("things.v2.happened", b"x")  # seqs 2..6: the stream keeps 4..6

    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, record, subjects=("things.v1.>",), metrics=EventMetrics(registry))
    running.start()
    try:

        async def pulling() -> bool:  # past its look for lost messages, which comes before its first fetch
            return (await js.consumer_info("THINGS", "tester")).num_waiting > 0

        await eventually(pulling, "the consumer pulling")
    finally:
        await running.stop()
    lost = registry.get_sample_value("shopmesh_events_lost_total", {"stream": "THINGS", "consumer": "tester"})
    assert lost == 0, "seqs 2 and 3 were things.v2 events, which this consumer never reads"
    assert not [r for r in caplog.records if r.name == "shopmesh.consumer" and r.levelno == logging.ERROR]


async def test_a_stream_full_of_acknowledged_messages_is_said_and_shown_apart_from_other_relay_failures(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Under LIMITS retention messages every consumer acknowledged count toward max_msgs until they age out: the
    stream refused e3 though the consumer had applied e1 and e2, and the relay's log and metrics said only that
    a pass failed, as for NATS being down."""
    js = client.jetstream()
    found = (await js.stream_info("THINGS")).config
    # `nats stream edit --discard new THINGS --max-msgs 2`
    await js.update_stream(dataclasses.replace(found, max_msgs=2, discard=DiscardPolicy.NEW))
    registry = CollectorRegistry()
    publisher = await a_month_publisher(nats_srv.url)
    relay = OutboxRelay(db, publisher, metrics=OutboxMetrics(registry))
    running = consumer(db, nats_srv.url, record)
    running.start()
    relay.start()
    try:

        async def add(event_id: str) -> None:
            async with db.transaction() as session:
                await add_event(
                    session, subject="things.v1.happened", message=wrappers_pb2.StringValue(), event_id=event_id
                )
            relay.wake()

        await add("e1")
        await add("e2")
        await until_applied(db, Counter({"e1": 1, "e2": 1}))
        await add("e3")

        async def full() -> bool:
            return registry.get_sample_value("shopmesh_outbox_stream_full") == 1

        await eventually(full, "the relay showing the stream full")
    finally:
        await relay.stop()
        await running.stop()
        await publisher.close()
    said = [r.getMessage() for r in caplog.records if r.name == "shopmesh.outbox" and r.levelno == logging.ERROR]
    [line] = said
    assert "the NATS stream is full (maximum messages exceeded)" in line
    assert await unpublished(db) == ["e3"]
