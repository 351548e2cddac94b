"""The rules of a payment's life: how an attempt becomes a payment, when it may be refunded, and the
errors the contract names for each refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from shopmesh_chassis import errors
from shopmesh_chassis.ids import new_id
from shopmesh_payments.domain.models import Card, Money, Payment, PaymentState
from shopmesh_payments.domain.processor import ProcessorResult

PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
PAYMENT_NOT_REFUNDABLE = "PAYMENT_NOT_REFUNDABLE"
ORDER_ALREADY_CHARGED = "ORDER_ALREADY_CHARGED"
PROCESSOR_UNAVAILABLE = "PROCESSOR_UNAVAILABLE"
DECLINE_REASONS = frozenset({"CARD_DECLINED", "INSUFFICIENT_FUNDS"})
# The contract's RetryInfo for an unavailable processor.
PROCESSOR_RETRY_DELAY_SECONDS = 1.0


def new_payment_id() -> str:
    return new_id("pay_")


def record_attempt(
    payment_id: str, order_id: str, amount: Money, card: Card, result: ProcessorResult, now: datetime
) -> Payment:
    """The payment a completed processor attempt leaves behind: CAPTURED, or DECLINED with its reason."""
    return Payment(
        id=payment_id,
        order_id=order_id,
        amount=amount,
        state=PaymentState.CAPTURED if result.captured else PaymentState.DECLINED,
        card_last4=card.last4,
        decline_reason=result.decline_reason,
        refund_reason="",
        processor_charge_id=result.charge_id,
        created_at=now,
    )


def needs_refund(payment: Payment) -> bool:
    """True when `payment` must be refunded now; False when it already is (a repeated refund returns it
    unchanged, so compensation can always be repeated); FAILED_PRECONDITION when it can never be."""
    if payment.state is PaymentState.CAPTURED:
        return True
    if payment.state is PaymentState.REFUNDED:
        return False
    raise errors.FailedPrecondition(
        f"payment {payment.id} is {payment.state.value}: only a CAPTURED payment can be refunded",
        reason=PAYMENT_NOT_REFUNDABLE,
        metadata={"payment_id": payment.id, "state": payment.state.value},
        # A state a newer release stored: payments.proto says to retry once that release serves, under the
        # same key (orders' compensation does), so the refusal is not the key's outcome.
        outcome=payment.state is not PaymentState.UNSPECIFIED,
    )


def refunded(payment: Payment, reason: str, now: datetime) -> Payment:
    if payment.state is not PaymentState.CAPTURED:
        raise ValueError(f"refunding a {payment.state.value} payment")
    return replace(payment, state=PaymentState.REFUNDED, refund_reason=reason, refunded_at=now)


def charge_declined(payment_id: str, order_id: str, decline_reason: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"the card was declined ({decline_reason}); payment {payment_id} is DECLINED",
        reason=decline_reason,
        metadata={"payment_id": payment_id, "order_id": order_id},
    )


def order_already_charged(order_id: str, payment_id: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"order {order_id} was already charged by payment {payment_id}",
        reason=ORDER_ALREADY_CHARGED,
        metadata={"payment_id": payment_id, "order_id": order_id},
    )


def payment_not_found(payment_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"payment {payment_id} not found", reason=PAYMENT_NOT_FOUND, metadata={"payment_id": payment_id}
    )


def processor_unavailable() -> errors.Unavailable:
    return errors.Unavailable(
        "the card processor is unavailable; nothing was charged",
        reason=PROCESSOR_UNAVAILABLE,
        retry_after_seconds=PROCESSOR_RETRY_DELAY_SECONDS,
    )
