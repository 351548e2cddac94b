"""The sender: delivers PENDING notifications one by one, outside any database transaction.

Each attempt is claimed first (a conditional UPDATE moves the notification's next attempt to the end of
the claim), then sent, then its outcome recorded. An order confirmation whose order's cancellation is
recorded by the time it is claimed is not sent but SUPERSEDED.

Once the mail server has answered, a database that is unavailable (a dropped connection, a failover, a
full pool) does not lose the outcome: its write is retried, from the wait the chassis' mapping of the
error names and doubling, until half of what is left of the claim has passed (about SMTP_TIMEOUT_SECONDS
after a quick send; the other half keeps another sender from claiming it meanwhile), each try cut off
there too (one waiting for a connection, or for its reply, is the database unavailable). So an e-mail is
sent a second time only when:
- SENT could not be recorded before its claim ran out: the sender killed (or its stop's grace ended)
  between the mail server's acceptance and that write, the database away for all of the retries (an
  error names the notification), or the send itself outlasting the claim and another sender claiming it
  meanwhile;
- the write of SENT failed with a database error other than unavailable (a serialization failure or
  deadlock, 40001 / 40P01, or a cancelled statement, 57014): raised to the loop, it leaves the
  notification PENDING;
- the mail server received the end of the message's DATA but the attempt's timeout or a dropped
  connection came before its 250 reply: a failed attempt, retried.
Then it goes out again once the claim (or the retry's wait) runs out: at least once, with the same
Message-ID, which mail servers, mail clients and the local SMTP sink recognise as one message. A failed
attempt's outcome is retried alike; one not recorded is attempted again, uncounted.

Each outcome is written only while nobody has claimed the notification since (its next attempt is still
the claim's end), so a write that lands late (its claim ran out during the send, or a try cut off in its
COMMIT) or is repeated (its first COMMIT went through) never moves another sender's
claim back nor rewinds its attempts: nothing is written, and a warning says so. SENT alone is written
over a later claim while the notification is PENDING, its attempts counted on from the stored ones: the
e-mail is delivered (the other sender's copy, if it still goes out, is the one second e-mail).

Each attempt is a CLIENT span, "smtp send", in the trace the notification was recorded in (the consumer
span's context is stored with it; notifications recorded before that start a trace of their own): its
notification and order ids, attempt number and outcome, an error status when it failed, never the
recipient or the body. The attempt's log lines carry its trace id.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry import trace

from shopmesh_chassis.backoff import backoff_delay
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import as_domain_error, database_did_not_answer, database_unavailable
from shopmesh_chassis.errors import DomainError, Unavailable
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.tracing import stored_context
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import Notification, RetryPolicy, State
from shopmesh_notifications.mailer import DeliveryFailed
from shopmesh_notifications.metrics import outcome_of
from shopmesh_notifications.store.repository import NotificationRepository

log = logging.getLogger("shopmesh.notifications.sender")

SEND_SPAN = "smtp send"
# The sender's first wait after a failed round, doubled with each failure in a row up to its idle poll.
RETRY_AFTER_FAILURE_SECONDS = 0.5


def _without_recipient(text: str, recipient: str) -> str:
    """A failure's text for the span and the log lines: a mail server's refusal names the recipient, which
    logs and traces (kept longer and read more widely than the database) must not carry."""
    return re.sub(re.escape(recipient), "<recipient>", text, flags=re.IGNORECASE) if recipient else text


def _retry_after(error: Exception) -> float:
    """The wait the chassis names for a database that is unavailable (its RetryInfo to callers). Only for an
    `error` that `database_unavailable` accepts: a raw driver or pool error, or the UNAVAILABLE the chassis
    mapped it to, which names one either way; a ValueError for anything else (a caller's bug)."""
    mapped = error if isinstance(error, DomainError) else as_domain_error(error)
    if not isinstance(mapped, Unavailable) or mapped.retry_after_seconds is None:
        raise ValueError(f"not a database outage with a wait to name: {error!r}")
    return mapped.retry_after_seconds


class Mailer(Protocol):
    async def send(self, notification: Notification) -> None: ...


class NotificationSender:
    def __init__(
        self,
        database: Database,
        mailer: Mailer,
        policy: RetryPolicy,
        *,
        claim_seconds: float,
        idle_poll_seconds: float = 5.0,
        batch_size: int = 50,
        clock: Clock = utc_now,
        on_attempt: Callable[[Notification], None] = lambda notification: None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._db = database
        self._mailer = mailer
        self._policy = policy
        self._claim = timedelta(seconds=claim_seconds)
        self._idle_poll = idle_poll_seconds
        self._batch_size = batch_size
        self._clock = clock
        # Called with the notification as each attempt left it (sent, retrying or failed), once recorded.
        self._on_attempt = on_attempt
        self._tracer = trace.get_tracer("shopmesh.notifications.sender", tracer_provider=tracer_provider)
        # Set by stop: the round in progress ends after its attempt in flight, not after the whole batch.
        self._stopping = False
        # A failed round (the database busy or away: nothing is lost, the notifications stay PENDING) is
        # retried sooner than the idle poll, from RETRY_AFTER_FAILURE_SECONDS doubling up to it.
        self._loop = Periodic(
            "notification-sender",
            idle_poll_seconds,
            self._send_round,
            retry_after_failure_seconds=RETRY_AFTER_FAILURE_SECONDS,
        )

    def wake(self) -> None:
        """Look for due notifications now: call after committing one."""
        self._loop.run_soon()

    def start(self) -> None:
        self._stopping = False
        self._loop.start()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Let the attempt in flight finish (within `grace_seconds`), then stop. Cut off past the grace (or
        with the stop), the attempt's rollback still runs before the hooks after this one close the database."""
        self._stopping = True
        await self._loop.stop(timeout=grace_seconds)

    async def _send_round(self) -> int:
        attempts = await self.send_due()
        self._loop.run_within(await self._until_next_due())
        return attempts

    async def _until_next_due(self) -> float:
        # Looks only: a snapshot, never the write lock (held elsewhere, a write transaction would wait 5 s
        # for it and fail, every idle poll). Each claim takes the lock.
        async with self._db.read() as session:
            due_at = await NotificationRepository(session).next_due_at()
        if due_at is None:
            return self._idle_poll
        return min(max((due_at - self._clock()).total_seconds(), 0.0), self._idle_poll)

    async def send_due(self) -> int:
        """Attempt every notification that is due now; returns how many attempts were made."""
        attempts = 0
        while not self._stopping:
            async with self._db.read() as session:
                due = await NotificationRepository(session).due(self._clock(), self._batch_size)
            if not due:
                break
            for notification_id in due:
                if self._stopping:
                    break
                attempts += await self._attempt(notification_id)
        return attempts

    async def _attempt(self, notification_id: str) -> int:
        now = self._clock()
        # Taken before the claim, so the claim (until `now` + its length) ends no sooner than this says.
        claim_ends = asyncio.get_running_loop().time() + self._claim.total_seconds()
        until = now + self._claim
        async with self._db.transaction() as session:
            repository = NotificationRepository(session)
            notification = await repository.claim(notification_id, now, until)
            if notification is None:
                return 0  # another sender took it, or it is no longer due
            # The intake records no confirmation applied after its order's cancellation, but one recorded
            # before it can still be waiting for its first attempt or a retry: sent now, it would reach the
            # customer after the cancellation's e-mail. So each attempt looks again, in its claim's transaction.
            superseded = notification.kind is EventKind.ORDER_CONFIRMED and await repository.order_cancelled(
                notification.order_id
            )
            if superseded:
                await repository.record_delivery(notification.superseded(), until)
        parent = stored_context(notification.trace_context)
        if superseded:
            # No attempt, so no span; the line still carries the trace id of the checkout it belongs to.
            with trace.use_span(trace.get_current_span(parent)):
                log.info(
                    "notification %s superseded: its order's cancellation came first",
                    notification.id,
                    extra={"order_id": notification.order_id, "event_id": notification.event_id},
                )
            return 0
        attributes: dict[str, str | int] = {
            "shopmesh.notification_id": notification.id,
            "shopmesh.order_id": notification.order_id,
            "shopmesh.event_id": notification.event_id,
            "shopmesh.attempt": notification.attempts + 1,
        }
        with self._tracer.start_as_current_span(
            SEND_SPAN, context=parent, kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                await self._mailer.send(notification)
            except DeliveryFailed as failure:
                outcome = notification.delivery_failed(
                    failure.reason, self._clock(), self._policy, refusal=failure.refusal
                )
            except Exception as error:
                # Not the mail server's answer but our own fault: counted like any failed attempt, so that it
                # ends FAILED instead of being claimed again forever.
                log.exception("sending notification %s broke", notification.id)
                outcome = notification.delivery_failed(f"{type(error).__name__}: {error}", self._clock(), self._policy)
            else:
                outcome = notification.sent(self._clock())
            span.set_attribute("shopmesh.outcome", outcome_of(outcome))
            if outcome.state is not State.SENT:
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, _without_recipient(outcome.last_error, notification.recipient))
                )
            if await self._record(outcome, until, claim_ends):
                self._log(outcome)
                self._on_attempt(outcome)
        return 1

    async def _record(self, outcome: Notification, claimed_until: datetime, claim_ends: float) -> bool:
        """Store the attempt's outcome; False when it was not: the database stayed unavailable until the
        bound, or the notification is no longer this claim's (see `NotificationRepository.record_delivery`).

        Raised to the loop, a database blip here left the notification PENDING, to be attempted again once its
        claim ran out: an e-mail the mail server had accepted was sent twice. Retried until half of what is
        left of the claim has passed, never up to its end: another sender may claim it then. Each try is cut
        off at that bound too: it could wait out the pool's checkout (30 s) or a connect (asyncpg: 60 s),
        longer than a whole claim, and land SENT after another sender had claimed and sent it, with no error.
        The claim may still have run out during the send: the write's condition on the claim keeps such a
        late write off another sender's claim."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + max(claim_ends - loop.time(), 0.0) / 2
        first_wait: float | None = None  # the database's named wait, doubled for each retry after the first
        retries = 0
        while True:
            try:
                # At least a moment: a try started at the bound still gets its chance to answer.
                if await self._write(
                    outcome, claimed_until, repeated=retries > 0, within=max(give_up_at - loop.time(), 0.1)
                ):
                    return True
                self._not_ours(outcome)
                return False
            except Exception as error:
                if not database_unavailable(error):
                    raise
                reason = _without_recipient(f"{type(error).__name__}: {error}", outcome.recipient)
                left = give_up_at - loop.time()
                if left <= 0:
                    self._not_recorded(outcome, reason)
                    return False
                if first_wait is None:
                    first_wait = _retry_after(error)
                delay = backoff_delay(first_wait, retries)
                retries += 1
                log.warning(
                    "recording notification %s as %s failed, the database is unavailable; retrying in %.1fs: %s",
                    outcome.id,
                    outcome_of(outcome),
                    min(delay, left),
                    reason,
                    extra={"order_id": outcome.order_id, "event_id": outcome.event_id},
                )
                await asyncio.sleep(min(delay, left))

    async def _write(self, outcome: Notification, claimed_until: datetime, *, repeated: bool, within: float) -> bool:
        """One try of `_record`'s write, cut off after `within` seconds as the pool's own checkout timeout
        would be (the database unavailable). A try cut off in its COMMIT may have written: the next one
        writes nothing (the notification is no longer PENDING, or its next attempt no longer the claim's
        end) and finds the outcome stored."""
        try:
            async with asyncio.timeout(within), self._db.transaction() as session:
                repository = NotificationRepository(session)
                if await repository.record_delivery(outcome, claimed_until):
                    return True
                # Repeated, the write finds what its first try wrote if that one's COMMIT went through and
                # only the reply was lost: recorded, by this sender.
                return repeated and await repository.already_recorded(outcome)
        except TimeoutError as cut_off:
            raise database_did_not_answer(within) from cut_off

    @staticmethod
    def _not_ours(outcome: Notification) -> None:
        # A warning, not an error: the state stored is another attempt's (or its sender's claim), and stands.
        log.warning(
            "notification %s: its attempt's outcome (%s) was not recorded: the notification is no longer PENDING "
            "or another sender claimed it after this one's claim ran out",
            outcome.id,
            outcome_of(outcome),
            extra={"order_id": outcome.order_id, "event_id": outcome.event_id},
        )

    @staticmethod
    def _not_recorded(outcome: Notification, reason: str) -> None:
        extra = {"order_id": outcome.order_id, "event_id": outcome.event_id}
        if outcome.state is State.SENT:
            log.error(
                "notification %s was accepted by the mail server but SENT could not be recorded, the database "
                "is unavailable: it may be sent again once its claim runs out: %s",
                outcome.id,
                reason,
                extra=extra,
            )
        else:
            log.error(
                "notification %s: its failed attempt could not be recorded, the database is unavailable: it is "
                "attempted again once its claim runs out, this attempt not counted: %s",
                outcome.id,
                reason,
                extra=extra,
            )

    @staticmethod
    def _log(notification: Notification) -> None:
        extra = {"order_id": notification.order_id, "event_id": notification.event_id}
        if notification.state is State.SENT:
            # No address in the logs: they are kept longer and read more widely than the database.
            log.info("notification %s sent", notification.id, extra=extra)
        elif notification.state is State.FAILED:
            log.error(
                "notification %s failed after %d attempt(s): %s",
                notification.id,
                notification.attempts,
                _without_recipient(notification.last_error, notification.recipient),
                extra=extra,
            )
        else:
            log.warning(
                "notification %s not sent (attempt %d), next attempt at %s: %s",
                notification.id,
                notification.attempts,
                notification.next_attempt_at.isoformat() if notification.next_attempt_at else "?",
                _without_recipient(notification.last_error, notification.recipient),
                extra=extra,
            )
