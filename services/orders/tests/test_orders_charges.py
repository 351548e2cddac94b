"""The one rule for what payments' records of an order say of its charge (`domain/charges.py`), which the
PaymentsClient and the saga resumed without the card both follow: pure, no I/O."""

from __future__ import annotations

from shopmesh_orders.domain.charges import EarlierCharge, earlier_charge
from shopmesh_orders.domain.model import CancelCode
from shopmesh_orders.domain.ports import PaymentRecord, PaymentRefused


def _captured(payment_id: str, amount_minor: int = 2500, currency: str = "USD") -> PaymentRecord:
    return PaymentRecord(payment_id, True, None, False, amount_minor, currency)


def _declined(payment_id: str, code: CancelCode = CancelCode.CARD_DECLINED) -> PaymentRecord:
    return PaymentRecord(payment_id, False, code, False, 2500, "USD")


REFUNDED = PaymentRecord("pay_0", False, None, True, 2500, "USD")


def test_a_capture_of_the_orders_total_is_its_charge() -> None:
    assert earlier_charge([_declined("pay_1"), _captured("pay_2")], 2500, "USD") == EarlierCharge(charge_id="pay_2")


def test_the_payment_payments_named_is_the_charge_before_another_capture() -> None:
    records = [_captured("pay_1"), _captured("pay_2")]
    assert earlier_charge(records, 2500, "USD", holder="pay_2").charge_id == "pay_2"
    assert earlier_charge(records, 2500, "USD").charge_id == "pay_1"


def test_a_capture_of_another_amount_or_currency_is_refused_naming_it_for_refund() -> None:
    for capture in (_captured("pay_1", amount_minor=1000), _captured("pay_1", currency="EUR")):
        found = earlier_charge([capture], 2500, "USD").another_amount
        assert found is not None
        assert (found.code, found.payment_id, found.capture) == (CancelCode.PAYMENT_REQUEST_REJECTED, "pay_1", capture)
        assert "not the order's 2500 USD" in str(found)


def test_a_capture_of_another_amount_is_refused_even_beside_a_decline() -> None:
    found = earlier_charge([_declined("pay_1"), _captured("pay_2", amount_minor=1000)], 2500, "USD")
    assert (found.charge_id, found.decline) == (None, None)
    assert found.another_amount is not None
    assert found.refusal is found.another_amount
    assert found.another_amount.payment_id == "pay_2"


def test_with_no_capture_a_decline_is_the_cards_refusal() -> None:
    found = earlier_charge([REFUNDED, _declined("pay_1", CancelCode.INSUFFICIENT_FUNDS)], 2500, "USD")
    assert (found.charge_id, found.another_amount) == (None, None)
    assert found.decline is not None
    assert found.refusal is found.decline
    assert type(found.decline) is PaymentRefused
    assert (found.decline.code, found.decline.payment_id) == (CancelCode.INSUFFICIENT_FUNDS, "pay_1")


def test_no_capture_and_no_decline_is_nothing() -> None:
    assert earlier_charge([], 2500, "USD") == EarlierCharge()
    assert earlier_charge([REFUNDED], 2500, "USD") == EarlierCharge()
    assert EarlierCharge().refusal is None
