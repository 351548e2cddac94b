"""The order-event handler for the chassis' event consumer: event payload → domain → store.

OrderConfirmed adds to the counts; OrderCancelled takes a confirmed order's counts back. The consumer
calls it inside the transaction that records the event id, so each event counts once. The stream
delivers an order's confirmation before its cancellation (orders' outbox publishes in order), but they
may be applied the other way round (a confirmation retried or parked and replayed, two replicas on the
durable): a cancellation applied first marks the order cancelled, and its confirmation then counts nothing.
"""

from __future__ import annotations

from typing import TypeVar

from shopmesh.orders.v1 import events_pb2
from shopmesh_chassis.consumer import Event, Handler, decode_event
from shopmesh_chassis.db import DbConnection
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.domain.models import CancelledOrder, ConfirmedOrder

STREAM = "ORDERS"
# The whole stream's subjects, as orders declares them: whoever starts first creates the stream.
STREAM_SUBJECTS = ["orders.v1.>"]
ORDER_CONFIRMED = "orders.v1.order_confirmed"
ORDER_CANCELLED = "orders.v1.order_cancelled"
SUBJECTS = [ORDER_CONFIRMED, ORDER_CANCELLED]
DURABLE = "recommendations"


def confirmed_order(event: Event) -> ConfirmedOrder:
    """Decode the event; a payload that is not an OrderConfirmed raises the chassis' InvalidEvent (retried,
    then dead-lettered with a reason that says so)."""
    return _order(ConfirmedOrder, decode_event(events_pb2.OrderConfirmed, event))


def cancelled_order(event: Event) -> CancelledOrder:
    """Decode the event; a payload that is not an OrderCancelled raises the chassis' InvalidEvent (retried,
    then dead-lettered with a reason that says so)."""
    return _order(CancelledOrder, decode_event(events_pb2.OrderCancelled, event))


OrderT = TypeVar("OrderT", ConfirmedOrder, CancelledOrder)


def _order(model: type[OrderT], event: events_pb2.OrderConfirmed | events_pb2.OrderCancelled) -> OrderT:
    return model(
        order_id=event.order_id, user_id=event.user_id, product_ids=tuple(item.product_id for item in event.items)
    )


def order_events_handler(application: RecommendationsApplication) -> Handler:
    async def handle(session: DbConnection, event: Event) -> None:
        if event.subject == ORDER_CONFIRMED:
            await application.record_order(session, confirmed_order(event))
        elif event.subject == ORDER_CANCELLED:
            await application.forget_order(session, cancelled_order(event))
        else:
            # Only the subjects above are subscribed; anything else is a wiring mistake worth dead-lettering.
            raise ValueError(f"recommendations does not handle {event.subject}")

    return handle
