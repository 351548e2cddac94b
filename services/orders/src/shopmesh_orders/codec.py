"""Order ↔ protobuf. Used by the servicer (responses) and the saga (events): the contracts' shapes."""

from __future__ import annotations

from datetime import datetime

from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.proto_values import to_money, to_timestamp
from shopmesh_orders.domain.model import CancelCode, Order

_STATES = {
    "UNSPECIFIED": orders_pb2.ORDER_STATE_UNSPECIFIED,
    "PENDING": orders_pb2.ORDER_STATE_PENDING,
    "CONFIRMED": orders_pb2.ORDER_STATE_CONFIRMED,
    "CANCELLED": orders_pb2.ORDER_STATE_CANCELLED,
}


def cancel_reason_code(code: CancelCode) -> orders_pb2.CancelReasonCode.ValueType:
    return orders_pb2.CancelReasonCode.Value(f"CANCEL_REASON_CODE_{code.value}")


def order_items(order: Order) -> list[orders_pb2.OrderItem]:
    return [
        orders_pb2.OrderItem(
            product_id=line.product_id,
            product_name=line.product_name,
            quantity=line.quantity,
            unit_price=to_money(line.unit_price_minor, order.currency),
            line_total=to_money(line.total_minor, order.currency),
        )
        for line in order.lines
    ]


def order_to_proto(order: Order) -> orders_pb2.Order:
    message = orders_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        items=order_items(order),
        total=to_money(order.total_minor, order.currency),
        state=_STATES[order.state.value],
        payment_id=order.payment_id,
        reservation_id=order.reservation_id,
        email=order.email,
        shipping_address=orders_pb2.ShippingAddress(
            full_name=order.address.full_name,
            street=order.address.street,
            city=order.address.city,
            postal_code=order.address.postal_code,
            country=order.address.country,
        ),
        created_at=to_timestamp(order.created_at),
        updated_at=to_timestamp(order.updated_at),
    )
    if order.state.value == "CANCELLED" and order.cancel_code is not None:
        message.cancel_reason.code = cancel_reason_code(order.cancel_code)
        message.cancel_reason.message = order.cancel_message
    elif order.cancellation_pending and order.cancel_code is not None:
        # The state stays CONFIRMED until the refund and the release are done: without this, a customer who
        # was told the cancellation is accepted would see nothing of it.
        message.pending_cancellation.code = cancel_reason_code(order.cancel_code)
        message.pending_cancellation.message = order.cancel_message
    return message


def confirmed_event(order: Order, event_id: str, at: datetime) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        event_id=event_id,
        occurred_at=to_timestamp(at),
        order_id=order.id,
        user_id=order.user_id,
        email=order.email,
        items=order_items(order),
        total=to_money(order.total_minor, order.currency),
    )


def cancelled_event(
    order: Order, event_id: str, at: datetime, *, answered_at_placement: bool = False
) -> events_pb2.OrderCancelled:
    event = events_pb2.OrderCancelled(
        event_id=event_id,
        occurred_at=to_timestamp(at),
        order_id=order.id,
        user_id=order.user_id,
        email=order.email,
        items=order_items(order),
        total=to_money(order.total_minor, order.currency),
        refunded=order.refunded,
        answered_at_placement=answered_at_placement,
    )
    if order.cancel_code is not None:
        event.reason.code = cancel_reason_code(order.cancel_code)
        event.reason.message = order.cancel_message
    return event
