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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import nats.aio.client
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from opentelemetry import propagate, trace

from shopmesh_chassis.clocks import MAX_CLOCK_SKEW_SECONDS, Clock, utc_now
from shopmesh_chassis.config import ConsumerSettings
from shopmesh_chassis.db import Database, DbConnection, insert_skipping_existing
from shopmesh_chassis.db_errors import OutageReport, cause_line, database_unavailable
from shopmesh_chassis.deadletters import (
    ATTEMPTS,
    BOOKKEEPING_HEADERS,
    DEAD_LETTER_STREAM,
    ORIGINAL_EVENT_ID,
    ORIGINAL_SUBJECT,
    PAYLOAD_OMITTED,
    REPLAY_STREAM,
    REPLAYED_FROM,
    ensure_dead_letter_streams,
    fitted_letter,
    parked_subject,
    payload_omitted,
    replay_durable,
    replay_filter,
    waiting_event_ids,
)
from shopmesh_chassis.events import (
    DEFAULT_STREAM_MAX_AGE_SECONDS,
    EVENT_TYPE,
    MSG_ID,
    NatsConnection,
    ensure_stream,
    messaging_attributes,
    parse_nats_url,
    refused_for_good,
)
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.periodic import Periodic, delete_in_batches
from shopmesh_chassis.tables import processed_events
from shopmesh_chassis.tasks import cancel_and_wait, stop_if_cancelled

log = logging.getLogger("shopmesh.consumer")
tracer = trace.get_tracer("shopmesh.consumer")

# The wait before consuming again after an interruption: the first, doubled per interruption up to the second.
_RECONNECT_DELAYS = (0.5, 10.0)
# A condition that repeats with every delivery (the database away; events of a subject this release does not
# consume, per subject; a clock skew) is said once, then at most this often.
_SAY_AGAIN_SECONDS = 60.0
# Messages whose deliveries met an unreachable database (for their backoff), and messages the handler
# failed on (their attempts), remembered per message; bounded, since another replica may settle a message
# this one saw fail.
_REMEMBERED = 10_000
# Ids are kept this much longer than the stream keeps their events (a message may sit unacknowledged, and
# clocks differ).
_PURGE_MARGIN_SECONDS = 86400.0
# The most event ids a purge keeps for the consumer's dead letters (each one a bound parameter of the
# purge's statements); with more parked, the purge forgets nothing until fewer are.
_KEPT_FOR_DEAD_LETTERS = 5_000
# Rounds of read, widen, read back at start before going on with the filter as it is (see _bring_durable).
_FILTER_ROUNDS = 3
# The most messages the durable has delivered and not yet had acknowledged (JetStream's default, set here so
# the limit is in sight): past it the server delivers nothing more. A message handed back or retried with a
# delay counts until it is settled, which is why a hand-back past handback_max_seconds is parked once the
# durable is short of slots.
MAX_ACK_PENDING = 1000
# How long a read of the durable's ack-pending count is good for when a park is considered (the default of
# `slots_read_seconds`): at most one request per this long per durable, however many overdue messages come by.
SLOTS_READ_SECONDS = 5.0
# How long the answer of a check that the database is reachable is good for when a park is considered (the
# default of `database_check_seconds`), and how long the check may take: at most one check per this long, and a
# database that does not answer within the bound counts as away.
DATABASE_CHECK_SECONDS = 5.0
_DATABASE_CHECK_TIMEOUT = 5.0
# Short of slots: at least this share of max_ack_pending unsettled. Half leaves the rest for the replicas'
# own events while parking starts well before the stall.
_SHORT_OF_SLOTS = 0.5


def _tokens_cover(pattern: list[str], subject: list[str]) -> bool:
    """Whether every subject that `subject` matches (itself a filter, perhaps with wildcards) is matched by
    `pattern`, token by token as NATS matches."""
    for index, token in enumerate(pattern):
        if token == ">":
            return index < len(subject)
        if index >= len(subject) or subject[index] == ">":
            return False
        if token != "*" and token != subject[index]:
            return False
    return len(pattern) == len(subject)


