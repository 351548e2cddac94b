"""The payments events of the contract (events.proto), made from domain payments."""

from __future__ import annotations

from shopmesh.payments.v1 import events_pb2
from shopmesh_chassis.proto_values import to_timestamp
from shopmesh_payments.codec import money_message
from shopmesh_payments.domain.models import Payment

STREAM = "PAYMENTS"
STREAM_SUBJECTS = ["payments.v1.>"]
PAYMENT_CAPTURED = "payments.v1.payment_captured"
PAYMENT_REFUNDED = "payments.v1.payment_refunded"


def payment_captured(payment: Payment, event_id: str) -> events_pb2.PaymentCaptured:
    return events_pb2.PaymentCaptured(
        event_id=event_id,
        occurred_at=to_timestamp(payment.created_at),
        payment_id=payment.id,
        order_id=payment.order_id,
        amount=money_message(payment.amount),
        card_last4=payment.card_last4,
    )


def payment_refunded(payment: Payment, event_id: str) -> events_pb2.PaymentRefunded:
    if payment.refunded_at is None:
        raise ValueError(f"payment {payment.id} is not refunded")
    return events_pb2.PaymentRefunded(
        event_id=event_id,
        occurred_at=to_timestamp(payment.refunded_at),
        payment_id=payment.id,
        order_id=payment.order_id,
        amount=money_message(payment.amount),
        reason=payment.refund_reason,
    )
