"""The consumer's handler: an order event becomes a PENDING notification, in the transaction in which
the chassis records the event id — so each event yields at most one notification, however often it is
delivered, and each order at most one of each kind per channel that is not FAILED, whatever its events'
ids (none for a confirmation applied after its order's cancellation). Nothing is sent here: the
sender delivers it after the commit, outside any transaction, in a span of the trace the notification
was recorded in (its consumer span's context is stored with it).

Two kinds of event record no notification, so no e-mail, though the event is applied: a cancellation that
PlaceOrder answered with (the customer saw it on screen), and one beyond the cap on e-mails to one address
(`RecipientCap`). Each is counted (`shopmesh_notifications_suppressed_total`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import DbConnection
from shopmesh_chassis.ids import new_id
from shopmesh_chassis.token_buckets import TokenBuckets
from shopmesh_chassis.tracing import stored_trace_context
from shopmesh_notifications.codec import order_event
from shopmesh_notifications.domain.emails import message_id_for, render
from shopmesh_notifications.domain.events import EventKind, OrderEvent, validate_event
from shopmesh_notifications.domain.model import Channel, Notification
from shopmesh_notifications.store.repository import NotificationRepository

log = logging.getLogger("shopmesh.notifications")


# The `reason` labels of the e-mails not sent (NotificationMetrics.suppressed).
ANSWERED_AT_PLACEMENT = "answered_at_placement"
RECIPIENT_CAP = "recipient_cap"
# How many addresses the cap remembers: the least recently mailed beyond it start again with a full bucket,
# as they would after an hour or so of quiet anyway.
_CAP_ADDRESSES = 100_000
_SECONDS_PER_HOUR = 3600.0


def new_notification_id() -> str:
    return new_id("ntf_")


class RecipientCap:
    """At most `burst` e-mails at once to one address, then `per_hour`: defence in depth against having the
    shop mail an address over and over (an account signed up with someone else's address, whatever makes its
    orders end). In each replica's memory, as the gateway's limits are: the cap with N replicas is N times this.
    An address is compared case-insensitively (its domain is; its local part is at nearly every provider). The
    first e-mail held back to an address logs a WARNING, the next ones within the hour only count."""

    def __init__(self, per_hour: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._mails = TokenBuckets[str](per_hour / _SECONDS_PER_HOUR, burst, _CAP_ADDRESSES, clock)
        self._warnings = TokenBuckets[str](1 / _SECONDS_PER_HOUR, 1, _CAP_ADDRESSES, clock)
        self._per_hour, self._burst = per_hour, burst

    def allows(self, order: OrderEvent) -> bool:
        """Whether the e-mail of `order` may go out, taking its place under the cap if so."""
        address = order.email.casefold()
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

    def give_back(self, order: OrderEvent) -> None:
        """The place `allows` took for an e-mail that was not recorded after all (its transaction failed): the
        event's retry takes it again."""
        self._mails.give_back(order.email.casefold())


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
        if self._cap is not None and not self._cap.allows(order):
            self._on_suppressed(RECIPIENT_CAP)
            return
        try:
            await self._record(repository, order)
        except BaseException:
            if self._cap is not None:
                self._cap.give_back(order)
            raise

    async def _record(self, repository: NotificationRepository, order: OrderEvent) -> None:
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
            next_attempt_at=now,
            # The consumer's span: the sender's attempts, in a loop of their own, continue its trace.
            trace_context=stored_trace_context(),
        )
        await repository.add(notification)
        log.info("notification %s recorded for %s", notification.id, order.event_id, extra={"order_id": order.order_id})