def covers(pattern: str, subject: str) -> bool:
    """Whether the filter `pattern` matches everything `subject` (a subject or a filter) matches."""
    return _tokens_cover(pattern.split("."), subject.split("."))


def widened_filter(current: Sequence[str], own: Sequence[str], retired: Sequence[str]) -> list[str]:
    """The durable's filter once a replica consuming `own` and retiring `retired` has started: what the
    other releases' replicas put there kept, less what this release retires, and without a filter another
    one covers (JetStream refuses overlapping filters: a release that takes `orders.v1.>` in place of its
    subjects would never start)."""
    wanted = {subject for subject in current if subject not in retired} | set(own)
    return sorted(s for s in wanted if not any(o != s and covers(o, s) for o in wanted))


def filter_of(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return sorted(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


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
        # Called once the handler's transaction has committed (e.g. to wake a worker that reads its rows).
        self._on_applied = on_applied
        self._max_attempts = max_attempts
        self._backoff = list(backoff_seconds)
        # The delay before a message of a subject this release does not handle comes back, by its delivery
        # (the last repeats): short while a newer replica likely runs, then slower, so a full rollback leaves
        # such messages coming back a few times a minute rather than spinning.
        self._handback = list(handback_seconds)
        # How long after it was stored (its stream timestamp, the same on every delivery, to every replica,
        # across restarts) such a message is surely handed back; past it, it may be parked (_may_park).
        self._handback_max = handback_max_seconds
        self._max_ack_pending = max_ack_pending
        # Per message (stream, sequence): how many times this replica handed it back. Not JetStream's
        # num_delivered, which counts every replica's deliveries (a newer one's retries for its database, its
        # handler's retries, ack-wait redeliveries) and so parked events a newer replica was about to apply.
        # A restart forgets: it can only park later, never earlier.
        self._handed_back: OrderedDict[tuple[str, int], int] = OrderedDict()
        # Per (stream, durable): when (monotonic) its ack-pending count was last read, and the count (None:
        # the read failed, taken as not short of slots).
        self._slots_read: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._slots_read_seconds = slots_read_seconds
        # When (monotonic) the database was last checked before a park, and whether it answered; when that it
        # did not was last said (None: it answered since).
        self._database_checked: tuple[float, bool] | None = None
        self._database_check_seconds = database_check_seconds
        self._database_unanswered_said: float | None = None
        # When (monotonic) a clock skew was last said.
        self._skew_said: float | None = None
        # Wall-clock UTC, compared with the stream's timestamps.
        self._clock = clock
        # Per subject and what was done with it (handed back, retired, parked): when that was last logged,
        # and how many since.
        self._handed_back_said: dict[tuple[str, str], tuple[float, int]] = {}
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds
        self._duplicate_window = duplicate_window_seconds
        self._metrics = metrics
        self._gauge_poll = gauge_poll_seconds
        if metrics is not None:
            # From the start, not the first read: a replica that never reaches NATS must show it too.
            metrics.consumer_nats_read.labels(durable).set(time.time())
            # At 0 before any drop: prometheus-client makes a labelled series on first use, already at 1, and
            # increase() (ShopmeshEventsDropped) sees no rise in a series' first sample: the first lost event
            # of each pod would never page.
            metrics.dropped.labels(durable)
            metrics.lost.labels(stream, durable)
        # Only what a missing stream is created with: the purge goes by the stream's own max age, read from NATS.
        self._stream_max_age = stream_max_age_seconds
        # 0: applied event ids are kept for ever.
        self._processed_retention = processed_retention_seconds
        self._purge_batch_size = purge_batch_size
        # Run by a purge with its cutoff when no dead letter waits: see purge_processed.
        self._on_purge = on_purge
        self._purge = Periodic(f"processed-events-purge-{durable}", purge_interval_seconds, self.purge_processed)
        # Whether no purge has read the stream's max age since the last one that did (none has at start).
        self._purge_skipped = True
        self._parked = asyncio.Event()
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
            say_again_seconds=_SAY_AGAIN_SECONDS,
        )
        # The stream sequence through which messages deleted before the durable acknowledged them were counted
        # (see _look_for_lost), and whether the durable had messages it had not applied at the last look.
        self._lost_through = 0
        self._was_behind = False
        # Stream sequences of the messages this replica's batches hold (fetched, not yet all settled), and of
        # those let go since the durable's state was last read (acknowledged after that read, most likely): not
        # lost when the stream deletes them (see _look_for_lost).
        self._in_hand: set[int] = set()
        self._let_go: set[int] = set()
        # Replaced when the server closed it for good: _run's next _consume connects anew.
        self._connection = NatsConnection(nats_url, name=durable)
        self._tasks: list[asyncio.Task[None]] = []
        # Set by stop() before it cancels _run: see _stop_if_stopping.
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.get_running_loop().create_task(self._run(), name=f"consumer-{self._durable}")]
        if self._processed_retention > 0:
            self._purge.start()

    async def stop(self) -> None:
        # A purge cut short loses nothing: each batch is a transaction of its own, and the next run goes on.
        await self._purge.stop(timeout=1.0)
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
        if self._purge_skipped:
            # A purge that skipped (the start's, which comes before the connection; one while NATS was away)
            # runs now that the max age can be read: the next is an interval (an hour) away, and a consumer
            # restarted more often would never purge.
            self._purge.run_soon()
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
            await self._look_for_lost(js)
            self._consuming_since = asyncio.get_running_loop().time()
            # A declaration or subscription that lost the cancel: the loops below are tasks of their own,
            # which nothing would cancel.
            self._stop_if_stopping()
            # Both pull loops share the connection; one failing ends both, and _run starts them again.
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._pull(events, replayed=False))
                loops.create_task(self._pull(replays, replayed=True))
                if self._metrics is not None:
                    loops.create_task(self._read_gauges(js, self._metrics))
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
        durable_filter = await self._bring_durable(js, stream, durable, subjects, retired)
        return await js.pull_subscribe_bind(durable=durable, stream=stream), durable_filter

    async def _bring_durable(
        self, js: JetStreamContext, stream: str, durable: str, subjects: list[str], retired: list[str]
    ) -> list[str]:
        """Create the durable, or widen it to these subjects too, never narrowing what other replicas (of
        another release) consume through it; its filter as written.

        Narrowing would lose events: a subject taken off the filter has its messages skipped by the durable
        for good, even once put back. JetStream updates a consumer without compare-and-set, so a replica
        whose read of the durable came before this one's write may write its own union over ours; the read
        back catches that when it lands first, and the union is written again. One that lands after the read
        back needs the other replica to stall between its own read and write for longer than our write and
        read take (two requests): only the subjects new since its read are then lost, until a replica starts."""
        wanted: list[str] = []
        for _ in range(_FILTER_ROUNDS):
            try:
                current = filter_of((await js.consumer_info(stream, durable)).config)
            except nats.js.errors.NotFoundError:
                current = []
            wanted = widened_filter(current, subjects, retired)
            await js.add_consumer(stream, self._consumer_config(durable, wanted))
            after = filter_of((await js.consumer_info(stream, durable)).config)
            if all(any(covers(f, w) for f in after) for w in wanted):
                return after
            log.warning(
                "consumer %s: another replica wrote the durable's filter at the same time (%s); widening it again",
                durable,
                ",".join(after),
            )
        # Replicas of a release before this rule (which set their own subjects) starting one after another:
        # each of our rounds widened it, and consuming beats failing the start over it.
        log.warning("consumer %s: its filter keeps changing under it; consuming with %s", durable, ",".join(wanted))
        return wanted

    def _consumer_config(self, durable: str, subjects: list[str]) -> ConsumerConfig:
        return ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_ack_pending=self._max_ack_pending,
            # Redelivery is bounded by our own count (then the dead-letter stream), not the server's: a
            # message held back while the database is away must come back however long the outage lasts.
            # No server-side backoff either: each nak says its own delay.
            max_deliver=-1,
            filter_subjects=subjects if len(subjects) > 1 else None,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
        )

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
            held = self._hold_sequences(messages)
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
                self._in_hand -= held
                self._let_go |= held

    def _hold_sequences(self, messages: list[Msg]) -> set[int]:
        """Remember the stream sequences of this batch's messages of the consumed stream (not replays) as in
        this replica's hands; they are."""
        held = {
            message.metadata.sequence.stream
            for message in messages
            if message.metadata is not None
            and message.metadata.stream == self._stream
            and message.metadata.sequence.stream is not None
        }
        self._in_hand |= held
        return held

    async def _read_gauges(self, js: JetStreamContext, metrics: EventMetrics) -> None:
        """Keep the backlog and parked-message gauges current from what NATS knows: other replicas share
        the durable, and a replay or discard happens in another process."""
        mine = parked_subject(self._durable, ">")
        while True:
            try:
                state = await self._read_durable(js)
                self._slots_read[(self._stream, self._durable)] = (time.monotonic(), state.num_ack_pending or 0)
                backlog = (state.num_pending or 0) + (state.num_ack_pending or 0)
                metrics.consumer_backlog.labels(self._durable).set(backlog)
                await self._look_for_lost(js, state)
                info = await js.stream_info(DEAD_LETTER_STREAM, subjects_filter=mine)
                metrics.dead_letters.labels(self._durable).set(sum((info.state.subjects or {}).values()))
                metrics.consumer_nats_read.labels(self._durable).set(time.time())
            except (nats.errors.Error, TimeoutError) as exc:
                # A gauge a little stale is better than interrupting consumption over it.
                log.warning("could not read %s's backlog and dead letters: %s", self._durable, exc)
            # Its requests, and its wait, can lose the task group's cancel: the consumer's stop waits for it.
            stop_if_cancelled()
            self._parked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._parked.wait(), self._gauge_poll)
            stop_if_cancelled()

    async def _read_durable(self, js: JetStreamContext) -> ConsumerInfo:
        """The durable's state as NATS says now. What this replica let go before the read shows in it (as
        acknowledged, most likely): _let_go starts over, for _look_for_lost to discount only what comes after."""
        self._let_go.clear()
        state: ConsumerInfo = await js.consumer_info(self._stream, self._durable)
        return state

    async def _look_for_lost(self, js: JetStreamContext, state: ConsumerInfo | None = None) -> None:
        """Count and say the messages the stream deleted before the durable acknowledged them: its first sequence
        past the durable's ack floor + 1. Under discard old a full stream deletes its oldest messages, read or
        not (a limit set live, until the publisher makes it discard new), and max age deletes them at any rate;
        nothing else sees it (the relay marked them published). `state`: the durable's, just read.

        Blind spot: a durable that filters some of the stream's subjects cannot tell its deleted messages from
        the others' (JetStream keeps no trace of a deleted message's subject), so its loss is counted only while
        it is behind; one whose service was down past the max age finds nothing pending and counts nothing."""
        try:
            if state is None:
                state = await self._read_durable(js)
            info = await js.stream_info(self._stream)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("consumer %s: could not look for events its stream deleted unread: %s", self._durable, exc)
            return
        stream = info.state
        if self._lost_through > stream.last_seq:
            self._lost_through = 0  # the stream was created anew
        behind = (state.num_pending or 0) + (state.num_ack_pending or 0) > 0
        # A durable that filters some of the stream's subjects does not move its ack floor past the others'
        # messages, so a gap while it is caught up is theirs. The stream's subjects as they are: a newer
        # publisher, or an operator, may have added some this consumer was not configured with.
        durable_filter = filter_of(state.config)
        # A stream that reports no subjects (a mirror, or one fed only by sources) takes messages of subjects
        # it does not list: the filter cannot be known to cover them, so the durable counts as filtering.
        subjects = info.config.subjects or []
        whole = not durable_filter or (
            bool(subjects) and all(any(covers(f, s) for f in durable_filter) for s in subjects)
        )
        floor = (state.ack_floor.stream_seq or 0) if state.ack_floor is not None else 0
        deleted_through = (stream.first_seq or 1) - 1
        since = max(floor, self._lost_through)
        # A deleted message this replica holds is its handler's to acknowledge, one let go since `state` was read
        # most likely acknowledged since: not lost.
        # Only its own, by sequence: the durable's pending count also covers messages waiting for a redelivery
        # that will never come, which are lost. Another replica's in-hand messages are counted (one page too
        # many, rather than a loss hidden).
        in_hand = sum(1 for seq in self._in_hand | self._let_go if since < seq <= deleted_through)
        lost = deleted_through - since - in_hand
        if lost > 0 and (whole or behind or self._was_behind):
            log.error(
                "consumer %s lost %d event(s) of stream %s: sequences %d to %d were deleted before it acknowledged "
                "them (a full stream under discard old, or its max age), and are never applied%s. Make the stream "
                "discard new (`nats stream edit --discard new %s`), and have the events published again from their "
                "service's data (docs/operations.md, ShopmeshEventsLost)",
                self._durable,
                lost,
                self._stream,
                since + 1,
                deleted_through,
                f" ({in_hand} of them, delivered and being handled, not counted)" if in_hand else "",
                self._stream,
                extra={"consumer": self._durable, "stream": self._stream},
            )
            if self._metrics is not None:
                self._metrics.lost.labels(self._stream, self._durable).inc(lost)
        self._lost_through = max(self._lost_through, deleted_through)
        self._was_behind = behind

    async def purge_processed(self) -> int:
        """Forget the event ids this consumer applied longer than the retention ago, in batches; how many."""
        if self._processed_retention <= 0:
            return 0
        # The stream as its publisher configured it, read at each purge (a max age raised since counts at once):
        # an id is kept while its event may still be on the stream, whatever this consumer's own settings say;
        # for ever if the stream is. Unread (not connected yet, NATS away), nothing is purged: an id deleted by
        # a guess is gone for good, while its event may still be delivered again.
        max_age = await self._read_stream_max_age()
        self._purge_skipped = max_age is None
        if not max_age:
            return 0
        # Dead letters wait for an operator however long that takes, and a replay runs under the original
        # event id: an event applied meanwhile (by this replica while one of a broken release parked it, or
        # parked twice) must still find its id then, or the replay applies it a second time. Read after the
        # max age and before the delete: a letter parked later is of an event still on the stream, applied
        # after the cutoff.
        waiting = await self._read_waiting_event_ids()
        if waiting is None:
            self._purge_skipped = True
            return 0
        retention = max(self._processed_retention, max_age + _PURGE_MARGIN_SECONDS)
        cutoff = utc_now() - timedelta(seconds=retention)
        mine = processed_events.c.consumer == self._durable
        condition = mine & (processed_events.c.processed_at < cutoff)
        if waiting:
            condition = condition & processed_events.c.event_id.not_in(sorted(waiting))
        deleted = await delete_in_batches(
            self._db, processed_events, processed_events.c.event_id, condition, batch_size=self._purge_batch_size
        )
        if deleted:
            log.info(
                "%s forgot %d event ids applied before %s",
                self._durable,
                deleted,
                cutoff.isoformat(timespec="seconds"),
            )
        if self._on_purge is not None and not waiting:
            # No event applied before the cutoff can come again, nor be replayed: the service may forget what
            # it keeps only against such an event. Not while dead letters wait: which of its records a
            # replay needs is the service's to know, not this consumer's (replay or discard them).
            await self._on_purge(cutoff)
        return deleted

    async def _read_waiting_event_ids(self) -> set[str] | None:
        """The ids of the events parked or replayed for this consumer; None when they cannot be read (NATS
        away), or are too many to keep by name: the purge then forgets nothing."""
        client = self._connection.current()
        if client is None or not client.is_connected:
            return None
        try:
            waiting = await waiting_event_ids(client.jetstream(), self._durable, limit=_KEPT_FOR_DEAD_LETTERS)
        except (nats.errors.Error, TimeoutError) as exc:
            log.info("%s keeps its event ids for now: cannot read its dead letters: %s", self._durable, exc)
            return None
        if len(waiting) > _KEPT_FOR_DEAD_LETTERS:
            log.warning(
                "%s keeps all its event ids: more than %d events wait as its dead letters; replay or discard them",
                self._durable,
                _KEPT_FOR_DEAD_LETTERS,
            )
            return None
        return waiting

    async def _read_stream_max_age(self) -> float | None:
        """The stream's max age as NATS says now; None when it cannot be read (not connected yet, NATS away)."""
        client = self._connection.current()
        if client is None or not client.is_connected:
            return None
        try:
            info = await client.jetstream().stream_info(self._stream)
        except (nats.errors.Error, TimeoutError) as exc:
            # Not the max age read before either: it may have been raised since. A purge skipped only waits.
            log.info("%s keeps its event ids for now: cannot read stream %s: %s", self._durable, self._stream, exc)
            return None
        return info.config.max_age or 0.0

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
        slots (_may_park), and handed back again while it is not."""
        if any(covers(retired, event.subject) for retired in self._retired):
            await message.ack()
            self._forget(message)
            self._count(event, "retired")
            self._say_not_handled(event, "acknowledges without applying them: its release retired the subject")
            return
        key = self._delivery(message)
        handed_back = self._handed_back.get(key, 0) if key is not None else 0
        waited = self._handed_back_for(message)
        if waited is not None and waited >= self._handback_max and await self._may_park(handed_back, replayed):
            error = f"subject {event.subject} is not consumed by this release (handed back for {waited:.0f} s)"
            await self._park(message, event, error, attempts=0, say=False)
            self._say_not_handled(
                event,
                f"parks them as dead letters once handed back for {self._handback_max:g} s while the durable "
                "is short of slots (replay them once a release that consumes the subject runs)",
                level=logging.ERROR,
            )
            return
        delay = self._handback[min(handed_back, len(self._handback) - 1)]
        self._remember(self._handed_back, key, handed_back + 1)
        await message.nak(delay=delay)
        self._count(event, "handed_back")
        self._say_not_handled(
            event,
            "hands them back for a replica of a release that consumes the subject (each waits for one "
            f"at least {self._handback_max:g} s after it was published, then is parked as a dead letter "
            "if the durable is short of slots)",
        )

    async def _may_park(self, handed_back: int, replayed: bool) -> bool:
        """Whether an overdue message this replica handed back `handed_back` times may be parked: once it
        was handed back at each delay of the schedule (an event first delivered late, from a backlog, still
        gets a few chances at a newer replica), only when the durable is short of slots (what parking is
        for), and never while the database is away (a newer replica waits the outage out with it, and this
        one, which never touches the database for it, would park what that one is about to apply): neither
        while its own events fail for it, nor when it does not answer a check (_database_answers)."""
        if handed_back < len(self._handback) or self._outage.ongoing:
            return False
        stream, durable = (REPLAY_STREAM, replay_durable(self._durable)) if replayed else (self._stream, self._durable)
        pending = await self._ack_pending(stream, durable)
        if pending is None or pending < self._max_ack_pending * _SHORT_OF_SLOTS:
            return False
        return await self._database_answers()

    async def _database_answers(self) -> bool:
        """Whether the database answered a check lately, checked again when the last answer is older than
        `database_check_seconds`. Its own events failing tell a replica the database is away, but one with none
        of its own to apply (all it gets is a newer release's, as in a full rollback once its own subjects
        go quiet) learns it only this way. A check that fails for any reason counts as away: a park is
        not made on a guess, and the event is handed back again."""
        now = time.monotonic()
        checked = self._database_checked
        if checked is not None and now - checked[0] < self._database_check_seconds:
            return checked[1]
        try:
            await self._db.ping(_DATABASE_CHECK_TIMEOUT)
        except Exception as exc:
            answered = False
            said = self._database_unanswered_said
            if said is None or now - said >= _SAY_AGAIN_SECONDS:
                self._database_unanswered_said = now
                log.warning(
                    "consumer %s hands overdue events back instead of parking them: its database does not "
                    "answer, and a replica that consumes them would apply them once it does: %s",
                    self._durable,
                    cause_line(exc),
                )
        else:
            answered = True
            self._database_unanswered_said = None
        # From the end of the check: one that took its whole bound is not at once out of date.
        self._database_checked = (time.monotonic(), answered)
        return answered

    async def _ack_pending(self, stream: str, durable: str) -> int | None:
        """The durable's last known count of unsettled messages, read again when older than a few seconds;
        None when it cannot be read (a park is then not made on a guess)."""
        now = time.monotonic()
        read = self._slots_read.get((stream, durable))
        if read is not None and now - read[0] < self._slots_read_seconds:
            return read[1]
        pending: int | None = None
        client = self._connection.current()
        if client is not None and client.is_connected:
            try:
                pending = (await client.jetstream().consumer_info(stream, durable)).num_ack_pending or 0
            except (nats.errors.Error, TimeoutError) as exc:
                log.info("%s hands events back for now: cannot read its durable's slots: %s", durable, exc)
        self._slots_read[(stream, durable)] = (now, pending)
        return pending

    def _handed_back_for(self, message: Msg) -> float | None:
        """Seconds since the message was stored, by the stream's timestamp: the same on every delivery and
        to every replica, so the bound holds across replicas and restarts, where a count of this process'
        own would start over at each."""
        if message.metadata is None or message.metadata.timestamp is None:
            return None
        waited = (self._clock() - message.metadata.timestamp).total_seconds()
        # A stream timestamp further ahead of the replica's clock than the skew the project assumes is worth
        # saying (the replica's clock or NATS' is off): the hand-back bound is measured across the two clocks.
        if waited < -MAX_CLOCK_SKEW_SECONDS:
            now = time.monotonic()
            if self._skew_said is None or now - self._skew_said >= _SAY_AGAIN_SECONDS:
                self._skew_said = now
                log.warning(
                    "consumer %s: a message's stream timestamp is %.0f s ahead of this replica's clock; the "
                    "hand-back bound is off by as much (check the clocks of this host and NATS')",
                    self._durable,
                    -waited,
                )
        return waited

    def _say_not_handled(self, event: Event, what: str, *, level: int = logging.WARNING) -> None:
        """One line per subject and outcome, then at most one a minute with how many since: in a full
        rollback every such message comes back a few times a minute until it is parked."""
        now = time.monotonic()
        key = (event.subject, what)
        said, since = self._handed_back_said.get(key, (None, 0))
        if said is not None and now - said < _SAY_AGAIN_SECONDS:
            self._handed_back_said[key] = (said, since + 1)
            return
        self._handed_back_said[key] = (now, 0)
        log.log(
            level,
            "consumer %s does not handle %s events and %s (%d more since the last line; latest: event %s)",
            self._durable,
            event.subject,
            what,
            since,
            event.event_id,
            extra={"event_id": event.event_id},
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
                {"consumer": self._durable, "event_id": event.event_id, "processed_at": utc_now()},
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
        """Move the message to the dead-letter stream with why (`error`) and the handler's attempts on it,
        then acknowledge it; `say` False when the caller logs it its own way."""
        where = parked_subject(self._durable, event.subject)
        if say:
            log.error(
                "event %s failed %d times, parking it on %s: %s",
                event.event_id,
                attempts,
                where,
                error,
                extra={"event_id": event.event_id},
            )
        client = self._connection.current()
        if client is None:
            # The server closed the connection: _run connects anew, and the message comes back after its ack wait.
            raise nats.errors.ConnectionClosedError
        # The park's id names the delivery that failed (stream and sequence): the same delivery parked
        # twice (a crash before the ack) is one dead letter, while the same event parked again after a
        # replay within the duplicate window is a new one, not dropped as a duplicate.
        stored_at = (message.metadata.stream, message.metadata.sequence.stream) if message.metadata else None
        delivery = f"{stored_at[0]}:{stored_at[1]}" if stored_at is not None else ""
        headers = {
            **{k: v for k, v in event.headers.items() if k != MSG_ID},
            MSG_ID: f"{self._durable}:{event.event_id}:{delivery}",
            ORIGINAL_SUBJECT: event.subject,
            ORIGINAL_EVENT_ID: event.event_id,
            ATTEMPTS: str(attempts),
        }
        # A letter over the server's max_payload would be answered with -ERR and a closed connection: the
        # message back after its ack wait, parked in vain again, for ever, and the poison behind it never parked.
        letter = fitted_letter(event.payload, headers, error, client.max_payload, stored_at=stored_at)
        # Why no letter went out, for the drop's log line: what the operator must change before it recurs.
        refused = f"not even its headers fit under NATS' max_payload ({client.max_payload} bytes)"
        if letter is not None:
            try:
                await client.jetstream().publish(where, letter[0], headers=letter[1])
            except Exception as exc:
                why = refused_for_good(exc)
                if why is None:
                    raise  # an outage: the message comes back after its ack wait, and is parked then
                refused = why
                letter = await self._park_without_payload(client, where, letter, stored_at, why)
        if letter is None:
            await self._drop(message, event, where, stored_at, refused)
            return
        if PAYLOAD_OMITTED in letter[1]:
            log.error(
                "event %s parked on %s without its payload: %s",
                event.event_id,
                where,
                letter[1][PAYLOAD_OMITTED],
                extra={"event_id": event.event_id},
            )
        await message.ack()
        self._forget(message)
        self._count(event, "dead_lettered")
        self._parked.set()

    async def _park_without_payload(
        self,
        client: nats.aio.client.Client,
        where: str,
        letter: tuple[bytes, dict[str, str]],
        stored_at: tuple[str, int] | None,
        refused: str,
    ) -> tuple[bytes, dict[str, str]] | None:
        """JetStream refused the letter for good (`refused`: the dead-letter stream's max message size, say):
        park it without its payload, saying where the event is stored; None when that is refused too."""
        if PAYLOAD_OMITTED in letter[1]:
            return None
        why = f"{len(letter[0])} bytes refused by JetStream ({refused})"
        omitted = payload_omitted(letter[1], why, stored_at, client.max_payload)
        if omitted is None:
            return None
        try:
            await client.jetstream().publish(where, omitted[0], headers=omitted[1])
        except Exception as exc:
            if refused_for_good(exc) is None:
                raise
            return None
        return omitted

    async def _drop(
        self, message: Msg, event: Event, where: str, stored_at: tuple[str, int] | None, refused: str
    ) -> None:
        """Not even a letter without its payload is taken: acknowledged unparked, said and counted, rather than
        delivered, refused and delivered again for ever (holding a slot of the durable).

        The event is lost to this consumer: the log line is the only record of it, so it carries all the
        runbook (docs/operations.md, ShopmeshEventsDropped) needs to find it (`nats stream get <stream>
        <sequence>` while the stream keeps it) and to stop the next: consumer, event id, subject, stream,
        sequence (`stored_at`, None when the message carried no metadata), and why NATS refused (`refused`, its
        last refusal). In the message and as JSON fields."""
        stream, sequence = stored_at if stored_at is not None else ("?", "?")
        log.error(
            "consumer %s dropped event %s (subject %s, stored as stream %s sequence %s while that stream keeps "
            "it): after its last attempt it could not be parked on %s (%s); acknowledged unapplied",
            self._durable,
            event.event_id,
            event.subject,
            stream,
            sequence,
            where,
            refused,
            extra={
                "event_id": event.event_id,
                "consumer": self._durable,
                "subject": event.subject,
                "stream": stream,
                "stream_sequence": sequence,
            },
        )
        await message.ack()
        self._forget(message)
        self._count(event, "dropped")
        if self._metrics is not None:
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
