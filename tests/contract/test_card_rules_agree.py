"""Orders checks a card before it reserves stock; payments checks it again before a charge. Both follow
payments' contract (ChargeRequest), so a card orders accepts is one payments accepts: otherwise a typo would
reserve stock, place an order and cancel it as "Your card was declined", and a card payments would take
would be refused. The rules are the chassis' (`card_checks`), held here to each service's answer on the
request as a whole: the violations it collects and the ErrorInfo reason it gives."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopmesh_chassis.errors import InvalidArgument
from shopmesh_orders.domain import validation as orders
from shopmesh_orders.domain.model import Address
from shopmesh_payments.domain import models as payments_models
from shopmesh_payments.domain import validation as payments

TODAY = date(2026, 12, 3)
GOOD = ("4242424242424242", 12, 2030, "123")


def orders_answer(number: str, exp_month: int, exp_year: int, cvv: str) -> tuple[str, dict[str, str]] | None:
    """ErrorInfo reason and {field: reason} of orders' refusal, as PlaceOrder answers it for the card alone."""
    order = orders.PlaceOrder(
        user_id="usr_1",
        items=(orders.CartLine("prod_1", 1),),
        currency="USD",
        address=Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB"),
        email="ada@example.com",
        card=orders.Card(number, exp_month, exp_year, cvv),
    )
    try:
        orders.validate_place_order(order, TODAY)
    except InvalidArgument as refused:
        return refused.reason, {v.field: v.reason for v in refused.violations}
    return None


def payments_answer(number: str, exp_month: int, exp_year: int, cvv: str) -> tuple[str, dict[str, str]] | None:
    card = payments_models.Card(number=number, exp_month=exp_month, exp_year=exp_year, cvv=cvv)
    try:
        payments.validate_charge("ord_1", payments_models.Money(100, "USD"), card, TODAY)
    except InvalidArgument as refused:
        return refused.reason, {v.field: v.reason for v in refused.violations}
    return None


def orders_accepts(number: str, exp_month: int, exp_year: int, cvv: str) -> bool:
    return orders_answer(number, exp_month, exp_year, cvv) is None


def payments_accepts(number: str, exp_month: int, exp_year: int, cvv: str) -> bool:
    return payments_answer(number, exp_month, exp_year, cvv) is None


@pytest.mark.parametrize(
    "card",
    [
        GOOD,
        ("4242424242424242²", 12, 2030, "123"),  # a superscript: int() refused it (INTERNAL)
        ("٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢", 12, 2030, "123"),  # Arabic-Indic digits
        ("4242 4242 4242 4242", 12, 2030, "123"),
        ("4242424242424241", 12, 2030, "123"),  # Luhn
        ("424242424242", 12, 2030, "123"),
        ("42424242424242424242", 12, 2030, "123"),
        ("4242424242424242", 12, 10000, "123"),
        ("4242424242424242", 12, 999, "123"),
        ("4242424242424242", 12, 9999, "123"),
        ("4242424242424242", 0, 2030, "123"),
        ("4242424242424242", 11, 2026, "123"),  # expired last month
        ("4242424242424242", 12, 2026, "123"),  # valid through this month
        ("4242424242424242", 12, 2030, "12³"),
        ("4242424242424242", 12, 2030, "1234"),
        ("4242424242424242", 12, 2030, "12"),
        ("4242424242424242", 1, 2026, "123"),  # expired this year: the month is to blame
        ("4242424242424242", 12, 2025, "123"),  # expired last year: the year is to blame
        ("4242424242424242", 13, 99, "123"),  # both expiry fields out of range
        ("", 12, 2030, "123"),
        ("4242424242424241", 11, 2026, "12"),
    ],
)
def test_orders_and_payments_accept_the_same_cards(card: tuple[str, int, int, str]) -> None:
    assert orders_accepts(*card) == payments_accepts(*card), card


@pytest.mark.parametrize(
    "card",
    [
        ("4242424242424241", 12, 2030, "123"),
        ("", 12, 2030, "123"),
        ("4242424242424242", 1, 2026, "123"),
        ("4242424242424242", 12, 2025, "123"),
        ("4242424242424242", 13, 99, "123"),
        ("4242424242424242", 12, 2030, "12"),
        ("4242424242424241", 11, 2026, "12"),
    ],
)
def test_orders_and_payments_refuse_a_card_with_the_same_fields_and_reasons(card: tuple[str, int, int, str]) -> None:
    """PlaceOrderRequest.card is "validated as in payments Charge": the same violations, and ErrorInfo reason
    INVALID_CARD_NUMBER or CARD_EXPIRED when that is all that is wrong."""
    assert orders_answer(*card) == payments_answer(*card), card


DIGITISH = st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789")


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    number=st.text(DIGITISH, min_size=11, max_size=20),
    exp_month=st.integers(-1, 13),
    exp_year=st.integers(0, 12000),
    cvv=st.text(DIGITISH, min_size=2, max_size=5),
)
def test_no_card_is_accepted_by_one_and_refused_by_the_other(
    number: str, exp_month: int, exp_year: int, cvv: str
) -> None:
    assert orders_accepts(number, exp_month, exp_year, cvv) == payments_accepts(number, exp_month, exp_year, cvv)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    number=st.text(DIGITISH, min_size=0, max_size=20),
    exp_month=st.integers(-1, 13),
    exp_year=st.integers(0, 12000),
    cvv=st.text(DIGITISH, min_size=2, max_size=5),
)
def test_no_card_is_refused_differently_by_the_two(number: str, exp_month: int, exp_year: int, cvv: str) -> None:
    assert orders_answer(number, exp_month, exp_year, cvv) == payments_answer(number, exp_month, exp_year, cvv)
