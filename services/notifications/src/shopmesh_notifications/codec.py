"""Protobuf ↔ domain: order events in (from JetStream), notifications out (to ListNotifications)."""

from __future__ import annotations

from shopmesh.notifications.v1 import notifications_pb2
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.consumer import Event, decode_event
from shopmesh_chassis.proto_values import to_timestamp
from shopmesh_notifications.domain.emails import CANCELLED_FOR_ANOTHER_REASON
from shopmesh_notifications.domain.events import EventKind, InvalidEvent, Line, OrderEvent
from shopmesh_notifications.domain.model import Notification, customer_failure_reason

ORDER_CONFIRMED = "orders.v1.order_confirmed"
ORDER_CANCELLED = "orders.v1.order_cancelled"
SUBJECTS = (ORDER_CONFIRMED, ORDER_CANCELLED)

# UNSPECIFIED: a stored value this release does not know, answered as the contract's 0 value.
_STATES = {
    "UNSPECIFIED": notifications_pb2.NOTIFICATION_STATE_UNSPECIFIED,
    "PENDING": notifications_pb2.NOTIFICATION_STATE_PENDING,
    "SENT": notifications_pb2.NOTIFICATION_STATE_SENT,
    "FAILED": notifications_pb2.NOTIFICATION_STATE_FAILED,
    "SUPERSEDED": notifications_pb2.NOTIFICATION_STATE_SUPERSEDED,
}
_KINDS = {
    EventKind.UNSPECIFIED: notifications_pb2.NOTIFICATION_KIND_UNSPECIFIED,
    EventKind.ORDER_CONFIRMED: notifications_pb2.NOTIFICATION_KIND_ORDER_CONFIRMED,
    EventKind.ORDER_CANCELLED: notifications_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
}
# The cancel reasons whose message orders writes itself, from texts of its own: only these are quoted in the
# e-mail. An allow-list, not "all but CUSTOMER_REQUESTED": a code of a newer release (or UNSPECIFIED, what an
# older one writes for it) may carry someone's free text, as CUSTOMER_REQUESTED carries the customer's.
_SHOP_WRITTEN_REASONS = frozenset(
    {
        orders_pb2.CANCEL_REASON_CODE_INSUFFICIENT_STOCK,
        orders_pb2.CANCEL_REASON_CODE_CARD_DECLINED,
        orders_pb2.CANCEL_REASON_CODE_INSUFFICIENT_FUNDS,
        orders_pb2.CANCEL_REASON_CODE_PAYMENT_UNAVAILABLE,
        orders_pb2.CANCEL_REASON_CODE_RESERVATION_EXPIRED,
        orders_pb2.CANCEL_REASON_CODE_CHECKOUT_INTERRUPTED,
        orders_pb2.CANCEL_REASON_CODE_CARD_EXPIRED,
        orders_pb2.CANCEL_REASON_CODE_PAYMENT_REQUEST_REJECTED,
    }
)
_CHANNELS = {
    "UNSPECIFIED": notifications_pb2.NOTIFICATION_CHANNEL_UNSPECIFIED,
    "EMAIL": notifications_pb2.NOTIFICATION_CHANNEL_EMAIL,
}


def _lines(items: list[orders_pb2.OrderItem]) -> tuple[Line, ...]:
    return tuple(
        Line(
            product_name=item.product_name or item.product_id,
            quantity=item.quantity,
            unit_price_minor=item.unit_price.amount_minor,
            line_total_minor=item.line_total.amount_minor,
            unit_price_currency=item.unit_price.currency,
            line_total_currency=item.line_total.currency,
        )
        for item in items
    )


def order_event(event: Event) -> OrderEvent:
    """The order event a message carries, under its `Nats-Msg-Id` (the contract makes them equal).

    A payload that is not the subject's message raises the chassis' InvalidEvent (decode_event: the reason
    every consumer parks such an event with); a subject not consumed here, notifications' InvalidEvent."""
    by_customer = answered_at_placement = False
    if event.subject == ORDER_CONFIRMED:
        decoded: events_pb2.OrderConfirmed | events_pb2.OrderCancelled = decode_event(events_pb2.OrderConfirmed, event)
        kind, reason, refunded = EventKind.ORDER_CONFIRMED, "", False
    elif event.subject == ORDER_CANCELLED:
        cancelled = decode_event(events_pb2.OrderCancelled, event)
        decoded = cancelled
        kind, refunded = EventKind.ORDER_CANCELLED, cancelled.refunded
        answered_at_placement = cancelled.answered_at_placement
        by_customer = cancelled.reason.code == orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED
        if by_customer:
            reason = ""  # the customer's own text (CancelOrder's reason): never into an e-mail
        elif cancelled.reason.code in _SHOP_WRITTEN_REASONS:
            reason = cancelled.reason.message
        else:
            reason = CANCELLED_FOR_ANOTHER_REASON
    else:
        raise InvalidEvent(f"{event.subject} {event.event_id or '?'}: not an event notifications consumes")
    return OrderEvent(
        kind=kind,
        event_id=event.event_id,
        order_id=decoded.order_id,
        user_id=decoded.user_id,
        email=decoded.email,
        currency=decoded.total.currency,
        lines=_lines(list(decoded.items)),
        total_minor=decoded.total.amount_minor,
        reason=reason,
        refunded=refunded,
        cancelled_by_customer=by_customer,
        answered_at_placement=answered_at_placement,
    )


def notification_to_proto(notification: Notification) -> notifications_pb2.Notification:
    message = notifications_pb2.Notification(
        id=notification.id,
        user_id=notification.user_id,
        order_id=notification.order_id,
        channel=_CHANNELS[notification.channel.value],
        recipient=notification.recipient,
        subject=notification.subject,
        state=_STATES[notification.state.value],
        kind=_KINDS[notification.kind],
        event_id=notification.event_id,
        failure_reason=customer_failure_reason(notification.failure_reason),
        created_at=to_timestamp(notification.created_at),
    )
    if notification.sent_at is not None:
        message.sent_at.CopyFrom(to_timestamp(notification.sent_at))
    return message
