"""Traces across the event path: a trace goes on from the transaction that wrote an event, through the outbox
and JetStream, into the consumer's CONSUMER span; that span tells a failed handling from a successful one."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import pytest
from google.protobuf import wrappers_pb2
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shopmesh_chassis import consumer as consumer_module
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.deadletters import DeadLetters
from shopmesh_chassis.events import JetStreamPublisher
from shopmesh_chassis.logs import TraceContextFilter
from shopmesh_chassis.outbox import OutboxRelay, add_event, new_event_id
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer

from .consumer_kit import client, consumer, db, record, until_applied

__all__ = ["client", "db"]  # fixtures, used by name

SUBJECT = "things.v1.happened"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of the consumer recorded in memory (the process-wide provider is whichever a test set first)."""
    recorded = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    monkeypatch.setattr(consumer_module, "tracer", provider.get_tracer("shopmesh.consumer"))
    yield recorded
    provider.shutdown()


def consume_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]


async def test_an_event_written_in_a_span_is_consumed_in_a_child_of_that_span(
    db: Database, client: Client, nats_srv: NatsServer, exporter: InMemorySpanExporter
) -> None:
    tracer = TracerProvider().get_tracer("test")
    event_id = new_event_id()
    with tracer.start_as_current_span("rpc") as rpc:
        async with db.transaction() as session:
            await add_event(session, subject=SUBJECT, message=wrappers_pb2.StringValue(value="x"), event_id=event_id)
    await OutboxRelay(db, JetStreamPublisher(client)).publish_pending()
    running = consumer(db, nats_srv.url, record)
    running.start()
    try:
        await until_applied(db, Counter({event_id: 1}))
    finally:
        await running.stop()
    [span] = consume_spans(exporter)
    assert span.parent is not None
    assert span.parent.span_id == rpc.get_span_context().span_id
    assert span.context is not None
    assert span.context.trace_id == rpc.get_span_context().trace_id


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
