"""The OrderConfirmed handler for the chassis' event consumer: event payload → domain → store.

The consumer calls it inside the transaction that records the event id, so each event counts once.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from shopmesh.orders.v1 import events_pb2
from shopmesh_chassis.consumer import Event, Handler
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.domain.models import ConfirmedOrder

STREAM = "ORDERS"
# The whole stream's subjects, as orders declares them: whoever starts first creates the stream.
STREAM_SUBJECTS = ["orders.v1.>"]
ORDER_CONFIRMED = "orders.v1.order_confirmed"
DURABLE = "recommendations"


def confirmed_order(payload: bytes) -> ConfirmedOrder:
    """Decode the event; a payload that is not an OrderConfirmed raises (retried, then dead-lettered)."""
    event = events_pb2.OrderConfirmed.FromString(payload)
    return ConfirmedOrder(
        order_id=event.order_id,
        user_id=event.user_id,
        product_ids=tuple(item.product_id for item in event.items),
    )


def order_confirmed_handler(application: RecommendationsApplication) -> Handler:
    async def handle(session: AsyncConnection, event: Event) -> None:
        await application.record_order(session, confirmed_order(event.payload))

    return handle
