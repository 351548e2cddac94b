"""`card_checks`: payments' card rules (ChargeRequest), which orders applies too, with the wording both answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest

from shopmesh_chassis.card_checks import card_violations, is_expired, luhn_valid, refusal_reason
from shopmesh_chassis.errors import FieldViolation

TODAY = date(2026, 6, 15)


@dataclass(frozen=True)
class Card:
    number: str = "4242424242424242"
    exp_month: int = 12
    exp_year: int = 2030
    cvv: str = "123"


@pytest.mark.parametrize(
    "number",
    ["4242424242424242", "4000000000000002", "4000000000009995", "4000000000000119", "5555555555554444", "79927398713"],
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4242424242424241", "79927398710", "", "4242-4242", "\uff14\uff12\uff14\uff12", "42²"]
)
def test_luhn_rejects_wrong_check_digits_and_non_ascii_digits(number: str) -> None:
    assert not luhn_valid(number)


def test_a_card_is_valid_through_the_last_day_of_its_expiry_month() -> None:
    assert not is_expired(6, 2026, date(2026, 6, 30))
    assert is_expired(6, 2026, date(2026, 7, 1))
    assert is_expired(12, 2025, date(2026, 1, 1))


def test_a_good_card_breaks_no_rule() -> None:
    assert card_violations("card", Card(), TODAY) == []


def test_a_card_left_unset_is_required() -> None:
    assert card_violations("card", None, TODAY) == [FieldViolation("card", "must not be empty", "REQUIRED")]


def test_every_bad_field_is_named_once_under_the_requests_field_with_the_wording_on_the_wire() -> None:
    # Spelled out, not read back from the module: clients show these descriptions and branch on the reasons.
    assert card_violations("card", Card(number="4242 4242", exp_month=13, exp_year=30, cvv="12a"), TODAY) == [
        FieldViolation("card.number", "must be 12 to 19 digits", "INVALID_CARD_NUMBER"),
        FieldViolation("card.exp_month", "must be 1 to 12", "OUT_OF_RANGE"),
        FieldViolation("card.exp_year", "must be a four-digit year", "OUT_OF_RANGE"),
        FieldViolation("card.cvv", "must be 3 or 4 digits", "INVALID_FORMAT"),
    ]


@pytest.mark.parametrize("number", ["4242424242424242²", "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢", "42424242424", "4" * 20])
def test_a_number_of_other_than_12_to_19_ascii_digits_is_refused_before_the_luhn_check(number: str) -> None:
    assert card_violations("card", Card(number=number), TODAY) == [
        FieldViolation("card.number", "must be 12 to 19 digits", "INVALID_CARD_NUMBER")
    ]


def test_a_number_with_a_wrong_check_digit_fails_the_luhn_check() -> None:
    assert card_violations("card", Card(number="4242424242424241"), TODAY) == [
        FieldViolation("card.number", "fails the Luhn check", "INVALID_CARD_NUMBER")
    ]


@pytest.mark.parametrize(("exp_month", "exp_year"), [(12, 1000), (12, 9999), (1, 2030)])
def test_the_expiry_bounds_themselves_are_accepted(exp_month: int, exp_year: int) -> None:
    assert card_violations("card", Card(exp_month=exp_month, exp_year=exp_year), date(999, 1, 1)) == []


@pytest.mark.parametrize("cvv", ["12", "12345", "12³", ""])
def test_a_cvv_of_other_than_3_or_4_ascii_digits_is_refused(cvv: str) -> None:
    assert card_violations("card", Card(cvv=cvv), TODAY) == [
        FieldViolation("card.cvv", "must be 3 or 4 digits", "INVALID_FORMAT")
    ]


def test_an_expiry_in_a_past_year_blames_the_year() -> None:
    assert card_violations("card", Card(exp_month=12, exp_year=2025), TODAY) == [
        FieldViolation("card.exp_year", "the card has expired", "CARD_EXPIRED")
    ]


def test_an_expiry_earlier_this_year_blames_the_month() -> None:
    assert card_violations("card", Card(exp_month=5, exp_year=2026), TODAY) == [
        FieldViolation("card.exp_month", "the card has expired", "CARD_EXPIRED")
    ]


def test_a_card_expiring_this_month_is_accepted() -> None:
    assert card_violations("card", Card(exp_month=6, exp_year=2026), TODAY) == []


def test_without_today_an_expired_card_breaks_no_rule() -> None:
    assert card_violations("card", Card(exp_month=1, exp_year=2020), None) == []


def test_an_expiry_out_of_range_is_not_also_called_expired() -> None:
    assert [v.reason for v in card_violations("card", Card(exp_month=0, exp_year=2020), TODAY)] == ["OUT_OF_RANGE"]


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        (["INVALID_CARD_NUMBER"], "INVALID_CARD_NUMBER"),
        (["CARD_EXPIRED"], "CARD_EXPIRED"),
        (["CARD_EXPIRED", "CARD_EXPIRED"], "CARD_EXPIRED"),
        (["INVALID_CARD_NUMBER", "CARD_EXPIRED"], "VALIDATION_FAILED"),
        (["CARD_EXPIRED", "INVALID_FORMAT"], "VALIDATION_FAILED"),
        (["REQUIRED"], "VALIDATION_FAILED"),
    ],
)
def test_a_card_reason_names_the_refusal_only_when_it_is_all_that_is_wrong(reasons: list[str], expected: str) -> None:
    assert refusal_reason([FieldViolation(f"field_{i}", "wrong", r) for i, r in enumerate(reasons)]) == expected
