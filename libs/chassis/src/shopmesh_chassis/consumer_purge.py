"""Forgetting the event ids a consumer applied, once no delivery or replay of their events can come.

Applied event ids are forgotten once older than the consumer's retention, and never while their event may
still be on the stream: the stream's own max age, read from NATS at each purge, plus a margin. The ids of
events waiting as the consumer's dead letters (or replays) are kept however old: a replay may come any time
later, under the original id. A service that remembers more of the events it applied forgets it in the same
purge (`on_purge`), by the same cutoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import nats.errors

from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.db import Database
from shopmesh_chassis.deadletters import waiting_event_ids
from shopmesh_chassis.events import NatsConnection
from shopmesh_chassis.periodic import Periodic, delete_in_batches
from shopmesh_chassis.tables import processed_events

log = logging.getLogger("shopmesh.consumer")

# Ids are kept this much longer than the stream keeps their events (a message may sit unacknowledged, and
# clocks differ).
_PURGE_MARGIN_SECONDS = 86400.0
# The most event ids a purge keeps for the consumer's dead letters (each one a bound parameter of the
# purge's statements); with more parked, the purge forgets nothing until fewer are.
_KEPT_FOR_DEAD_LETTERS = 5_000


class ProcessedEventsPurge:
    """The periodic purge of one consumer's applied event ids (none when `retention_seconds` is 0)."""

    def __init__(
        self,
        database: Database,
        connection: NatsConnection,
        *,
        durable: str,
        stream: str,
        retention_seconds: float,
        interval_seconds: float,
        batch_size: int,
        on_purge: Callable[[datetime], Awaitable[object]] | None,
        clock: Clock,
    ) -> None:
        self._db = database
        # The consumer's, read from when it is connected: the purge makes no connection of its own.
        self._connection = connection
        self._durable = durable
        self._stream = stream
        # 0: applied event ids are kept for ever.
        self._retention = retention_seconds
        self._batch_size = batch_size
        # Run by a purge with its cutoff when no dead letter waits: see run.
        self._on_purge = on_purge
        # The consumer's, which stamped processed_at: the cutoff is measured on the same clock.
        self._clock = clock
        self._periodic = Periodic(f"processed-events-purge-{durable}", interval_seconds, self.run)
        # Whether no purge has read the stream's max age since the last one that did (none has at start).
        self._skipped = True

    def start(self) -> None:
        if self._retention > 0:
            self._periodic.start()

    async def stop(self) -> None:
        # A purge cut short loses nothing: each batch is a transaction of its own, and the next run goes on.
        await self._periodic.stop(timeout=1.0)

    def connected(self) -> None:
        """The consumer connected to NATS: a purge that skipped (the start's, which comes before the
        connection; one while NATS was away) runs now that the max age can be read: the next is an interval
        (an hour) away, and a consumer restarted more often would never purge."""
        if self._skipped:
            self._periodic.run_soon()

    async def run(self) -> int:
        """Forget the event ids this consumer applied longer than the retention ago, in batches; how many."""
        if self._retention <= 0:
            return 0
        # The stream as its publisher configured it, read at each purge (a max age raised since counts at once):
        # an id is kept while its event may still be on the stream, whatever this consumer's own settings say;
        # for ever if the stream is. Unread (not connected yet, NATS away), nothing is purged: an id deleted by
        # a guess is gone for good, while its event may still be delivered again.
        max_age = await self._read_stream_max_age()
        self._skipped = max_age is None
        if not max_age:
            return 0
        # Dead letters wait for an operator however long that takes, and a replay runs under the original
        # event id: an event applied meanwhile (by this replica while one of a broken release parked it, or
        # parked twice) must still find its id then, or the replay applies it a second time. Read after the
        # max age and before the delete: a letter parked later is of an event still on the stream, applied
        # after the cutoff.
        waiting = await self._read_waiting_event_ids()
        if waiting is None:
            self._skipped = True
            return 0
        retention = max(self._retention, max_age + _PURGE_MARGIN_SECONDS)
        cutoff = self._clock() - timedelta(seconds=retention)
        mine = processed_events.c.consumer == self._durable
        condition = mine & (processed_events.c.processed_at < cutoff)
        if waiting:
            condition = condition & processed_events.c.event_id.not_in(sorted(waiting))
        deleted = await delete_in_batches(
            self._db, processed_events, processed_events.c.event_id, condition, batch_size=self._batch_size
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
        client = self._connection.connected()
        if client is None:
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
        client = self._connection.connected()
        if client is None:
            return None
        try:
            info = await client.jetstream().stream_info(self._stream)
        except (nats.errors.Error, TimeoutError) as exc:
            # Not the max age read before either: it may have been raised since. A purge skipped only waits.
            log.info("%s keeps its event ids for now: cannot read stream %s: %s", self._durable, self._stream, exc)
            return None
        return info.config.max_age or 0.0
