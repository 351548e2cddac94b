"""Consuming events from JetStream with exactly-once effects.

A durable pull consumer gets every message at least once. Each message is handled in one database
transaction that also records its event id in `chassis_processed_events`: a redelivered event finds its
id and is acknowledged without a second effect. A handler that fails is retried with backoff (`nak` with a
delay, so other messages flow meanwhile); after `max_attempts` deliveries the message is parked on the
dead-letter stream and acknowledged, so one poison message never blocks the rest. A delivery that failed
because the database is away (db_errors: unreachable, locked, exhausted) is not the message's fault: it is
retried with backoff for as long as the outage lasts, never parked, and does not count toward
`max_attempts`. Each consumer also reads its own replay subject, where an operator sends parked messages
back once their cause is fixed (deadletters.py).

Replicas of two releases share the durable during a rolling update (or a rollback), so a replica never
narrows it: at start it widens the durable's filter to the union of what it finds and its own subjects,
and drops only the subjects its release retires by name (`retired_subjects`). A message of a subject it
does not handle (a newer release's) is handed back with a delay for a replica that does, neither applied
nor counted as an attempt. Past `handback_max_seconds` after it was stored it is parked as a dead letter,
but only when the durable is short of slots (a message handed back stays ack-pending, and
`max_ack_pending` of them would stall the durable) and the database is not away (its own events fail for
it, or it does not answer a check made before the park); else it is handed back again. One of a retired
subject is acknowledged unapplied.

Applied event ids are forgotten once older than `processed_retention_seconds`, which must be at least the
stream's `stream_max_age_seconds` (EventSettings checks it): while a message is on the stream it may be
delivered again, and its id is what keeps that from having a second effect. The ids of events waiting as
this consumer's dead letters (or replays) are kept however old: a replay may come any time later. A service
that remembers more of the events it applied (recommendations: orders cancelled before their confirmation)
forgets it in the same purge (`on_purge`), by the same cutoff.

This module holds the delivery of each message (apply, retry, hold for the database, hand back, park) and
the loops that pull them; its collaborators each hold one concern: the durable's filter (consumer_durables),
when a message of a subject this release does not consume is handed back or parked (consumer_handbacks), the
dead letter or drop of a message given up (consumer_parking), the gauges and the messages the stream deleted
unread (consumer_gauges), the purge of applied event ids (consumer_purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import propagate, trace

from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.config import ConsumerSettings
from shopmesh_chassis.consumer_durables import bring_durable, covers
from shopmesh_chassis.consumer_durables import filter_of as filter_of  # importable from here, as before the split
from shopmesh_chassis.consumer_durables import widened_filter as widened_filter
from shopmesh_chassis.consumer_gauges import ConsumerGauges
from shopmesh_chassis.consumer_handbacks import DATABASE_CHECK_SECONDS as DATABASE_CHECK_SECONDS
from shopmesh_chassis.consumer_handbacks import SAY_AGAIN_SECONDS, HandBacks
from shopmesh_chassis.consumer_handbacks import SLOTS_READ_SECONDS as SLOTS_READ_SECONDS
from shopmesh_chassis.consumer_parking import Parking
from shopmesh_chassis.consumer_purge import ProcessedEventsPurge
from shopmesh_chassis.db import Database, DbConnection, insert_skipping_existing
from shopmesh_chassis.db_errors import OutageReport, cause_line, database_unavailable
from shopmesh_chassis.deadletters import (
    BOOKKEEPING_HEADERS,
    ORIGINAL_EVENT_ID,
    ORIGINAL_SUBJECT,
    REPLAY_STREAM,
    REPLAYED_FROM,
    ensure_dead_letter_streams,
    replay_durable,
    replay_filter,
)
from shopmesh_chassis.events import (
    DEFAULT_STREAM_MAX_AGE_SECONDS,
    EVENT_TYPE,
    MSG_ID,
    NatsConnection,
    ensure_stream,
    messaging_attributes,
    parse_nats_url,
)
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.tables import processed_events
from shopmesh_chassis.tasks import cancel_and_wait

log = logging.getLogger("shopmesh.consumer")
tracer = trace.get_tracer("shopmesh.consumer")

# The wait before consuming again after an interruption: the first, doubled per interruption up to the second.
_RECONNECT_DELAYS = (0.5, 10.0)
# Messages whose deliveries met an unreachable database (for their backoff), and messages the handler
# failed on (their attempts), remembered per message; bounded, since another replica may settle a message
# this one saw fail.
_REMEMBERED = 10_000
# The most messages the durable has delivered and not yet had acknowledged (JetStream's default, set here so
# the limit is in sight): past it the server delivers nothing more. A message handed back or retried with a
# delay counts until it is settled, which is why a hand-back past handback_max_seconds is parked once the
# durable is short of slots.
MAX_ACK_PENDING = 1000


@dataclass(frozen=True)
class Event:
    """What a handler gets: the raw payload (a serialized contract message) and where it came from."""

    event_id: str
    subject: str
    payload: bytes
    headers: Mapping[str, str]
    attempt: int


Handler = Callable[[DbConnection, Event], Awaitable[None]]

MessageT = TypeVar("MessageT", bound=Message)


class InvalidEvent(ValueError):
    """An event no retry can apply as it is: its payload is not the message its subject carries (or, raised by
    a service's own checks, lacks what the handler needs). Retried and parked like any failure; its text is
    the dead letter's reason, so it says which event and what is wrong with it."""


def decode_event(message_type: type[MessageT], event: Event) -> MessageT:
    """The event's payload as the contract message its subject carries. Bytes that do not decode raise
    InvalidEvent naming the subject, the event id and the expected message, for every consumer alike: a bare
    protobuf DecodeError parked as `DecodeError: Error parsing message` tells an operator reading
    `shopmesh-deadletters list` neither what was expected nor that the payload, not the code, is at fault.
    So does an event whose `Shopmesh-Event-Type` header (add_event writes it) names another message: protobuf
    decodes most messages as most others (an OrderCancelled reads as an OrderConfirmed), so the bytes alone
    cannot tell, and applying it would act on an event that never happened."""
    expected = message_type.DESCRIPTOR.full_name
    declared = event.headers.get(EVENT_TYPE)
    if declared is not None and declared != expected:
        raise InvalidEvent(
            f"{event.subject} {event.event_id or '?'}: the event is a {declared} (its {EVENT_TYPE} header), "
            f"not the {expected} this subject carries"
        )
    try:
        return message_type.FromString(event.payload)
    except DecodeError as exc:
        raise InvalidEvent(
            f"{event.subject} {event.event_id or '?'}: the payload does not decode as "
            f"{message_type.DESCRIPTOR.full_name} ({exc})"
        ) from None


class EventConsumer:
    @classmethod
    def from_settings(
        cls,
        settings: ConsumerSettings,
        database: Database,
        *,
        durable: str,
        stream: str,
        stream_subjects: Sequence[str],
        subjects: Sequence[str],
        handler: Handler,
        metrics: EventMetrics,
        on_applied: Callable[[Event], None] | None = None,
        retired_subjects: Sequence[str] = (),
        on_purge: Callable[[datetime], Awaitable[object]] | None = None,
    ) -> EventConsumer:
        """A consumer as a service runs it: NATS, retries, parking and retention from its settings."""
        return cls(
            database,
            settings.nats_url,
            durable=durable,
            stream=stream,
            stream_subjects=stream_subjects,
            subjects=subjects,
            retired_subjects=retired_subjects,
            handler=handler,
            on_applied=on_applied,
            max_attempts=settings.consumer_max_attempts,
            backoff_seconds=settings.consumer_backoff_seconds,
            ack_wait_seconds=settings.consumer_ack_wait_seconds,
            handback_max_seconds=settings.consumer_handback_max_seconds,
            max_ack_pending=settings.consumer_max_ack_pending,
            duplicate_window_seconds=settings.nats_duplicate_window_seconds,
            metrics=metrics,
            stream_max_age_seconds=settings.nats_stream_max_age_seconds,
            processed_retention_seconds=settings.processed_events_retention_seconds,
            purge_interval_seconds=settings.event_purge_interval_seconds,
            on_purge=on_purge,
        )

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
        retired_subjects: Sequence[str] = (),
        max_attempts: int = 5,
        backoff_seconds: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0),
        handback_seconds: Sequence[float] = (2.0, 5.0, 15.0, 30.0),
        handback_max_seconds: float = 120.0,
        max_ack_pending: int = MAX_ACK_PENDING,
        slots_read_seconds: float = SLOTS_READ_SECONDS,
        database_check_seconds: float = DATABASE_CHECK_SECONDS,
        clock: Clock = utc_now,
        batch_size: int = 20,
        ack_wait_seconds: float = 30.0,
        duplicate_window_seconds: float = 900.0,
        metrics: EventMetrics | None = None,
        gauge_poll_seconds: float = 30.0,
        stream_max_age_seconds: float = DEFAULT_STREAM_MAX_AGE_SECONDS,
        processed_retention_seconds: float = DEFAULT_STREAM_MAX_AGE_SECONDS + 86400.0,
        purge_interval_seconds: float = 3600.0,
        purge_batch_size: int = 500,
        on_purge: Callable[[datetime], Awaitable[object]] | None = None,
    ) -> None:
        self._db = database
        parse_nats_url(nats_url)  # a URL whose credentials cannot be read fails here, not in retries for ever
        self._url = nats_url
        self._durable = durable
        self._stream = stream
        self._stream_subjects = list(stream_subjects)
        self._subjects = list(subjects)
        # Subjects a release stops consuming on purpose: removed from the durable at start, and their events
        # still delivered (a replica of an earlier release brought them back mid-rollout) acknowledged unapplied.
        self._retired = list(retired_subjects)
        both = sorted({r for r in self._retired for s in self._subjects if covers(r, s) or covers(s, r)})
        if both:
            raise ValueError(f"consumer {durable}: subjects both consumed and retired: {', '.join(both)}")
        self._handler = handler
        # The wall clock of every time this consumer writes or judges (processed_at, the purge's cutoff, a
        # hand-back's age, the last-read gauge): one, so that a test that moves it moves them all.
        self._clock = clock
        # Called once the handler's transaction has committed (e.g. to wake a worker that reads its rows).
        self._on_applied = on_applied
        self._max_attempts = max_attempts
        self._backoff = list(backoff_seconds)
        self._max_ack_pending = max_ack_pending
        # Per message (stream, sequence): how many times this replica handed it back. Not JetStream's
        # num_delivered, which counts every replica's deliveries (a newer one's retries for its database, its
        # handler's retries, ack-wait redeliveries) and so parked events a newer replica was about to apply.
        # A restart forgets: it can only park later, never earlier.
        self._handed_back: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds
        self._duplicate_window = duplicate_window_seconds
        self._metrics = metrics
        # Replaced when the server closed it for good: _run's next _consume connects anew.
        self._connection = NatsConnection(nats_url, name=durable)
        self._parking = Parking(durable, self._connection)
        # Only what a missing stream is created with: the purge goes by the stream's own max age, read from NATS.
        self._stream_max_age = stream_max_age_seconds
        self._purge = ProcessedEventsPurge(
            database,
            self._connection,
            durable=durable,
            stream=stream,
            retention_seconds=processed_retention_seconds,
            interval_seconds=purge_interval_seconds,
            batch_size=purge_batch_size,
            on_purge=on_purge,
            clock=clock,
        )
        # Since when (monotonic) the current _consume has been subscribed, and whether it delivered a message
        # since: the reconnect backoff starts over only after a run that did either for a while, so a fault
        # that recurs right after each subscription backs off instead of looping at the first delay.
        self._consuming_since: float | None = None
        self._delivered_since_subscribing = False
        # Per message (stream, sequence): its deliveries that failed because the database was away.
        self._held: OrderedDict[tuple[str, int], int] = OrderedDict()
        # The handler's own failures on each message, counted here rather than derived from JetStream's
        # delivery count less the deliveries held for the database: that count lives in one process, and a
        # restart, another replica or a forgotten entry would then park a message early. Counted here, a
        # restart can only park one late.
        self._failures: OrderedDict[tuple[str, int], int] = OrderedDict()
        # One line when the database goes away, then one a minute while it stays away: not one per event.
        self._outage = OutageReport(
            log,
            f"consumer {durable}",
            gone="%(name)s cannot reach its database; events wait and are retried until it is back, "
            "none is parked: %(cause)s",
            still="%(name)s: database still unreachable after %(seconds).0fs; events keep waiting: %(cause)s",
            say_again_seconds=SAY_AGAIN_SECONDS,
        )
        self._handbacks = HandBacks(
            database,
            self._connection,
            self._outage,
            durable=durable,
            stream=stream,
            delays=handback_seconds,
            max_seconds=handback_max_seconds,
            max_ack_pending=max_ack_pending,
            slots_read_seconds=slots_read_seconds,
            database_check_seconds=database_check_seconds,
            clock=clock,
        )
        self._gauges = ConsumerGauges(
            durable=durable,
            stream=stream,
            metrics=metrics,
            poll_seconds=gauge_poll_seconds,
            on_ack_pending=self._handbacks.read_slots,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Set by stop() before it cancels _run: see _stop_if_stopping.
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.get_running_loop().create_task(self._run(), name=f"consumer-{self._durable}")]
        self._purge.start()

    async def stop(self) -> None:
        await self._purge.stop()
        self._stopping = True
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._connection.close()

    async def _run(self) -> None:
        delay = _RECONNECT_DELAYS[0]
        while True:
            self._consuming_since = None
            self._delivered_since_subscribing = False
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A NATS request that failed as the cancel came, and lost it: else it reconnects for ever.
                self._stop_if_stopping()
                if self._ran_since_subscribing():
                    # It consumed again since the last interruption: this is a new one.
                    delay = _RECONNECT_DELAYS[0]
                # NATS away, or the stream not there yet: keep trying; JetStream keeps the messages.
                log.warning("consumer %s interrupted, retrying in %.1fs: %s", self._durable, delay, cause_line(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_DELAYS[1])

    def _stop_if_stopping(self) -> None:
        """`tasks.stop_if_cancelled` for _run, which cannot go by its task's count of cancels: Python 3.11's
        TaskGroup leaves counted the cancel it made of its parent when a loop failed while it waited for them
        (every interruption), so the count says "cancelled" for the rest of the task's life."""
        if self._stopping:
            raise asyncio.CancelledError

    def _ran_since_subscribing(self) -> bool:
        if self._consuming_since is None:
            return False
        ran_for = asyncio.get_running_loop().time() - self._consuming_since
        return self._delivered_since_subscribing or ran_for >= _RECONNECT_DELAYS[1]

    async def _consume(self) -> None:
        js = (await self._connection.open()).jetstream()
        await ensure_stream(
            js, self._stream, self._stream_subjects, self._duplicate_window, max_age=self._stream_max_age, update=False
        )
        self._purge.connected()
        await ensure_dead_letter_streams(js)
        subscriptions: list[JetStreamContext.PullSubscription] = []
        try:
            events, durable_filter = await self._subscribe(
                js, self._stream, self._durable, self._subjects, self._retired
            )
            subscriptions.append(events)
            replays, _ = await self._subscribe(
                js, REPLAY_STREAM, replay_durable(self._durable), [replay_filter(self._durable)], []
            )
            subscriptions.append(replays)
            log.info(
                "consuming %s from %s as %s (its filter: %s)",
                ",".join(self._subjects),
                self._stream,
                self._durable,
                ",".join(durable_filter),
            )
            # Before the first fetch: a fetch moves the durable past deleted messages, and its acks its ack floor.
            await self._gauges.look_for_lost(js)
            self._consuming_since = asyncio.get_running_loop().time()
            # A declaration or subscription that lost the cancel: the loops below are tasks of their own,
            # which nothing would cancel.
            self._stop_if_stopping()
            # Both pull loops share the connection; one failing ends both, and _run starts them again.
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._pull(events, replayed=False))
                loops.create_task(self._pull(replays, replayed=True))
                if self._metrics is not None:
                    loops.create_task(self._gauges.run(js, self._metrics))
        finally:
            # The next _consume subscribes anew on the same connection: these would stay in the client
            # for good, and be sent to the server again at every reconnect.
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _subscribe(
        self, js: JetStreamContext, stream: str, durable: str, subjects: list[str], retired: list[str]
    ) -> tuple[JetStreamContext.PullSubscription, list[str]]:
        # Create the durable, or widen an existing one to these subjects too (a release that consumes one
        # more subject): pull_subscribe alone would bind to an existing durable as it was first created.
        durable_filter = await bring_durable(
            js,
            stream,
            durable,
            subjects,
            retired,
            ack_wait_seconds=self._ack_wait,
            max_ack_pending=self._max_ack_pending,
        )
        return await js.pull_subscribe_bind(durable=durable, stream=stream), durable_filter

    async def _pull(self, subscription: JetStreamContext.PullSubscription, *, replayed: bool) -> None:
        task = asyncio.current_task()
        while True:
            try:
                messages = await subscription.fetch(self._batch_size, timeout=1.0)
            except TimeoutError:
                messages = []
            if task is not None and task.cancelling():
                # Stopping. nats-py's fetch waits in a task of its own (Python 3.11's wait_for), and a cancel
                # that lands as messages arrive is lost there: fetch returns them as if nothing happened, and
                # the loop went on pulling for the whole shutdown budget (SIGTERM under load exited 1). The
                # fetched batch goes back at once, as below.
                for unfetched in messages:
                    with contextlib.suppress(Exception):
                        await unfetched.nak()
                raise asyncio.CancelledError
            if not messages:
                continue
            settled = 0  # messages of the batch acknowledged, handed back or parked
            held = self._gauges.hold(messages)
            try:
                for message in messages:
                    delivered = await self._deliver(message, replayed=replayed)
                    settled += 1
                    self._delivered_since_subscribing = True
                    if not delivered:
                        # The database is away: the rest of the batch would fail alike (each perhaps only after
                        # a connect timeout, past its ack wait). They wait for it likewise, untried.
                        for waiting in messages[settled:]:
                            await self._hold(waiting, self._event(waiting, replayed=replayed), None)
                            settled += 1
                        break
            except asyncio.CancelledError:
                # Stopping (a shutdown, a rollout): what this batch has not settled goes back now, to another
                # replica or the next start, instead of after the ack wait. One whose effect committed just
                # before comes back as a duplicate, and its id keeps it from a second effect.
                for unsettled in messages[settled:]:
                    with contextlib.suppress(Exception):
                        await unsettled.nak()
                raise
            finally:
                self._gauges.let_go(held)

    async def purge_processed(self) -> int:
        """Forget the event ids this consumer applied longer than the retention ago (consumer_purge); how many."""
        return await self._purge.run()

    async def _deliver(self, message: Msg, *, replayed: bool) -> bool:
        """Apply, retry or park the message; False when it failed because the database is away."""
        event = self._event(message, replayed=replayed)
        if not any(covers(subject, event.subject) for subject in self._subjects):
            await self._not_handled(message, event, replayed=replayed)
            return True
        context = propagate.extract(event.headers)
        # OpenTelemetry's messaging attributes (a delivery's handling is a process operation), and the delivery's
        # attempt (1: its first delivery) as the smtp spans say theirs; its outcome is set by _count, within this span.
        attributes = {
            **messaging_attributes(event.subject, event.event_id, "process", "consume"),
            "messaging.consumer.group.name": self._durable,
            "shopmesh.attempt": event.attempt,
        }
        with tracer.start_as_current_span(
            f"consume {event.subject}", context=context, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            if replayed:
                dead_letter = (message.headers or {}).get(REPLAYED_FROM, "")
                span.set_attribute("shopmesh.replayed_from", dead_letter)
                # In the span: the line carries the event's trace id, as its first delivery's lines did.
                log.info("replaying event %s (dead letter %s)", event.event_id, dead_letter or "?")
            try:
                applied = await self._apply(event)
            except Exception as exc:
                # Handled here, not raised through the span: without this the span of a failed handling
                # (retried, held for the database, parked) would read as a success in the trace.
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                if database_unavailable(exc):
                    await self._hold(message, event, exc)
                    return False
                self._outage.back()
                await self._failed(message, event, exc)
                return True
            if not applied:  # in the span: the line carries the event's trace id
                log.info("event %s was already processed by %s", event.event_id, self._durable)
            self._outage.back()
            await message.ack()
            self._forget(message)
            self._count(event, "applied" if applied else "duplicate")
        return True

    async def _not_handled(self, message: Msg, event: Event, *, replayed: bool) -> None:
        """A message of a subject this release does not consume. A retired subject's is acknowledged unapplied:
        the release stopped consuming it on purpose (a replica of an earlier one put it back on the durable).
        Any other is a newer release's, which shares the durable during a rollout: handed back for one of its
        replicas, not counted as an attempt (it is not at fault), at the handback delays. Until settled it
        holds one of the durable's `max_ack_pending` slots, and in a full rollback enough of them would stop
        every delivery: so once overdue it is parked for an operator to replay when the durable is short of
        slots (consumer_handbacks), and handed back again while it is not."""
        if any(covers(retired, event.subject) for retired in self._retired):
            await message.ack()
            self._forget(message)
            self._count(event, "retired")
            self._handbacks.say(event, "acknowledges without applying them: its release retired the subject")
            return
        key = self._delivery(message)
        handed_back = self._handed_back.get(key, 0) if key is not None else 0
        waited = await self._handbacks.overdue(message, handed_back, replayed=replayed)
        if waited is not None:
            error = f"subject {event.subject} is not consumed by this release (handed back for {waited:.0f} s)"
            await self._park(message, event, error, attempts=0, say=False)
            self._handbacks.say(
                event,
                f"parks them as dead letters once handed back for {self._handbacks.max_seconds:g} s while the durable "
                "is short of slots (replay them once a release that consumes the subject runs)",
                level=logging.ERROR,
            )
            return
        delay = self._handbacks.delay(handed_back)
        self._remember(self._handed_back, key, handed_back + 1)
        await message.nak(delay=delay)
        self._count(event, "handed_back")
        self._handbacks.say(
            event,
            "hands them back for a replica of a release that consumes the subject (each waits for one "
            f"at least {self._handbacks.max_seconds:g} s after it was published, then is parked as a dead letter "
            "if the durable is short of slots)",
        )

    def _event(self, message: Msg, *, replayed: bool) -> Event:
        headers = dict(message.headers or {})
        attempt = message.metadata.num_delivered if message.metadata else 1
        if not replayed:
            return Event(headers.get(MSG_ID, ""), message.subject, message.data, headers, attempt)
        # A replay: the event as first delivered, under its own id, without the dead letter's bookkeeping.
        event_id = headers.get(ORIGINAL_EVENT_ID, "")
        original = {k: v for k, v in headers.items() if k not in BOOKKEEPING_HEADERS} | {MSG_ID: event_id}
        subject = headers.get(ORIGINAL_SUBJECT) or message.subject.split(".", 2)[-1]
        return Event(event_id, subject, message.data, original, attempt)

    def _count(self, event: Event, outcome: str) -> None:
        """Count the delivery's outcome, and say it on its consume span: the current one while it is handled
        (a subject this release does not handle gets none, and no span is current then)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("shopmesh.outcome", outcome)
        if self._metrics is not None:
            self._metrics.consumed.labels(self._durable, event.subject, outcome).inc()

    async def _apply(self, event: Event) -> bool:
        """Run the handler once per event id; False when this consumer had already applied it."""
        if not event.event_id:
            raise ValueError(f"message on {event.subject} has no {MSG_ID} header")
        async with self._db.transaction() as session:
            # The id first, then the handler: a delivery of the same event running at once (another replica,
            # a redelivery after the ack wait while this one still applies) waits at this insert for the
            # other's transaction, then skips it (a duplicate) or, if that one rolled back, applies it. Looked
            # up first and inserted after the handler, the id was not yet there to see: the second delivery
            # ran the handler too and failed on the key, counted as a failed attempt, and on its last attempt
            # was parked as a dead letter although the event had been applied.
            claimed = await session.execute(
                insert_skipping_existing(self._db.dialect, processed_events),
                {"consumer": self._durable, "event_id": event.event_id, "processed_at": self._clock()},
            )
            if not claimed.rowcount:
                return False
            await self._handler(session, event)
        if self._on_applied is not None:
            self._on_applied(event)
        return True

    @staticmethod
    def _delivery(message: Msg) -> tuple[str, int] | None:
        """Which stored message this is (its stream and sequence there), the same on every delivery."""
        if message.metadata is None:
            return None
        return message.metadata.stream, message.metadata.sequence.stream

    def _forget(self, message: Msg) -> int:
        """Settled: stop remembering the message's deliveries held for the database (how many there were),
        its failures and its hand-backs."""
        key = self._delivery(message)
        if key is None:
            return 0
        self._failures.pop(key, None)
        self._handed_back.pop(key, None)
        return self._held.pop(key, 0)

    @staticmethod
    def _remember(counts: OrderedDict[tuple[str, int], int], key: tuple[str, int] | None, count: int) -> None:
        if key is not None:
            counts[key] = count
            counts.move_to_end(key)
            while len(counts) > _REMEMBERED:
                counts.popitem(last=False)

    async def _hold(self, message: Msg, event: Event, error: Exception | None) -> None:
        """The database is away (`error` None: as the delivery before this one found). The message is
        not at fault: hand it back with backoff, for as long as the outage lasts, never to be parked."""
        key = self._delivery(message)
        held = (self._held.get(key, 0) if key is not None else 0) + 1
        self._remember(self._held, key, held)
        delay = self._backoff[min(held - 1, len(self._backoff) - 1)]
        if error is not None:
            self._outage.away(error)
        log.debug(
            "event %s waits %.1fs for the database (delivery %d)",
            event.event_id,
            delay,
            event.attempt,
            extra={"event_id": event.event_id},
        )
        await message.nak(delay=delay)
        self._count(event, "retried")

    async def _park(self, message: Msg, event: Event, error: str, *, attempts: int, say: bool = True) -> None:
        """Move the message to the dead-letter stream with why (`error`) and the handler's attempts on it (or
        drop it, when NATS takes not even a letter without its payload: consumer_parking), then acknowledge it;
        `say` False when the caller logs it its own way."""
        outcome = await self._parking.park(message, event, error, attempts=attempts, say=say)
        await message.ack()
        self._forget(message)
        self._count(event, outcome)
        if outcome == "dead_lettered":
            self._gauges.parked()
        elif self._metrics is not None:
            self._metrics.dropped.labels(self._durable).inc()

    async def _failed(self, message: Msg, event: Event, error: Exception) -> None:
        # Deliveries that met an unreachable database were no attempt of the handler's on this message.
        key = self._delivery(message)
        attempts = (self._failures.get(key, 0) if key is not None else event.attempt - 1) + 1
        self._remember(self._failures, key, attempts)
        if attempts >= self._max_attempts:
            await self._park(message, event, f"{type(error).__name__}: {error}", attempts=attempts)
            return
        delay = self._backoff[min(attempts - 1, len(self._backoff) - 1)]
        log.warning(
            "event %s failed (attempt %d/%d), retrying in %.1fs: %s",
            event.event_id,
            attempts,
            self._max_attempts,
            delay,
            error,
            extra={"event_id": event.event_id},
        )
        await message.nak(delay=delay)
        self._count(event, "retried")
