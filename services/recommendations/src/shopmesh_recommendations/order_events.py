"""The order-event handler for the chassis' event consumer: event payload → domain → store.

OrderConfirmed adds to the counts; OrderCancelled takes a confirmed order's counts back. The consumer
calls it inside the transaction that records the event id, so each event counts once. The stream
delivers an order's confirmation before its cancellation (orders' outbox publishes in order), but they
may be applied the other way round (a confirmation retried or parked and replayed, two replicas on the
durable): a cancellation applied first marks the order cancelled, and its confirmation then counts nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from shopmesh.orders.v1 import events_pb2
from shopmesh_chassis.consumer import Event, Handler, InvalidEvent, decode_event
from shopmesh_chassis.db import DbConnection
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.domain.models import CancelledOrder, ConfirmedOrder
from shopmesh_recommendations.domain.validation import is_product_id, order_problems

STREAM = "ORDERS"
# The whole stream's subjects, as orders declares them: whoever starts first creates the stream.
STREAM_SUBJECTS = ["orders.v1.>"]
ORDER_CONFIRMED = "orders.v1.order_confirmed"
ORDER_CANCELLED = "orders.v1.order_cancelled"
SUBJECTS = [ORDER_CONFIRMED, ORDER_CANCELLED]
DURABLE = "recommendations"


def confirmed_order(event: Event) -> ConfirmedOrder:
    """Decode and check the event; a payload that is not an OrderConfirmed, or one with an id no order, user
    or product can have, raises the chassis' InvalidEvent (retried, then dead-lettered with a reason that
    says so)."""
    return _order(ConfirmedOrder, event, decode_event(events_pb2.OrderConfirmed, event))


def cancelled_order(event: Event) -> CancelledOrder:
    """Decode and check the event, as confirmed_order does, for an OrderCancelled; except that a product id no
    product can have is left out rather than refused: an earlier release counted confirmations carrying such ids
    (("prod_a", "prod bad")), and parking their cancellations would leave the good ids' counts of a cancelled
    order for ever (counts never decay). The ids left out stay counted, and catalog lookups skip them."""
    message = decode_event(events_pb2.OrderCancelled, event)
    order = _order(CancelledOrder, event, message, products_checked=False)
    return dataclasses.replace(order, product_ids=tuple(p for p in order.product_ids if is_product_id(p)))


OrderT = TypeVar("OrderT", ConfirmedOrder, CancelledOrder)


def _order(
    model: type[OrderT],
    event: Event,
    message: events_pb2.OrderConfirmed | events_pb2.OrderCancelled,
    *,
    products_checked: bool = True,
) -> OrderT:
    order = model(
        order_id=message.order_id,
        user_id=message.user_id,
        product_ids=tuple(item.product_id for item in message.items),
    )
    if problems := order_problems(order, products_checked=products_checked):
        raise InvalidEvent(f"{event.subject} {event.event_id or '?'}: {'; '.join(problems)}")
    return order


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
