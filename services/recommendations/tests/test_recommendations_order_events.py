"""Order events as the consumer hands them to recommendations, without I/O: which ones count, and which are
refused as the chassis' InvalidEvent (retried, then parked as dead letters with that reason)."""

from __future__ import annotations

from typing import Any

import pytest

from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.consumer import Event, InvalidEvent
from shopmesh_recommendations.domain.models import CancelledOrder, ConfirmedOrder
from shopmesh_recommendations.order_events import ORDER_CANCELLED, ORDER_CONFIRMED, cancelled_order, confirmed_order

BOUGHT = ("prod_chef_knife", "prod_headlamp")


def _event(subject: str, message: events_pb2.OrderConfirmed | events_pb2.OrderCancelled) -> Event:
    return Event("evt_1", subject, message.SerializeToString(), {}, attempt=1)


def confirmation(order_id: str = "ord_1", user_id: str = "usr_1", product_ids: tuple[str, ...] = BOUGHT) -> Event:
    items = [orders_pb2.OrderItem(product_id=p, product_name="x", quantity=1) for p in product_ids]
    message = events_pb2.OrderConfirmed(event_id="evt_1", order_id=order_id, user_id=user_id, items=items)
    return _event(ORDER_CONFIRMED, message)


def test_a_confirmation_from_orders_is_the_order_it_names() -> None:
    assert confirmed_order(confirmation()) == ConfirmedOrder("ord_1", "usr_1", BOUGHT)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"order_id": ""}, "order_id is empty"),
        ({"user_id": ""}, "user_id is empty"),
        ({"product_ids": ()}, "items is empty"),
        ({"order_id": "o" * 65}, "order_id is longer than 64 characters"),
        ({"user_id": "usr 1"}, "user_id has spaces or control characters"),
        ({"order_id": "ord_1\n"}, "order_id has spaces or control characters"),
        ({"product_ids": ("prod_chef_knife", "")}, "items[1].product_id is empty"),
        ({"product_ids": ("p" * 105,)}, "items[0].product_id is longer than 64 characters"),
        ({"product_ids": ("prod bad",)}, "items[0].product_id has spaces, commas or control characters"),
        ({"product_ids": ("prod_a,prod_b",)}, "items[0].product_id has spaces, commas or control characters"),
    ],
)
def test_a_confirmation_with_an_id_orders_never_issues_is_an_invalid_event_saying_which(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidEvent) as raised:
        confirmed_order(confirmation(**change))
    assert str(raised.value) == f"{ORDER_CONFIRMED} evt_1: {problem}"


def test_every_problem_of_an_event_is_named_at_once() -> None:
    with pytest.raises(InvalidEvent) as raised:
        confirmed_order(confirmation("", "", ()))
    assert str(raised.value) == f"{ORDER_CONFIRMED} evt_1: order_id is empty; user_id is empty; items is empty"


def cancellation(*product_ids: str) -> Event:
    items = [orders_pb2.OrderItem(product_id=p, product_name="x", quantity=1) for p in product_ids]
    message = events_pb2.OrderCancelled(event_id="evt_1", order_id="ord_1", user_id="usr_1", items=items)
    return _event(ORDER_CANCELLED, message)


def test_a_cancellation_is_checked_as_its_confirmation_is_but_leaves_out_product_ids_no_product_can_have() -> None:
    """An earlier release counted confirmations with such ids beside good ones: parked, their cancellations would
    leave the good ids' counts of a cancelled order for ever. The ids are left out; the rest is taken back."""
    assert cancelled_order(cancellation(*BOUGHT)) == CancelledOrder("ord_1", "usr_1", BOUGHT)
    assert cancelled_order(cancellation("prod_a", "prod bad")) == CancelledOrder("ord_1", "usr_1", ("prod_a",))
    with pytest.raises(InvalidEvent) as raised:
        cancelled_order(cancellation())
    assert str(raised.value) == f"{ORDER_CANCELLED} evt_1: items is empty"
