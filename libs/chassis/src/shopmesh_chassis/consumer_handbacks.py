"""Messages of a subject this release does not consume (a newer release's, sharing the durable during a
rollout): how long each is handed back, and when it is parked instead.

A message handed back stays ack-pending, and `max_ack_pending` of them would stall the durable; so past
`max_seconds` after it was stored it may be parked, but only when the durable is short of slots and the
database is not away (a newer replica would apply it once the database is back). The consumer keeps the
count of hand-backs per message and does the handing back and parking; this decides and says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from shopmesh_chassis.clocks import MAX_CLOCK_SKEW_SECONDS, Clock
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import OutageReport, cause_line
from shopmesh_chassis.deadletters import REPLAY_STREAM, replay_durable
from shopmesh_chassis.events import NatsConnection

if TYPE_CHECKING:
    from shopmesh_chassis.consumer import Event

log = logging.getLogger("shopmesh.consumer")

# A condition that repeats with every delivery (the database away; events of a subject this release does not
# consume, per subject; a clock skew) is said once, then at most this often.
SAY_AGAIN_SECONDS = 60.0
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


class HandBacks:
    """One consumer's rule for the messages it does not consume: their delay, and whether one may be parked."""

    def __init__(
        self,
        database: Database,
        connection: NatsConnection,
        outage: OutageReport,
        *,
        durable: str,
        stream: str,
        delays: Sequence[float],
        max_seconds: float,
        max_ack_pending: int,
        slots_read_seconds: float,
        database_check_seconds: float,
        clock: Clock,
    ) -> None:
        self._db = database
        self._connection = connection
        # The consumer's own events failing tell that the database is away.
        self._outage = outage
        self._durable = durable
        self._stream = stream
        # The delay before a message of a subject this release does not handle comes back, by its delivery
        # (the last repeats): short while a newer replica likely runs, then slower, so a full rollback leaves
        # such messages coming back a few times a minute rather than spinning.
        self._handback = list(delays)
        # How long after it was stored (its stream timestamp, the same on every delivery, to every replica,
        # across restarts) such a message is surely handed back; past it, it may be parked (_may_park).
        self.max_seconds = max_seconds
        self._max_ack_pending = max_ack_pending
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

    async def overdue(self, message: Msg, handed_back: int, *, replayed: bool) -> float | None:
        """How long ago the message was stored, when it is to be parked rather than handed back again
        (past max_seconds, and _may_park); None while it is handed back. `handed_back`: how many times this
        replica did already."""
        waited = self._handed_back_for(message)
        if waited is not None and waited >= self.max_seconds and await self._may_park(handed_back, replayed):
            return waited
        return None

    def delay(self, handed_back: int) -> float:
        """The wait before a message this replica handed back `handed_back` times comes back again."""
        return self._handback[min(handed_back, len(self._handback) - 1)]

    def read_slots(self, ack_pending: int) -> None:
        """The durable's ack-pending count as the consumer's gauges read it: as good for a park as a read here."""
        self._slots_read[(self._stream, self._durable)] = (time.monotonic(), ack_pending)

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
            if said is None or now - said >= SAY_AGAIN_SECONDS:
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
        client = self._connection.connected()
        if client is not None:
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
            if self._skew_said is None or now - self._skew_said >= SAY_AGAIN_SECONDS:
                self._skew_said = now
                log.warning(
                    "consumer %s: a message's stream timestamp is %.0f s ahead of this replica's clock; the "
                    "hand-back bound is off by as much (check the clocks of this host and NATS')",
                    self._durable,
                    -waited,
                )
        return waited

    def say(self, event: Event, what: str, *, level: int = logging.WARNING) -> None:
        """One line per subject and outcome, then at most one a minute with how many since: in a full
        rollback every such message comes back a few times a minute until it is parked."""
        now = time.monotonic()
        key = (event.subject, what)
        said, since = self._handed_back_said.get(key, (None, 0))
        if said is not None and now - said < SAY_AGAIN_SECONDS:
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
