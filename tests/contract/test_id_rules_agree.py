"""Orders takes user_id from its caller and hands it, in OrderConfirmed and OrderCancelled, to notifications,
which refuses an event whose ids hold whitespace or unprintable characters. A user_id orders accepts must be
one notifications accepts: otherwise the order is charged and confirmed, and its e-mail parked for ever.
Recommendations, handed the same events, refuses them as well for a product id orders would not take: an order
orders confirms must count. (No service imports another's code: they check with contract_limits' rules, held
together here.)"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopmesh_chassis.errors import InvalidArgument
from shopmesh_notifications.domain import events as notifications
from shopmesh_orders.domain import validation as orders
from shopmesh_orders.domain.model import Address
from shopmesh_recommendations.domain.models import ConfirmedOrder
from shopmesh_recommendations.domain.validation import order_problems


def orders_accepts(user_id: str, product_id: str = "prod_1") -> bool:
    order = orders.PlaceOrder(
        user_id=user_id,
        items=(orders.CartLine(product_id, 1),),
        currency="USD",
        address=Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB"),
        email="ada@example.com",
        card=orders.Card("4242424242424242", 12, 2030, "123"),
    )
    try:
        orders.validate_place_order(order, date(2026, 12, 3))
    except InvalidArgument:
        return False
    return True


def notifications_accepts(user_id: str) -> bool:
    event = notifications.OrderEvent(
        kind=notifications.EventKind.ORDER_CONFIRMED,
        event_id="evt_1",
        order_id="ord_1",
        user_id=user_id,
        email="ada@example.com",
        currency="USD",
        lines=(notifications.Line("Mug", 1, 100, 100, "USD", "USD"),),
        total_minor=100,
    )
    try:
        notifications.validate_event(event)
    except notifications.InvalidEvent:
        return False
    return True


@pytest.mark.parametrize(
    "user_id",
    ["usr_1", "alice smith", "usr\t1", "usr_1\u200b", "usr\n1", " usr_1", "usr\x00", "ü_1", "", "u" * 64, "u" * 65],
)
def test_orders_accepts_the_user_ids_notifications_accepts_and_no_other(user_id: str) -> None:
    assert orders_accepts(user_id) == notifications_accepts(user_id), repr(user_id)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_orders_and_notifications_agree_on_any_user_id(user_id: str) -> None:
    assert orders_accepts(user_id) == notifications_accepts(user_id), repr(user_id)


def recommendations_accepts(user_id: str, product_id: str = "prod_1") -> bool:
    return not order_problems(ConfirmedOrder("ord_1", user_id, (product_id,)))


IDS = ["prod_1", "a b", "a,b", "a\tb", "a\u200b", "a\n", " a", "a\x00", "ü_1", "", "p" * 64, "p" * 65]


@pytest.mark.parametrize("product_id", IDS)
def test_recommendations_counts_the_product_ids_orders_accepts_and_no_other(product_id: str) -> None:
    assert orders_accepts("usr_1", product_id) == recommendations_accepts("usr_1", product_id), repr(product_id)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70), st.text(max_size=70))
def test_orders_and_recommendations_agree_on_any_user_and_product_id(user_id: str, product_id: str) -> None:
    accepted = orders_accepts(user_id, product_id)
    assert accepted == recommendations_accepts(user_id, product_id), (user_id, product_id)
