"""The consumer's handler: an order event becomes a PENDING notification, in the transaction in which
the chassis records the event id — so each event yields at most one notification, however often it is
delivered, and each order at most one of each kind per channel that is not FAILED, whatever its events'
ids (none for a confirmation applied after its order's cancellation). Nothing is sent here: the
sender delivers it after the commit, outside any transaction, in a span of the trace the notification
was recorded in (its consumer span's context is stored with it).

Two kinds of event send no e-mail, though the event is applied: a cancellation that PlaceOrder answered
with (the customer saw it on screen; no notification recorded), and one beyond the cap on cancellation e-mails
to one address (`RecipientCap`; recorded WITHHELD, unlisted, so that its order's confirmation is not sent after
it). Confirmations are never capped: each is the receipt of a captured payment. Each event is counted once
(`shopmesh_notifications_suppressed_total`)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import DbConnection
from shopmesh_chassis.email_addresses import canonical_email
from shopmesh_chassis.ids import new_id
from shopmesh_chassis.token_buckets import TokenBuckets
from shopmesh_chassis.tracing import stored_trace_context
from shopmesh_notifications.codec import order_event
from shopmesh_notifications.domain.emails import message_id_for, render
from shopmesh_notifications.domain.events import EventKind, OrderEvent, validate_event
from shopmesh_notifications.domain.model import Channel, Notification, State
from shopmesh_notifications.store.repository import NotificationRepository

log = logging.getLogger("shopmesh.notifications")


# The `reason` labels of the e-mails not sent (NotificationMetrics.suppressed).
ANSWERED_AT_PLACEMENT = "answered_at_placement"
RECIPIENT_CAP = "recipient_cap"
# How many addresses the cap remembers: the least recently mailed beyond it start again with a full bucket,
# as they would after an hour or so of quiet anyway.
_CAP_ADDRESSES = 100_000
# How many events' decisions the cap remembers, so that a retry of one (its transaction failed, the consumer's
# commit included, after the place was taken) reuses its place rather than take a second. Retries follow within
# the consumer's backoff, seconds apart; an event forgotten by then takes a place again, one e-mail fewer.
_CAP_EVENTS = 10_000
_SECONDS_PER_HOUR = 3600.0


def new_notification_id() -> str:
    return new_id("ntf_")


class CapDecision(NamedTuple):
    allowed: bool
    # The event's decision taken before, by an attempt whose transaction failed: not to be counted again.
    repeated: bool


class RecipientCap:
    """At most `burst` cancellation e-mails at once to one address, then `per_hour`: defence in depth against
    having the shop mail an address over and over (an account signed up with someone else's address, whatever
    makes its orders end). Confirmations are not capped (`NotificationIntake`). In each replica's memory, as the
    gateway's limits are: the cap with N replicas is N times this. An address is compared as every service
    compares one (`canonical_email`). The first e-mail held back to an address logs a WARNING, the next ones
    within the hour only count. A place is the event's: its retries reuse it (or stay held back), however its
    attempt failed."""

    def __init__(self, per_hour: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._mails = TokenBuckets[str](per_hour / _SECONDS_PER_HOUR, burst, _CAP_ADDRESSES, clock)
        self._warnings = TokenBuckets[str](1 / _SECONDS_PER_HOUR, 1, _CAP_ADDRESSES, clock)
        self._per_hour, self._burst = per_hour, burst
        # event id → allowed. An OrderedDict as the LRU: the chassis' TokenBuckets bounds its keys alike, and
        # cachetools is no dependency of notifications.
        self._decided: OrderedDict[str, bool] = OrderedDict()

    def decide(self, order: OrderEvent) -> CapDecision:
        """Whether the e-mail of `order` may go out, taking its place under the cap if so (once per event)."""
        decided = self._decided.get(order.event_id)
        if decided is not None:
            self._decided.move_to_end(order.event_id)
            return CapDecision(decided, repeated=True)
        allowed = self._allows(order)
        self._decided[order.event_id] = allowed
        if len(self._decided) > _CAP_EVENTS:
            self._decided.popitem(last=False)
        return CapDecision(allowed, repeated=False)

    def _allows(self, order: OrderEvent) -> bool:
        address = canonical_email(order.email)
        if not self._mails.take(address):
            return True
        if not self._warnings.take(address):
            # Names the account, not the address: the account is whom an operator looks into.
            log.warning(
                "e-mails to the address of user %s's order %s held back: more than %d at once or %g an hour "
                "(RECIPIENT_MAIL_BURST, RECIPIENT_MAILS_PER_HOUR); further ones this hour are only counted",
                order.user_id,
                order.order_id,
                self._burst,
                self._per_hour,
                extra={"order_id": order.order_id, "user_id": order.user_id},
            )
        return False


class NotificationIntake:
    def __init__(
        self,
        *,
        clock: Clock = utc_now,
        cap: RecipientCap | None = None,
        on_suppressed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._clock = clock
        self._cap = cap
        # Called with the reason (ANSWERED_AT_PLACEMENT, RECIPIENT_CAP) of an event that records no e-mail.
        self._on_suppressed = on_suppressed

    async def __call__(self, session: DbConnection, event: Event) -> None:
        """Raises InvalidEvent (the chassis' for a payload that does not decode, notifications' for one that
        cannot make an e-mail) for a poison message: the consumer retries it, then dead-letters it."""
        order = validate_event(order_event(event))
        if order.answered_at_placement:
            # The customer's PlaceOrder answered with this cancellation: mailing it too let anyone have the shop
            # mail the address of an account as fast as they could place orders that fail (a declined card,
            # more than the stock). Not recorded either: ListNotifications lists what the shop e-mails.
            log.info(
                "no e-mail for %s: order %s's placement answered with its cancellation",
                event.event_id,
                order.order_id,
                extra={"order_id": order.order_id},
            )
            self._on_suppressed(ANSWERED_AT_PLACEMENT)
            return
        repository = NotificationRepository(session)
        # Orders publishes a confirmation before its cancellation, but a retried, replayed or concurrently
        # consumed confirmation can be applied after it: the customer, told the order is cancelled, must
        # not be told next that it is confirmed. The event is still recorded as applied, with no e-mail.
        # The lock makes a confirmation applied while its cancellation is being applied wait, then see it,
        # and a second event of an order's kind wait for the first's outcome.
        await repository.lock_order(order.order_id)
        # The same confirmation (or cancellation) published again under a new event id (a republish, a
        # replayed copy) is a duplicate the event id does not catch: the customer has that e-mail already,
        # or will have. Not when it FAILED: then a later event of its kind is the customer's only e-mail.
        if await repository.order_notified_of_event(order.order_id, order.kind, Channel.EMAIL, event.event_id):
            log.info(
                "no %s e-mail for %s: order %s was notified of it already",
                order.kind.value,
                event.event_id,
                order.order_id,
                extra={"order_id": order.order_id},
            )
            return
        if order.kind is EventKind.ORDER_CONFIRMED and await repository.order_cancelled(order.order_id):
            log.info(
                "no confirmation for %s: the order's cancellation came first",
                event.event_id,
                extra={"order_id": order.order_id},
            )
            return
        # Cancellations only: a confirmation is a receipt for a captured payment, which whoever placed the order
        # paid for (a customer ordering a dozen times an hour gets every receipt), where an order that ends
        # cancelled costs nothing.
        cap = self._cap if order.kind is EventKind.ORDER_CANCELLED else None
        decision = CapDecision(allowed=True, repeated=False) if cap is None else cap.decide(order)
        if not decision.allowed:
            if not decision.repeated:
                self._on_suppressed(RECIPIENT_CAP)
            # Recorded, never sent: unrecorded, the guards above (and the sender's) did not see the order
            # cancelled, and its confirmation, replayed or due once the address's bucket refilled, was mailed
            # "confirmed" for a cancelled order.
            await self._record(repository, order, State.WITHHELD)
            return
        await self._record(repository, order, State.PENDING)

    async def _record(self, repository: NotificationRepository, order: OrderEvent, state: State) -> None:
        email = render(order)
        now = self._clock()
        notification = Notification(
            id=new_notification_id(),
            user_id=order.user_id,
            order_id=order.order_id,
            channel=Channel.EMAIL,
            recipient=order.email,
            subject=email.subject,
            body=email.body,
            message_id=message_id_for(order.event_id),
            kind=order.kind,
            event_id=order.event_id,
            created_at=now,
            state=state,
            next_attempt_at=now if state is State.PENDING else None,
            # The consumer's span: the sender's attempts, in a loop of their own, continue its trace.
            trace_context=stored_trace_context(),
        )
        await repository.add(notification)
        log.info(
            "notification %s recorded %s for %s",
            notification.id,
            state.value,
            order.event_id,
            extra={"order_id": order.order_id},
        )
