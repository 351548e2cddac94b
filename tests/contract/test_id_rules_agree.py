"""Orders takes user_id from its caller and hands it, in OrderConfirmed and OrderCancelled, to notifications,
which refuses an event whose ids hold whitespace or unprintable characters. A user_id orders accepts must be
one notifications accepts: otherwise the order is charged and confirmed, and its e-mail parked for ever.
(Neither service imports the other's code: both check with contract_limits.is_printable_id, held together here.)"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopmesh_chassis.errors import InvalidArgument
from shopmesh_notifications.domain import events as notifications
from shopmesh_orders.domain import validation as orders
from shopmesh_orders.domain.model import Address


def orders_accepts(user_id: str) -> bool:
    order = orders.PlaceOrder(
        user_id=user_id,
        items=(orders.CartLine("prod_1", 1),),
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
        lines=(),
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
