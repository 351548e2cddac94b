"""What a consumer reads of its durable from NATS: the backlog and dead-letter gauges, and the messages its
stream deleted before the durable acknowledged them (lost, never applied).

Other replicas share the durable, and a replay or discard happens in another process: the gauges come from
what NATS knows, read every `poll_seconds` and after each park, never from this replica's own counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.consumer_durables import covers, filter_of
from shopmesh_chassis.deadletters import DEAD_LETTER_STREAM, parked_subject
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.tasks import stop_if_cancelled

log = logging.getLogger("shopmesh.consumer")


class ConsumerGauges:
    """One consumer's gauges and its look for lost messages; `metrics` None: only the look, logged."""

    def __init__(
        self,
        *,
        durable: str,
        stream: str,
        metrics: EventMetrics | None,
        poll_seconds: float,
        on_ack_pending: Callable[[int], None],
        clock: Clock,
    ) -> None:
        self._durable = durable
        self._stream = stream
        self._metrics = metrics
        self._gauge_poll = poll_seconds
        # Told the durable's ack-pending count at each read (the park of a hand-back goes by it).
        self._on_ack_pending = on_ack_pending
        # The consumer's: the last-read gauge is a wall-clock time, as Prometheus' time() it is compared with.
        self._clock = clock
        # Set after each park: the dead-letter gauge is read again at once.
        self._parked = asyncio.Event()
        if metrics is not None:
            # From the start, not the first read: a replica that never reaches NATS must show it too.
            metrics.consumer_nats_read.labels(durable).set(clock().timestamp())
            # At 0 before any drop: prometheus-client makes a labelled series on first use, already at 1, and
            # increase() (ShopmeshEventsDropped) sees no rise in a series' first sample: the first lost event
            # of each pod would never page.
            metrics.dropped.labels(durable)
            metrics.lost.labels(stream, durable)
        # The stream sequence through which messages deleted before the durable acknowledged them were counted
        # (see look_for_lost), and whether the durable had messages it had not applied at the last look.
        self._lost_through = 0
        self._was_behind = False
        # Stream sequences of the messages this replica's batches hold (fetched, not yet all settled), and of
        # those let go since the durable's state was last read (acknowledged after that read, most likely): not
        # lost when the stream deletes them (see look_for_lost).
        self._in_hand: set[int] = set()
        self._let_go: set[int] = set()

    def hold(self, messages: list[Msg]) -> set[int]:
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

    async def run(self, js: JetStreamContext, metrics: EventMetrics) -> None:
        """Keep the backlog and parked-message gauges current from what NATS knows: other replicas share
        the durable, and a replay or discard happens in another process."""
        mine = parked_subject(self._durable, ">")
        while True:
            try:
                state = await self._read_durable(js)
                self._on_ack_pending(state.num_ack_pending or 0)
                backlog = (state.num_pending or 0) + (state.num_ack_pending or 0)
                metrics.consumer_backlog.labels(self._durable).set(backlog)
                await self.look_for_lost(js, state)
                info = await js.stream_info(DEAD_LETTER_STREAM, subjects_filter=mine)
                metrics.dead_letters.labels(self._durable).set(sum((info.state.subjects or {}).values()))
                metrics.consumer_nats_read.labels(self._durable).set(self._clock().timestamp())
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
        acknowledged, most likely): _let_go starts over, for look_for_lost to discount only what comes after."""
        self._let_go.clear()
        state: ConsumerInfo = await js.consumer_info(self._stream, self._durable)
        return state

    async def look_for_lost(self, js: JetStreamContext, state: ConsumerInfo | None = None) -> None:
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

    def parked(self) -> None:
        """A message was parked: read the dead letters now, not at the next poll."""
        self._parked.set()

    def let_go(self, held: set[int]) -> None:
        """The batch that held these stream sequences is settled (see hold)."""
        self._in_hand -= held
        self._let_go |= held
