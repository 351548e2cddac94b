"""Traces across the event path: a trace goes on from the transaction that wrote an event, through its create
span, into the consumer's CONSUMER span; the relay's send span, a trace of its own, links to the create span and
says how long the event waited and how its publish ended; the consume span tells a failed handling from a
successful one."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from nats.errors import ConnectionClosedError
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import update

from shopmesh_chassis import consumer as consumer_module
from shopmesh_chassis import outbox as outbox_module
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.deadletters import DeadLetters
from shopmesh_chassis.events import JetStreamPublisher
from shopmesh_chassis.logs import TraceContextFilter
from shopmesh_chassis.outbox import OutboxRelay, add_event, new_event_id
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer
from shopmesh_chassis.tracing import sampler

from .consumer_kit import client, consumer, db, record, until_applied

__all__ = ["client", "db"]  # fixtures, used by name

SUBJECT = "things.v1.happened"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of the consumer and of the outbox recorded in memory (the process-wide provider is whichever a test
    set first), sampled as a service samples them."""
    recorded = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    monkeypatch.setattr(consumer_module, "tracer", provider.get_tracer("shopmesh.consumer"))
    monkeypatch.setattr(outbox_module, "tracer", provider.get_tracer("shopmesh.outbox"))
    yield recorded
    provider.shutdown()


def consume_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]


