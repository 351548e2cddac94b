"""The transactional outbox: events are rows written in the same transaction as the state change they
announce; a relay publishes them to JetStream, with the event id as de-duplication id, and marks them
published only after the stream acknowledged them. A relay killed between publishing and marking
publishes again after restart, and JetStream drops the duplicate. Published rows are deleted once older
than the relay's retention (EventSettings.outbox_retention_seconds); unpublished ones never.

The order kept: the relay publishes in the order the events were written (`seq`, taken at INSERT). So the
events of one transaction go out in the order it added them, and an event goes out after every event of a
transaction that had committed before it was written: a change that follows another (the next step of a
saga, a change to a row the previous one locked first) is announced after it. Not commit order between
transactions that overlap: on PostgreSQL one that took its seq first and commits last is published after
events written later by another (they were not visible when the relay passed them); on SQLite writers are
serialised, so the two coincide. Nothing is lost either way. A consumer that needs a total order across
aggregates must not rely on the stream's.

An event NATS refuses for good (larger than the server's max_payload or the stream's max message size) is
set aside (`failed_at`, `error`), logged at ERROR and counted (shopmesh_outbox_set_aside_events): the
events behind it go on, and it waits for an operator (docs/operations.md). Set aside, it goes out of order
if re-sent.

Traced as OpenTelemetry's messaging conventions (v1.26 and on) trace a message created in one place and sent
later from another: `add_event` records a PRODUCER span `create <subject>` in the writer's trace, and the
event's stored `traceparent` is that span's, its creation context, which the consumers' spans continue. The
relay sends each event in a CLIENT span `send <subject>` of a trace of its own (it runs outside any request),
linked to the event's create span, with how long the event waited in the outbox and how its publish ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Protocol

from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shopmesh_chassis.clocks import utc_now
from shopmesh_chassis.config import EventSettings
from shopmesh_chassis.db import Database, DbConnection, as_utc, connect_failures_unreachable, try_session_lock
from shopmesh_chassis.events import EVENT_TYPE, messaging_attributes, refused_for_good, stream_full
from shopmesh_chassis.ids import new_id
from shopmesh_chassis.metrics import OUTBOX_COUNT_CAP, OutboxMetrics
from shopmesh_chassis.periodic import Periodic, delete_in_batches
from shopmesh_chassis.tables import outbox_events as outbox
from shopmesh_chassis.tasks import cancel_and_wait, finish_despite_one_cancel, stop_if_cancelled
from shopmesh_chassis.tracing import stored_context

log = logging.getLogger("shopmesh.outbox")
tracer = trace.get_tracer("shopmesh.outbox")

# "SPOB": one publishing relay per database, so that each event goes out once, in seq order, across replicas.
_PG_RELAY_LOCK = 0x5350_4F42


# Built once: the relay and every state change run these (see db.py on the cost of building statements).
_INSERT = insert(outbox)
_MARK_PUBLISHED = (
    update(outbox).where(outbox.c.seq.in_(bindparam("b_seqs", expanding=True))).values(attempts=outbox.c.attempts + 1)
)
_SET_ASIDE = (
    update(outbox)
    .where(outbox.c.seq == bindparam("b_seq"))
    .values(failed_at=bindparam("b_failed_at"), error=bindparam("b_error"), attempts=outbox.c.attempts + 1)
)
# On ix_chassis_outbox_failed: only the set-aside rows are read.
_COUNT_SET_ASIDE = select(func.count()).select_from(outbox).where(outbox.c.failed_at.is_not(None))


# The last pass a stopping relay makes: part of SHUTDOWN_HOOKS_MARGIN_SECONDS (config.py).
_FINAL_PASS_SECONDS = 1.0


def new_event_id() -> str:
    return new_id("evt_")


async def add_event(session: DbConnection, *, subject: str, message: Message, event_id: str) -> None:
    """Record `message` for publication; commits or rolls back with the caller's transaction."""
    headers: dict[str, str] = {"Content-Type": "application/protobuf", EVENT_TYPE: message.DESCRIPTOR.full_name}
    with tracer.start_as_current_span(
        f"create {subject}", kind=SpanKind.PRODUCER, attributes=messaging_attributes(subject, event_id, "create")
    ):
        # This span's context, not the writer's: the event's creation context, which its consumers' spans
        # continue and its send span links to, whenever and by whichever replica it goes out.
        propagate.inject(headers)
        await session.execute(
            _INSERT,
            {
                "event_id": event_id,
                "subject": subject,
                "payload": message.SerializeToString(),
                "headers": json.dumps(headers),
                "created_at": utc_now(),
                "attempts": 0,
            },
        )


