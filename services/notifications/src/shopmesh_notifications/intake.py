"""The consumer's handler: an order event becomes a PENDING notification, in the transaction in which
the chassis records the event id — so each event yields at most one notification, however often it is
delivered, and each order at most one of each kind per channel that is not FAILED, whatever its events'
ids (none for a confirmation applied after its order's cancellation). Nothing is sent here: the
sender delivers it after the commit, outside any transaction, in a span of the trace the notification
was recorded in (its consumer span's context is stored with it)."""

from __future__ import annotations

import logging

from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import DbConnection
from shopmesh_chassis.ids import new_id
from shopmesh_chassis.tracing import stored_trace_context
from shopmesh_notifications.codec import order_event
from shopmesh_notifications.domain.emails import message_id_for, render
from shopmesh_notifications.domain.events import EventKind, validate_event
from shopmesh_notifications.domain.model import Channel, Notification
from shopmesh_notifications.store.repository import NotificationRepository

log = logging.getLogger("shopmesh.notifications")


def new_notification_id() -> str:
    return new_id("ntf_")


class NotificationIntake:
    def __init__(
        self,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._clock = clock

    async def __call__(self, session: DbConnection, event: Event) -> None:
        """Raises InvalidEvent (the chassis' for a payload that does not decode, notifications' for one that
        cannot make an e-mail) for a poison message: the consumer retries it, then dead-letters it."""
        order = validate_event(order_event(event))
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
        log.info("notification %s recorded for %s", notification.id, event.event_id, extra={"order_id": order.order_id})
