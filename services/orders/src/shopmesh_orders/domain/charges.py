"""What payments' records of an order say of its charge, when orders did not get the charge's own answer: the
first answer lost and its retry refused as another request under the charge's key (IDEMPOTENCY_KEY_REUSED), the
key's outcome purged (ORDER_ALREADY_CHARGED), or a saga resumed at the pivot without the card. One rule for all
three, so an order never reads as paid on one path and refunded on another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shopmesh_orders.domain.model import CancelCode
from shopmesh_orders.domain.ports import PaymentRecord, PaymentRefused


class CaptureOfAnotherAmount(PaymentRefused):
    """Payments holds a capture of the order for another amount or currency than the order's total (an earlier
    request built otherwise: a price read anew, another release). Kept, the customer would pay what they were not
    shown; payments captures an order at most once, so the order cannot be paid either: cancelled as our request
    at fault, PAYMENT_REQUEST_REJECTED, naming the capture, which compensation refunds."""

    def __init__(self, capture: PaymentRecord, amount_minor: int, currency: str) -> None:
        super().__init__(CancelCode.PAYMENT_REQUEST_REJECTED, capture.payment_id)
        self.capture = capture
        self.amount_minor = amount_minor
        self.currency = currency

    def __str__(self) -> str:
        return (
            f"payments holds capture {self.payment_id} for {self.capture.amount_minor} {self.capture.currency}, "
            f"not the order's {self.amount_minor} {self.currency}"
        )


@dataclass(frozen=True)
class EarlierCharge:
    """What `earlier_charge` found: at most one of its fields set, none when payments holds neither a capture
    nor a decline of the order. Its callers differ on a decline (the card's refusal for one, no answer at all
    where payments said the order was charged), hence the two refusals apart, with `refusal` for either."""

    # The payment id of the capture that is the order's charge.
    charge_id: str | None = None
    # A capture of the order that cannot be its charge: for another amount or currency.
    another_amount: CaptureOfAnotherAmount | None = None
    # The card's decline, the declined payment named.
    decline: PaymentRefused | None = None

    @property
    def refusal(self) -> PaymentRefused | None:
        """The refusal that ends the order, either one."""
        return self.another_amount if self.another_amount is not None else self.decline


def earlier_charge(
    records: Sequence[PaymentRecord], amount_minor: int, currency: str, *, holder: str = ""
) -> EarlierCharge:
    """The order's charge among its payment `records`, for an order whose total is `amount_minor` `currency`:
    its capture (`holder` first if it is one), or a capture of another amount, or else the card's decline."""
    captured = sorted((r for r in records if r.captured), key=lambda r: r.payment_id != holder)
    if captured:
        capture = captured[0]
        if (capture.amount_minor, capture.currency) == (amount_minor, currency):
            return EarlierCharge(charge_id=capture.payment_id)
        return EarlierCharge(another_amount=CaptureOfAnotherAmount(capture, amount_minor, currency))
    for record in records:
        if record.declined is not None:
            return EarlierCharge(decline=PaymentRefused(record.declined, record.payment_id))
    return EarlierCharge()