def _waited(created_at: datetime) -> float:
    """Seconds since an event was written."""
    return max(0.0, (utc_now() - as_utc(created_at)).total_seconds())


def _failed(span: Span, exc: BaseException, why: str | None) -> None:
    """Say on a send span that its publish failed: set aside (`why` NATS refuses the event for good), or
    failed for now (an outage, a stop's cancel: the event waits for a later pass)."""
    span.set_attribute("shopmesh.outcome", "failed" if why is None else "set_aside")
    kind = type(exc)
    # Named as the span's exception event names it (nats.errors.MaxPayloadError).
    named = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    span.set_attribute("error.type", named)
    span.record_exception(exc)
    span.set_status(trace.StatusCode.ERROR, why or f"{type(exc).__name__}: {exc}")


def _send_span(subject: str, event_id: str, headers: dict[str, str], created_at: datetime, size: int) -> Span:
    """The span of one event's publish. CLIENT, not PRODUCER: the conventions make a send span PRODUCER only
    when its own context is the message's creation context, and an outbox event's is its create span's, stored
    with it. A trace of its own (the relay runs outside any request; a parent would make every consumer a
    sibling of the publish), linked to that creation context, which the sampler follows (tracing.sampler).
    One span per event, not per pass: each publish is a request of its own that JetStream acknowledges."""
    created = trace.get_current_span(stored_context(headers)).get_span_context()
    attributes = messaging_attributes(subject, event_id, "send")
    attributes["messaging.message.body.size"] = size
    # The outbox's part in the event's delay (a relay lagging, NATS away): shown on the span, where the
    # create span, in another trace, is not beside it.
    attributes["shopmesh.outbox.wait_seconds"] = _waited(created_at)
    return tracer.start_span(
        f"send {subject}",
        context=Context(),
        kind=SpanKind.CLIENT,
        links=[Link(created)] if created.is_valid else None,
        attributes=attributes,
    )


class Publisher(Protocol):
    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool: ...


