"""Consuming events from JetStream with exactly-once effects.

A durable pull consumer gets every message at least once. Each message is handled in one database
transaction that also records its event id in `chassis_processed_events`: a redelivered event finds its
id and is acknowledged without a second effect. A handler that fails is retried with backoff (`nak` with a
delay, so other messages flow meanwhile); after `max_attempts` deliveries the message is parked on the
dead-letter stream and acknowledged, so one poison message never blocks the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import propagate, trace
from sqlalchemy import insert, select

from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.events import MSG_ID, connect, ensure_stream
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.tables import processed_events

log = logging.getLogger("shopmesh.consumer")
tracer = trace.get_tracer("shopmesh.consumer")

DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"


@dataclass(frozen=True)
class Event:
    """What a handler gets: the raw payload (a serialized contract message) and where it came from."""

    event_id: str
    subject: str
    payload: bytes
    headers: Mapping[str, str]
    attempt: int


Handler = Callable[[DbConnection, Event], Awaitable[None]]


class EventConsumer:
    def __init__(
        self,
        database: Database,
        nats_url: str,
        *,
        durable: str,
        stream: str,
        stream_subjects: Sequence[str],
        subjects: Sequence[str],
        handler: Handler,
        on_applied: Callable[[Event], None] | None = None,
        max_attempts: int = 5,
        backoff_seconds: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0),
        batch_size: int = 20,
        ack_wait_seconds: float = 30.0,
        duplicate_window_seconds: float = 900.0,
        metrics: EventMetrics | None = None,
    ) -> None:
        self._db = database
        self._url = nats_url
        self._durable = durable
        self._stream = stream
        self._stream_subjects = list(stream_subjects)
        self._subjects = list(subjects)
        self._handler = handler
        # Called once the handler's transaction has committed (e.g. to wake a worker that reads its rows).
        self._on_applied = on_applied
        self._max_attempts = max_attempts
        self._backoff = list(backoff_seconds)
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds
        self._duplicate_window = duplicate_window_seconds
        self._metrics = metrics
        self._client: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def dead_letter_subject(self) -> str:
        return f"{DEAD_LETTER_PREFIX}.{self._durable}"

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._run(), name=f"consumer-{self._durable}")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS away, or the stream not there yet: keep trying; JetStream keeps the messages.
                log.warning("consumer %s interrupted, retrying in %.1fs: %s", self._durable, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _consume(self) -> None:
        if self._client is None:
            self._client = await connect(self._url, name=self._durable)
        js = self._client.jetstream()
        await ensure_stream(js, self._stream, self._stream_subjects, self._duplicate_window)
        await ensure_stream(js, DEAD_LETTER_STREAM, [f"{DEAD_LETTER_PREFIX}.>"], self._duplicate_window)
        config = ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # Redelivery is bounded by our own count (then the dead-letter stream), not the server's.
            max_deliver=-1,
            filter_subjects=self._subjects if len(self._subjects) > 1 else None,
            filter_subject=self._subjects[0] if len(self._subjects) == 1 else None,
        )
        # Create the durable, or bring an existing one to this configuration (a release that consumes one
        # more subject): pull_subscribe alone would bind to an existing durable as it was first created.
        await js.add_consumer(self._stream, config)
        subscription = await js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        log.info("consuming %s from %s as %s", ",".join(self._subjects), self._stream, self._durable)
        while True:
            try:
                messages = await subscription.fetch(self._batch_size, timeout=1.0)
            except TimeoutError:
                continue
            for message in messages:
                await self._deliver(message)

    async def _deliver(self, message: Msg) -> None:
        headers = dict(message.headers or {})
        event_id = headers.get(MSG_ID, "")
        attempt = message.metadata.num_delivered if message.metadata else 1
        event = Event(event_id, message.subject, message.data, headers, attempt)
        context = propagate.extract(headers)
        with tracer.start_as_current_span(
            f"consume {message.subject}", context=context, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.message.id", event_id)
            try:
                applied = await self._apply(event)
            except Exception as exc:
                await self._failed(message, event, exc)
                return
        await message.ack()
        self._count(event, "applied" if applied else "duplicate")
        if not applied:
            log.info("event %s was already processed by %s", event_id, self._durable)

    def _count(self, event: Event, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.consumed.labels(self._durable, event.subject, outcome).inc()

    async def _apply(self, event: Event) -> bool:
        """Run the handler once per event id; False when this consumer had already applied it."""
        if not event.event_id:
            raise ValueError(f"message on {event.subject} has no {MSG_ID} header")
        async with self._db.transaction() as session:
            seen = await session.execute(
                select(processed_events.c.event_id).where(
                    processed_events.c.consumer == self._durable, processed_events.c.event_id == event.event_id
                )
            )
            if seen.first() is not None:
                return False
            await self._handler(session, event)
            await session.execute(
                insert(processed_events).values(
                    consumer=self._durable, event_id=event.event_id, processed_at=datetime.now(UTC)
                )
            )
        if self._on_applied is not None:
            self._on_applied(event)
        return True

    async def _failed(self, message: Msg, event: Event, error: Exception) -> None:
        if event.attempt >= self._max_attempts:
            log.error(
                "event %s failed %d times, parking it on %s: %s",
                event.event_id,
                event.attempt,
                self.dead_letter_subject,
                error,
                extra={"event_id": event.event_id},
            )
            assert self._client is not None
            headers = {
                **{k: v for k, v in event.headers.items() if k != MSG_ID},
                MSG_ID: f"{self._durable}:{event.event_id}",
                "Shopmesh-Original-Subject": event.subject,
                "Shopmesh-Original-Event-Id": event.event_id,
                "Shopmesh-Error": json.dumps(f"{type(error).__name__}: {error}")[:500],
                "Shopmesh-Attempts": str(event.attempt),
            }
            await self._client.jetstream().publish(
                f"{self.dead_letter_subject}.{event.subject}", event.payload, headers=headers
            )
            await message.ack()
            self._count(event, "dead_lettered")
            return
        delay = self._backoff[min(event.attempt - 1, len(self._backoff) - 1)]
        log.warning(
            "event %s failed (attempt %d/%d), retrying in %.1fs: %s",
            event.event_id,
            event.attempt,
            self._max_attempts,
            delay,
            error,
            extra={"event_id": event.event_id},
        )
        await message.nak(delay=delay)
        self._count(event, "retried")
