"""The payments domain without I/O: card rules, validation, the test cards, the payment state machine."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from shopmesh_chassis import errors
from shopmesh_chassis.pagination import encode_page_token
from shopmesh_payments.domain.card_responses import CardResponse, response_for
from shopmesh_payments.domain.models import Card, Money, Payment, PaymentState
from shopmesh_payments.domain.payments import (
    charge_declined,
    needs_refund,
    order_already_charged,
    processor_unavailable,
    record_attempt,
    refunded,
)
from shopmesh_payments.domain.processor import ProcessorResult
from shopmesh_payments.domain.validation import (
    validate_charge,
    validate_charge_before_lookup,
    validate_list_payments,
    validate_payment_id,
    validate_refund,
)

TODAY = date(2026, 6, 15)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
USD_10 = Money(1000, "USD")


def card(number: str = "4242424242424242", exp_month: int = 12, exp_year: int = 2030, cvv: str = "123") -> Card:
    return Card(number=number, exp_month=exp_month, exp_year=exp_year, cvv=cvv)


def violations_of(error: errors.InvalidArgument) -> dict[str, str]:
    return {v.field: v.reason for v in error.violations}


def payment(state: PaymentState = PaymentState.CAPTURED) -> Payment:
    return Payment(
        id="pay_1",
        order_id="ord_1",
        amount=USD_10,
        state=state,
        card_last4="4242",
        decline_reason="CARD_DECLINED" if state is PaymentState.DECLINED else "",
        refund_reason="",
        processor_charge_id="ch_1",
        created_at=NOW,
    )


# --- the card's repr -----------------------------------------------------------------------------------


def test_card_repr_never_shows_the_number_or_the_cvv() -> None:
    shown = repr(card(cvv="987"))
    assert "4242424242424242" not in shown
    assert "987" not in shown
    assert card().last4 == "4242"


# --- test cards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("4242424242424242", CardResponse.APPROVED),
        ("4000000000000002", CardResponse.CARD_DECLINED),
        ("4000000000009995", CardResponse.INSUFFICIENT_FUNDS),
        ("4000000000000119", CardResponse.PROCESSOR_UNAVAILABLE),
        ("5555555555554444", CardResponse.APPROVED),
    ],
)
def test_the_fake_processor_answers_by_the_documented_test_cards(number: str, expected: CardResponse) -> None:
    assert response_for(number) is expected


# --- Charge validation ---------------------------------------------------------------------------------


def test_a_valid_charge_becomes_a_command() -> None:
    command = validate_charge("ord_1", USD_10, card(), TODAY)
    assert (command.order_id, command.amount, command.card.last4) == ("ord_1", USD_10, "4242")


def test_charge_validation_reports_every_bad_field_once() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("", Money(0, "usd"), card(number="123", exp_month=13, exp_year=30, cvv="12a"), TODAY)
    assert violations_of(caught.value) == {
        "order_id": "REQUIRED",
        "amount.amount_minor": "OUT_OF_RANGE",
        "amount.currency": "INVALID_FORMAT",
        "card.number": "INVALID_CARD_NUMBER",
        "card.exp_month": "OUT_OF_RANGE",
        "card.exp_year": "OUT_OF_RANGE",
        "card.cvv": "INVALID_FORMAT",
    }
    assert caught.value.reason == "VALIDATION_FAILED"


def test_missing_amount_and_card_are_required() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("ord_1", None, None, TODAY)
    assert violations_of(caught.value) == {"amount": "REQUIRED", "card": "REQUIRED"}


def test_an_order_id_longer_than_64_characters_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("o" * 65, USD_10, card(), TODAY)
    assert violations_of(caught.value) == {"order_id": "TOO_LONG"}


@pytest.mark.parametrize("number", ["4242424242424241", "4242 4242 4242 4242", "4242-4242-4242-4242", "42424242424"])
def test_a_bad_card_number_alone_answers_invalid_card_number(number: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("ord_1", USD_10, card(number=number), TODAY)
    assert caught.value.reason == "INVALID_CARD_NUMBER"
    assert violations_of(caught.value) == {"card.number": "INVALID_CARD_NUMBER"}


def test_an_expired_card_answers_card_expired_on_the_year_when_the_year_is_past() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("ord_1", USD_10, card(exp_month=12, exp_year=2025), TODAY)
    assert caught.value.reason == "CARD_EXPIRED"
    assert violations_of(caught.value) == {"card.exp_year": "CARD_EXPIRED"}


def test_a_card_expired_earlier_this_year_answers_card_expired_on_the_month() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("ord_1", USD_10, card(exp_month=5, exp_year=2026), TODAY)
    assert violations_of(caught.value) == {"card.exp_month": "CARD_EXPIRED"}


def test_a_card_expiring_this_month_is_accepted() -> None:
    validate_charge("ord_1", USD_10, card(exp_month=6, exp_year=2026), TODAY)


def test_before_the_lookup_an_expiry_that_is_all_that_is_wrong_waits_for_check_card_current() -> None:
    command = validate_charge_before_lookup("ord_1", USD_10, card(exp_month=12, exp_year=2025), TODAY)
    assert (command.card.exp_month, command.card.exp_year) == (12, 2025)


def test_before_the_lookup_an_expiry_beside_another_error_is_named_too() -> None:
    """Refused, the request stores nothing under its key: there is no earlier charge to replay."""
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge_before_lookup("ord_1", USD_10, card(exp_month=12, exp_year=2025, cvv="12a"), TODAY)
    assert caught.value.reason == "VALIDATION_FAILED"
    assert violations_of(caught.value) == {"card.exp_year": "CARD_EXPIRED", "card.cvv": "INVALID_FORMAT"}


def test_validation_messages_never_repeat_the_card_number_or_cvv() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_charge("ord_1", USD_10, card(number="4242424242424241", cvv="98765"), TODAY)
    text = caught.value.message + " ".join(v.description for v in caught.value.violations)
    assert "4242424242424241" not in text
    assert "98765" not in text


# --- Refund, Get, List validation ----------------------------------------------------------------------


def test_refund_needs_a_payment_id_and_a_reason_of_at_most_500_characters() -> None:
    assert validate_refund("pay_1", "r" * 500).reason == "r" * 500
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_refund("", "r" * 501)
    assert violations_of(caught.value) == {"payment_id": "REQUIRED", "reason": "TOO_LONG"}


def test_a_refund_reason_of_more_than_one_line_is_invalid_characters_and_an_empty_one_is_fine() -> None:
    assert validate_refund("pay_1", "").reason == ""
    assert validate_refund("pay_1", "order cancelled by customer \u200d\u05d0").reason.startswith("order")
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_refund("pay_1", "cancelled\r\nRefund approved by the bank")
    assert violations_of(caught.value) == {"reason": "INVALID_CHARACTERS"}


def test_payment_id_must_be_present_and_at_most_64_characters() -> None:
    for bad in ("", "p" * 65):
        with pytest.raises(errors.InvalidArgument):
            validate_payment_id(bad)


@pytest.mark.parametrize(("page_size", "limit"), [(0, 20), (1, 1), (100, 100), (1000, 100)])
def test_page_size_defaults_to_20_and_is_capped_at_100(page_size: int, limit: int) -> None:
    assert validate_list_payments("ord_1", page_size, "").limit == limit


def test_list_rejects_a_negative_page_size_and_an_empty_order_id() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_list_payments("", -1, "")
    assert violations_of(caught.value) == {"order_id": "REQUIRED", "page_size": "OUT_OF_RANGE"}
    assert caught.value.reason == "VALIDATION_FAILED"


def test_a_page_token_carries_the_last_key_and_is_bound_to_the_order() -> None:
    query = validate_list_payments("ord_1", 1, "")
    token = query.next_page_token(payment())
    assert validate_list_payments("ord_1", 1, token).after == (NOW, "pay_1")
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_list_payments("ord_2", 1, token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


FORGED_INSTANT = encode_page_token((10**20, "pay_1"), {"rpc": "ListPayments", "order_id": "ord_1"})


@pytest.mark.parametrize("token", ["garbage!", "e30", "eyJrIjpbMSwicCJdLCJmIjoieCJ9", FORGED_INSTANT])
def test_a_malformed_page_token_is_invalid_page_token(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_list_payments("ord_1", 1, token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


# --- the payment's life --------------------------------------------------------------------------------


def test_an_approved_attempt_is_a_captured_payment_keeping_only_the_last_four_digits() -> None:
    made = record_attempt("pay_1", "ord_1", USD_10, card(), ProcessorResult("ch_1"), NOW)
    assert (made.state, made.card_last4, made.decline_reason, made.processor_charge_id) == (
        PaymentState.CAPTURED,
        "4242",
        "",
        "ch_1",
    )


def test_a_declined_attempt_is_a_declined_payment_with_its_reason() -> None:
    made = record_attempt("pay_1", "ord_1", USD_10, card(), ProcessorResult("ch_1", "INSUFFICIENT_FUNDS"), NOW)
    assert (made.state, made.decline_reason) == (PaymentState.DECLINED, "INSUFFICIENT_FUNDS")


def test_a_captured_payment_is_refunded_with_its_reason_and_time() -> None:
    assert needs_refund(payment())
    done = refunded(payment(), "customer cancelled", NOW)
    assert (done.state, done.refund_reason, done.refunded_at) == (PaymentState.REFUNDED, "customer cancelled", NOW)


def test_a_refunded_payment_needs_no_second_refund() -> None:
    assert not needs_refund(refunded(payment(), "", NOW))


@pytest.mark.parametrize("state", [PaymentState.DECLINED, PaymentState.UNSPECIFIED])
def test_a_declined_payment_or_one_in_a_state_a_newer_release_stored_is_not_refundable(state: PaymentState) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        needs_refund(payment(state))
    assert caught.value.reason == "PAYMENT_NOT_REFUNDABLE"


@pytest.mark.parametrize("state", [PaymentState.DECLINED, PaymentState.UNSPECIFIED])
def test_only_a_captured_payment_can_become_refunded(state: PaymentState) -> None:
    with pytest.raises(ValueError, match=state.value):
        refunded(payment(state), "", NOW)


def test_refusals_carry_the_reasons_and_ids_the_contract_names() -> None:
    declined = charge_declined("pay_1", "ord_1", "CARD_DECLINED")
    assert (declined.reason, declined.metadata) == ("CARD_DECLINED", {"payment_id": "pay_1", "order_id": "ord_1"})
    charged = order_already_charged("ord_1", "pay_1")
    assert (charged.reason, charged.metadata["payment_id"]) == ("ORDER_ALREADY_CHARGED", "pay_1")
    unavailable = processor_unavailable()
    assert (unavailable.reason, unavailable.retry_after_seconds) == ("PROCESSOR_UNAVAILABLE", 1.0)