class OutboxRelay:
    @classmethod
    def from_settings(
        cls, settings: EventSettings, database: Database, publisher: Publisher, metrics: OutboxMetrics
    ) -> OutboxRelay:
        """A relay as a service runs it: retention of published rows from its settings."""
        return cls(
            database,
            publisher,
            metrics=metrics,
            retention_seconds=settings.outbox_retention_seconds,
            purge_interval_seconds=settings.event_purge_interval_seconds,
        )

    def __init__(
        self,
        database: Database,
        publisher: Publisher,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        max_backoff: float = 5.0,
        on_published: Callable[[str], None] | None = None,
        metrics: OutboxMetrics | None = None,
        retention_seconds: float = 86400.0,
        purge_interval_seconds: float = 3600.0,
        purge_batch_size: int = 500,
    ) -> None:
        self._db = database
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._on_published = on_published
        self._metrics = metrics
        # When the oldest event read and not yet published was created (None: caught up, or not known).
        self._oldest_unpublished: datetime | None = None
        # How many rows are set aside, as the last pass counted them (None: not known, count at the next pass).
        self._set_aside: int | None = None
        if metrics is not None:
            metrics.oldest_unpublished.set_function(self.oldest_unpublished_age)
            # From the start, not the first pass: a relay that never completes one must show it too.
            metrics.relay_pass.set(time.time())
        self._pending = (
            select(
                outbox.c.seq,
                outbox.c.event_id,
                outbox.c.subject,
                outbox.c.payload,
                outbox.c.headers,
                outbox.c.created_at,
            )
            .where(outbox.c.published_at.is_(None), outbox.c.failed_at.is_(None))
            .order_by(outbox.c.seq)
            .limit(batch_size)
        )
        # The events waiting behind a full batch, counted on the index the read above uses
        # (ix_chassis_outbox_unpublished) and no further than the gauge's cap: a COUNT(*) of a backlog of a
        # million rows would read a million index entries every pass, while it is draining too.
        self._beyond_cap = max(0, OUTBOX_COUNT_CAP - batch_size)
        waiting_beyond = (
            select(outbox.c.seq)
            .where(outbox.c.published_at.is_(None), outbox.c.failed_at.is_(None), outbox.c.seq > bindparam("b_after"))
            .limit(self._beyond_cap)
            .subquery()
        )
        self._count_beyond = select(func.count()).select_from(waiting_beyond)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # 0: published rows are kept for ever.
        self._retention = retention_seconds
        self._purge_batch_size = purge_batch_size
        self._purge = Periodic("outbox-purge", purge_interval_seconds, self.purge_published)
        # Why the stream last refused the relay as full (None: it did not, or a pass got through since).
        self._stream_full: str | None = None
        # PostgreSQL: the connection holding the relay lock, and whether it holds it (see _lead).
        self._leader: AsyncConnection | None = None
        self._leading = False

    def oldest_unpublished_age(self) -> float:
        """Seconds since the oldest event this relay read but could not publish yet was written; 0 when
        its last pass published everything it read."""
        oldest = self._oldest_unpublished
        return 0.0 if oldest is None else _waited(oldest)

    def wake(self) -> None:
        """Publish soon: call after committing a transaction that added events."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-relay")
        if self._retention > 0:
            self._purge.start()

    async def stop(self) -> None:
        """Stop relaying, after a last pass of at most _FINAL_PASS_SECONDS for what was committed since the
        last one (the sagas a shutdown lets finish write their events just before): else those wait for the
        next start, or for another replica's relay."""
        try:
            # A purge cut short loses nothing: each batch is a transaction of its own, and the next run goes on.
            # Half a second, and the last pass 1 s: the 1.5 s after the grace that SHUTDOWN_HOOKS_MARGIN_SECONDS
            # (3 s) leaves them.
            await self._purge.stop(timeout=0.5)
            if self._task is not None:
                await cancel_and_wait(self._task)
                self._task = None
                try:
                    async with asyncio.timeout(_FINAL_PASS_SECONDS):
                        while await self.publish_pending() >= self._batch_size:
                            pass
                except Exception as exc:  # NATS or the database away, or out of time: the events stay for later
                    log.warning("outbox: last pass before stopping did not finish: %r", exc)
        finally:
            # Also when the shutdown hook is cut off: the lock's own connection is not the pool's to close.
            await self._step_down()

    async def purge_published(self) -> int:
        """Delete the rows published longer than the retention ago, in batches; returns how many."""
        if self._retention <= 0:
            return 0
        cutoff = utc_now() - timedelta(seconds=self._retention)
        deleted = await delete_in_batches(
            self._db, outbox, outbox.c.seq, outbox.c.published_at < cutoff, batch_size=self._purge_batch_size
        )
        if deleted:
            log.info("deleted %d outbox events published before %s", deleted, cutoff.isoformat(timespec="seconds"))
        return deleted

    async def _run(self) -> None:
        backoff = self._poll_interval
        while True:
            # Cleared before the pass, not after: an event committed while the pass runs sets it again,
            # and the wait below returns at once for it. So a pass that found fewer events than a
            # batch needs no second, empty read to be sure it missed nothing.
            self._wake.clear()
            try:
                published = await self.publish_pending()
                backoff = self._poll_interval
                self._say_stream_full(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS away or the database busy: keep the events, try again later from the same one.
                full = stream_full(exc)
                if full is None:
                    log.warning("outbox relay pass failed, retrying in %.1fs: %s", backoff, exc)
                self._say_stream_full(full)
                if self._metrics is not None:
                    self._metrics.relay_failures.inc()
                published = 0
                backoff = min(backoff * 2, self._max_backoff)
            # A pass (a publish, a lock's connection) or the wait below that lost the relay's cancel: else it
            # polls on for the whole budget.
            stop_if_cancelled()
            if published >= self._batch_size:
                continue  # a full batch: there may be more right behind it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            stop_if_cancelled()

    def _say_stream_full(self, full: str | None) -> None:
        """Say once that the stream refuses events as full (`full`: JetStream's reason), and once that it takes
        them again (None after a pass that got through), the gauge set to match. Not the generic pass failure:
        nothing is wrong with NATS, and the fix is the stream's limits."""
        if self._metrics is not None:
            self._metrics.stream_full.set(0 if full is None else 1)
        if full is not None and self._stream_full is None:
            log.error(
                "outbox: the NATS stream is full (%s) and refuses every event: they wait in the outbox, the relay "
                "retries them. Under LIMITS retention messages every consumer acknowledged count toward the limit "
                "until they age out: raise the limit (`nats stream edit --discard new <STREAM> --max-msgs ...`), "
                "or lower the max age (docs/operations.md, ShopmeshOutboxStreamFull)",
                full,
            )
        elif full is None and self._stream_full is not None:
            log.info("outbox: the NATS stream takes events again")
        self._stream_full = full

    async def publish_pending(self) -> int:
        """One pass: publish the oldest unpublished events in seq order, setting aside those NATS refuses for
        good; returns how many were sent."""
        if self._db.dialect != "postgresql":
            # SQLite: one process owns the file, and this relay is its only publisher.
            sent = await self._publish_batch(self._db.read, self._db.transaction)
        else:
            if not await self._lead():
                # Another replica publishes: what this one saw unpublished when it led is no longer its to
                # report (the age gauge's alert would fire on an outbox another replica has emptied). Nor is
                # this a pass over the outbox: counted as one, it would hide a leader that hangs.
                self._oldest_unpublished = None
                self._set_aside = None  # the leader may set rows aside meanwhile: count again when leading
                self._stream_full = None
                if self._metrics is not None:
                    self._metrics.unpublished.set(0)
                    self._metrics.set_aside.set(0)
                    self._metrics.stream_full.set(0)
                return 0
            try:
                sent = await self._publish_batch(self._on_leader, self._on_leader)
            except BaseException:
                # The lock's connection may be gone, and the lock with it: let go, take it again next pass.
                await self._step_down()
                raise
        if self._metrics is not None:
            # Only now: the age gauge says nothing of a relay that stopped passing (it keeps its last value,
            # 0 after a batch sent whole), so the time of the last pass that got through must show it.
            self._metrics.relay_pass.set(time.time())
        return sent

    async def _lead(self) -> bool:
        """Whether this relay holds the relay lock of the database, taking it now if it is free.

        The lock is a session-level advisory lock, kept across passes on a connection of its own: taking
        and releasing it every pass cost four round trips per event. The leader reads and marks events on
        that same connection, so losing it (and the lock with it) fails the pass instead of going unseen.
        Cut off without a word (a node gone, a partition), that session would hold the lock on the server for
        its TCP's defaults, up to about two hours: the attempt has the server give up on it within about a
        minute (`db.try_session_lock`), for this session only (it never returns to the pool, `_step_down`),
        on every attempt, its connection reopened unseen (its backend killed while it did not lead) included.
        A failed attempt closes the connection, as a failed pass does.
        """
        if self._leader is None:
            with connect_failures_unreachable(self._db.postgres_engine):
                self._leader = await self._db.postgres_engine.connect()
            self._leading = False
        if not self._leading:
            try:
                async with self._on_leader() as connection:
                    self._leading = await try_session_lock(connection, _PG_RELAY_LOCK)
            except BaseException:
                # The connection may be broken (its backend gone): a fresh one next pass, not this one reopened.
                await self._step_down()
                raise
        return self._leading

    @contextlib.asynccontextmanager
    async def _on_leader(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the lock's connection."""
        assert self._leader is not None
        async with self._leader.begin():
            yield self._leader

    async def _step_down(self) -> None:
        """Close the lock's connection for good: the server releases the lock with it (returned to the
        pool instead, the connection would go on holding it)."""
        leader, self._leader, self._leading = self._leader, None, False
        self._set_aside = None  # another replica may lead, and set rows aside, before this one leads again
        if leader is not None:
            with contextlib.suppress(Exception):
                await leader.invalidate()
            with contextlib.suppress(Exception):
                await leader.close()

    async def _publish_batch(
        self,
        read: Callable[[], contextlib.AbstractAsyncContextManager[DbConnection]],
        write: Callable[[], contextlib.AbstractAsyncContextManager[DbConnection]],
    ) -> int:
        # A snapshot read: rows are only ever marked by the one relay holding the lock, so nothing here
        # needs the write lock (on SQLite it would queue behind the service's own writers).
        async with read() as session:
            rows = (await session.execute(self._pending)).all()
            # A batch that came back short holds every event that waits: it tells the count for free. Only
            # behind a full one (a backlog, or NATS away with events piling up) is there more to count.
            beyond = 0
            if self._metrics is not None and len(rows) >= self._batch_size and self._beyond_cap:
                beyond = await session.scalar(self._count_beyond, {"b_after": rows[-1].seq}) or 0
            # Counted while any are known to be set aside (an operator may re-send or delete them) or after a
            # change of leader; else set aside only by this relay, which adds its own below: no read a pass.
            set_aside_before = self._set_aside
            if self._metrics is not None and set_aside_before != 0:
                set_aside_before = await session.scalar(_COUNT_SET_ASIDE) or 0
        sent: list[int] = []
        refused: list[dict[str, object]] = []
        try:
            # Not inside a transaction: publishing waits on the network and must not hold database locks.
            for row in rows:
                why = await self._send(row)
                if why is not None:
                    refused.append({"b_seq": row.seq, "b_failed_at": utc_now(), "b_error": why})
                    stop_if_cancelled()
                    continue
                sent.append(row.seq)
                if self._on_published is not None:
                    self._on_published(row.event_id)
                # Stopping, though the publish lost the cancel: the rows sent are marked below, the rest wait.
                stop_if_cancelled()
        finally:
            # The first row neither sent nor set aside is the oldest still waiting; a batch gone through whole
            # leaves none known.
            done = len(sent) + len(refused)
            self._oldest_unpublished = rows[done].created_at if done < len(rows) else None
            if self._metrics is not None:
                # Set by the relay that read the outbox (the lock's holder on PostgreSQL), as the age is:
                # a pass that failed before its read keeps the last value, and RelayStalled says so.
                self._metrics.unpublished.set(min(OUTBOX_COUNT_CAP, len(rows) - done + beyond))
            if sent or refused:
                # Not cut off by a stop's cancel (landing here, it would roll the mark back, and the stop's last
                # pass or another replica send the batch again, up to batch_size events JetStream must drop).
                await finish_despite_one_cancel(self._mark(write, sent, refused))
            if set_aside_before is not None:
                # Only once marked: a mark that failed leaves the rows to be refused and set aside again.
                self._set_aside = set_aside_before + len(refused)
                if self._metrics is not None:
                    self._metrics.set_aside.set(self._set_aside)
        return len(sent)

    async def _send(self, row: Row[int, str, str, bytes, str, datetime]) -> str | None:
        """Publish one event, in its send span; returns why NATS refuses it for good (to set it aside), None
        once JetStream has it; raises on an outage."""
        headers = json.loads(row.headers)
        span = _send_span(row.subject, row.event_id, headers, row.created_at, len(row.payload))
        # The outcome and error are set here, once known: the span's own handling would record a set-aside
        # event, caught below, as a success.
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                fresh = await self._publisher.publish(row.subject, row.payload, msg_id=row.event_id, headers=headers)
            except BaseException as exc:
                why = refused_for_good(exc)
                _failed(span, exc, why)
                if why is None:
                    raise  # an outage: this event and those behind it wait for the next pass
                # Retried, it would be refused again every pass, and every event behind it never sent. In the
                # span: the line carries the send's trace id, whose link leads to the event's own trace.
                log.error(
                    "outbox: event %s (%s, subject %s, %d bytes) set aside, NATS refuses it for good: %s; "
                    "the events behind it go on. Re-send or delete it (docs/operations.md, "
                    "ShopmeshOutboxEventsSetAside)",
                    row.event_id,
                    headers.get(EVENT_TYPE, "unknown type"),
                    row.subject,
                    len(row.payload),
                    why,
                )
                return why
            # A duplicate: JetStream had it already (sent before a crash kept it from being marked published).
            span.set_attribute("shopmesh.outcome", "published" if fresh else "duplicate")
            if self._metrics is not None:
                (self._metrics.published if fresh else self._metrics.deduplicated).labels(row.subject).inc()
            return None

    @staticmethod
    async def _mark(
        write: Callable[[], contextlib.AbstractAsyncContextManager[DbConnection]],
        sent: list[int],
        refused: list[dict[str, object]],
    ) -> None:
        async with write() as session:
            if sent:
                await session.execute(_MARK_PUBLISHED, {"b_seqs": sent, "published_at": utc_now()})
            if refused:
                await session.execute(_SET_ASIDE, refused)