def spans_of(exporter: InMemorySpanExporter, kind: trace.SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def messaging(span: ReadableSpan) -> dict[str, object]:
    attributes = dict(span.attributes or {})
    return {name: value for name, value in attributes.items() if name.startswith("messaging.")}


async def write_event(db: Database, message: wrappers_pb2.StringValue | None = None) -> tuple[str, ReadableSpan]:
    """An event written in a transaction within a server span of its own; its id and that span."""
    tracer = TracerProvider().get_tracer("test")
    event_id = new_event_id()
    with tracer.start_as_current_span("rpc", kind=trace.SpanKind.SERVER) as rpc:
        async with db.transaction() as session:
            await add_event(
                session, subject=SUBJECT, message=message or wrappers_pb2.StringValue(value="x"), event_id=event_id
            )
    assert isinstance(rpc, ReadableSpan)
    return event_id, rpc


async def consumed_event(db: Database, client: Client, nats_srv: NatsServer) -> tuple[str, ReadableSpan]:
    """An event written (as write_event), sent by the relay and applied by a consumer; its id and its writer's span."""
    event_id, rpc = await write_event(db)
    await OutboxRelay(db, JetStreamPublisher(client)).publish_pending()
    running = consumer(db, nats_srv.url, record)
    running.start()
    try:
        await until_applied(db, Counter({event_id: 1}))
    finally:
        await running.stop()
    return event_id, rpc


async def test_an_event_is_created_in_a_producer_span_of_the_writers_trace_with_its_messaging_attributes(
    db: Database, exporter: InMemorySpanExporter
) -> None:
    event_id, rpc = await write_event(db)
    [create] = spans_of(exporter, trace.SpanKind.PRODUCER)
    assert create.name == f"create {SUBJECT}"
    assert create.parent is not None
    assert create.parent.span_id == rpc.context.span_id
    assert create.context.trace_id == rpc.context.trace_id
    assert messaging(create) == {
        "messaging.system": "nats",
        "messaging.destination.name": SUBJECT,
        "messaging.message.id": event_id,
        "messaging.operation.type": "create",
        "messaging.operation.name": "create",
    }


async def test_an_event_is_consumed_in_a_child_of_its_create_span(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    _, rpc = await consumed_event(db, client, nats_srv)
    [create] = spans_of(exporter, trace.SpanKind.PRODUCER)
    [span] = consume_spans(exporter)
    assert span.parent is not None
    assert span.parent.span_id == create.context.span_id
    assert span.context.trace_id == rpc.context.trace_id


async def test_the_create_send_and_consume_spans_of_an_event_name_it_alike(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    """What ties an event's consume span to its send trace, whose trace it is not in: the same system,
    destination and message id on all three."""
    event_id, _ = await consumed_event(db, client, nats_srv)
    [create] = spans_of(exporter, trace.SpanKind.PRODUCER)
    [send] = spans_of(exporter, trace.SpanKind.CLIENT)
    [consume] = consume_spans(exporter)
    named = {"messaging.system": "nats", "messaging.destination.name": SUBJECT, "messaging.message.id": event_id}
    for span in (create, send, consume):
        assert {name: messaging(span).get(name) for name in named} == named, span.name
    assert messaging(consume)["messaging.consumer.group.name"] == "tester"


async def test_a_consume_span_carries_the_messaging_attributes_of_a_process_operation(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    """OpenTelemetry's messaging conventions, as the create and send spans follow them: a backend groups and
    names a delivery's span by its operation (type process: the handler applies a delivered message)."""
    event_id, _ = await consumed_event(db, client, nats_srv)
    [consume] = consume_spans(exporter)
    assert messaging(consume) == {
        "messaging.system": "nats",
        "messaging.destination.name": SUBJECT,
        "messaging.message.id": event_id,
        "messaging.consumer.group.name": "tester",
        "messaging.operation.type": "process",
        "messaging.operation.name": "consume",
    }


async def test_the_relay_sends_each_event_in_a_trace_of_its_own_linked_to_its_create_span(
    db: Database, client: Client, exporter: InMemorySpanExporter
) -> None:
    first, rpc = await write_event(db)
    second, _ = await write_event(db)
    assert await OutboxRelay(db, JetStreamPublisher(client)).publish_pending() == 2
    creates = {span.attributes["messaging.message.id"]: span for span in spans_of(exporter, trace.SpanKind.PRODUCER)}
    sends = spans_of(exporter, trace.SpanKind.CLIENT)
    assert [span.name for span in sends] == [f"send {SUBJECT}"] * 2
    for send, event_id in zip(sends, (first, second), strict=True):
        assert send.parent is None
        assert send.context.trace_id != rpc.context.trace_id
        assert [link.context.span_id for link in send.links] == [creates[event_id].context.span_id]
        assert messaging(send) == {
            "messaging.system": "nats",
            "messaging.destination.name": SUBJECT,
            "messaging.message.id": event_id,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.body.size": len(wrappers_pb2.StringValue(value="x").SerializeToString()),
        }
        assert send.attributes["shopmesh.outcome"] == "published"
        assert send.status.status_code is trace.StatusCode.UNSET


async def test_a_send_span_says_how_long_its_event_waited_in_the_outbox(
    db: Database, client: Client, exporter: InMemorySpanExporter
) -> None:
    await write_event(db)
    # As after an hour with NATS away: the event was written an hour before the relay could send it.
    async with db.transaction() as session:
        await session.execute(update(outbox_events).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
    await OutboxRelay(db, JetStreamPublisher(client)).publish_pending()
    [send] = spans_of(exporter, trace.SpanKind.CLIENT)
    assert 3600 <= send.attributes["shopmesh.outbox.wait_seconds"] < 7200


async def test_a_send_span_of_an_event_jetstream_already_had_says_it_was_a_duplicate(
    db: Database, client: Client, exporter: InMemorySpanExporter
) -> None:
    event_id, _ = await write_event(db)
    # As after a relay killed between publishing and marking the event published.
    await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": event_id})
    await OutboxRelay(db, JetStreamPublisher(client)).publish_pending()
    [send] = spans_of(exporter, trace.SpanKind.CLIENT)
    assert send.attributes["shopmesh.outcome"] == "duplicate"
    assert send.status.status_code is trace.StatusCode.UNSET


async def test_an_event_nats_refuses_for_good_is_an_error_send_span_that_says_it_was_set_aside(
    db: Database, client: Client, exporter: InMemorySpanExporter
) -> None:
    # Over the server's max_payload (1 MiB by default): nats-py refuses it before sending, for good.
    big, _ = await write_event(db, wrappers_pb2.StringValue(value="x" * (client.max_payload + 1)))
    small, _ = await write_event(db)
    assert await OutboxRelay(db, JetStreamPublisher(client)).publish_pending() == 1
    refused, sent = spans_of(exporter, trace.SpanKind.CLIENT)
    assert refused.attributes["messaging.message.id"] == big
    assert refused.attributes["shopmesh.outcome"] == "set_aside"
    assert refused.attributes["error.type"] == "nats.errors.MaxPayloadError"
    assert refused.status.status_code is trace.StatusCode.ERROR
    assert "max_payload" in (refused.status.description or "")
    assert [e.name for e in refused.events] == ["exception"]
    assert refused.links, "linked to its create span, set aside or not"
    assert sent.attributes["messaging.message.id"] == small
    assert sent.attributes["shopmesh.outcome"] == "published"


async def test_a_publish_that_fails_for_now_is_an_error_send_span_and_the_event_waits(
    db: Database, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    event_id, _ = await write_event(db)
    gone = await nats.connect(nats_srv.url)
    await gone.close()  # as NATS away: the publish raises, and the event waits for the next pass
    with pytest.raises(ConnectionClosedError):
        await OutboxRelay(db, JetStreamPublisher(gone)).publish_pending()
    [send] = spans_of(exporter, trace.SpanKind.CLIENT)
    assert send.attributes["messaging.message.id"] == event_id
    assert send.attributes["shopmesh.outcome"] == "failed"
    assert send.status.status_code is trace.StatusCode.ERROR
    assert send.attributes["error.type"] == "nats.errors.ConnectionClosedError"
    assert [e.name for e in send.events] == ["exception"]


@pytest.mark.parametrize(
    "traceparent", ["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-abc-def-01", "ff-" + "1" * 32]
)
async def test_an_event_with_a_malformed_traceparent_is_applied_in_a_trace_of_its_own(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter, traceparent: str
) -> None:
    await client.jetstream().publish(
        SUBJECT, b"x", headers={"Nats-Msg-Id": "e1", "traceparent": traceparent, "tracestate": "=,=;"}
    )
    running = consumer(db, nats_srv.url, record)
    running.start()
    try:
        await until_applied(db, Counter({"e1": 1}))
    finally:
        await running.stop()
    [span] = consume_spans(exporter)
    assert span.parent is None


async def test_a_failed_handling_is_an_error_span_with_the_exception_recorded(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    async def broken(session: DbConnection, event: Event) -> None:
        raise RuntimeError("the handler broke")

    await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": "e1"})
    running = consumer(db, nats_srv.url, broken, max_attempts=1)
    running.start()
    try:
        await eventually(lambda: bool(consume_spans(exporter)), "the failed delivery's span ended")
    finally:
        await running.stop()
    span = consume_spans(exporter)[0]
    assert span.status.status_code is trace.StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in span.events if e.name == "exception" and e.attributes] == [
        "RuntimeError"
    ]


def delivery_of(span: ReadableSpan) -> dict[str, object]:
    """What a consume span says of its delivery: where from, which one, and how it ended."""
    names = ("messaging.system", "messaging.destination.name", "messaging.consumer.group.name")
    attributes = dict(span.attributes or {})
    return {name: attributes.get(name) for name in (*names, "shopmesh.attempt", "shopmesh.outcome")}


def delivered(attempt: int, outcome: str) -> dict[str, object]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": SUBJECT,
        "messaging.consumer.group.name": "tester",
        "shopmesh.attempt": attempt,
        "shopmesh.outcome": outcome,
    }


async def test_a_redelivery_span_says_its_attempt_and_each_delivery_span_its_outcome(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    failures = 1

    async def broken_once(session: DbConnection, event: Event) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("the handler broke")
        await record(session, event)

    await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": "e1"})
    running = consumer(db, nats_srv.url, broken_once, max_attempts=3)
    running.start()
    try:
        await until_applied(db, Counter({"e1": 1}))
        await eventually(lambda: len(consume_spans(exporter)) == 2, "the second delivery's span ended")
    finally:
        await running.stop()
    assert [delivery_of(span) for span in consume_spans(exporter)] == [delivered(1, "retried"), delivered(2, "applied")]


async def test_the_span_of_a_parked_event_and_of_a_duplicate_say_so(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    async def broken_for_e2(session: DbConnection, event: Event) -> None:
        if event.event_id == "e2":
            raise RuntimeError("the handler broke")
        await record(session, event)

    running = consumer(db, nats_srv.url, broken_for_e2, max_attempts=1)
    # As after a crash between the commit and the ack: e1 was applied, and arrives again.
    assert await running._apply(Event("e1", SUBJECT, b"x", {"Nats-Msg-Id": "e1"}, attempt=1))
    for event_id in ("e1", "e2"):
        await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": event_id})
    running.start()
    try:
        await eventually(lambda: len(consume_spans(exporter)) == 2, "both deliveries' spans ended")
    finally:
        await running.stop()
    assert [delivery_of(span) for span in consume_spans(exporter)] == [
        delivered(1, "duplicate"),
        delivered(1, "dead_lettered"),
    ]


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# The W3C context the events below carry, and the trace id their consumer's log lines must show.
TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
TRACE_ID = "ab" * 16


@pytest.fixture
def consumer_lines(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The consumer's log records at INFO and above, each with the trace and span ids a JSON line shows."""
    capture = Recorded()
    capture.addFilter(TraceContextFilter("tester"))
    logger = logging.getLogger("shopmesh.consumer")
    logger.addHandler(capture)
    caplog.set_level(logging.INFO, logger="shopmesh.consumer")
    try:
        yield capture.records
    finally:
        logger.removeHandler(capture)


async def test_the_log_line_of_a_duplicate_event_carries_the_events_trace_id(
    db: Database,
    client: Client,
    nats_srv: NatsServer,
    exporter: InMemorySpanExporter,
    consumer_lines: list[logging.LogRecord],
) -> None:
    running = consumer(db, nats_srv.url, record)
    # As after a crash between the commit and the ack: the event was applied, and arrives again.
    assert await running._apply(Event("e1", SUBJECT, b"x", {"Nats-Msg-Id": "e1"}, attempt=1))
    await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": "e1", "traceparent": TRACEPARENT})
    running.start()
    try:
        await eventually(
            lambda: [r for r in consumer_lines if "already processed" in r.getMessage()], "the duplicate logged"
        )
    finally:
        await running.stop()
    [line] = [r for r in consumer_lines if "already processed" in r.getMessage()]
    assert line.trace_id == TRACE_ID  # type: ignore[attr-defined]


async def test_the_log_line_of_a_replayed_dead_letter_carries_the_events_trace_id(
    db: Database,
    client: Client,
    nats_srv: NatsServer,
    exporter: InMemorySpanExporter,
    consumer_lines: list[logging.LogRecord],
) -> None:
    fixed = False

    async def broken_until_fixed(session: DbConnection, event: Event) -> None:
        if not fixed:
            raise RuntimeError("the handler broke")
        await record(session, event)

    await client.jetstream().publish(SUBJECT, b"x", headers={"Nats-Msg-Id": "e1", "traceparent": TRACEPARENT})
    running = consumer(db, nats_srv.url, broken_until_fixed, max_attempts=1)
    running.start()
    try:
        letters = DeadLetters(client.jetstream())
        [letter] = await eventually(letters.list, "the event parked")
        fixed = True
        await letters.replay(letter.sequence)
        await until_applied(db, Counter({"e1": 1}))
    finally:
        await running.stop()
    [line] = [r for r in consumer_lines if r.getMessage().startswith("replaying event e1")]
    assert line.trace_id == TRACE_ID  # type: ignore[attr-defined]


async def test_the_log_line_of_an_event_set_aside_carries_its_send_spans_trace_id(
    db: Database, client: Client, exporter: InMemorySpanExporter
) -> None:
    capture = Recorded()
    capture.addFilter(TraceContextFilter("tester"))
    logger = logging.getLogger("shopmesh.outbox")
    logger.addHandler(capture)
    try:
        await write_event(db, wrappers_pb2.StringValue(value="x" * (client.max_payload + 1)))
        await OutboxRelay(db, JetStreamPublisher(client)).publish_pending()
    finally:
        logger.removeHandler(capture)
    [send] = spans_of(exporter, trace.SpanKind.CLIENT)
    [line] = [r for r in capture.records if "set aside" in r.getMessage()]
    # The send's trace, whose link leads to the trace that wrote the event.
    assert line.trace_id == format(send.context.trace_id, "032x")  # type: ignore[attr-defined]
