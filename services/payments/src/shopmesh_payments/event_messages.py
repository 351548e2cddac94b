"""The payments events of the contract (events.proto), made from domain payments."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from shopmesh.common.v1 import money_pb2
from shopmesh.payments.v1 import events_pb2
from shopmesh_payments.domain.models import Money, Payment

STREAM = "PAYMENTS"
STREAM_SUBJECTS = ["payments.v1.>"]
PAYMENT_CAPTURED = "payments.v1.payment_captured"
PAYMENT_REFUNDED = "payments.v1.payment_refunded"


def _timestamp(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def _money(amount: Money) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount.amount_minor, currency=amount.currency)


def payment_captured(payment: Payment, event_id: str) -> events_pb2.PaymentCaptured:
    return events_pb2.PaymentCaptured(
        event_id=event_id,
        occurred_at=_timestamp(payment.created_at),
        payment_id=payment.id,
        order_id=payment.order_id,
        amount=_money(payment.amount),
        card_last4=payment.card_last4,
    )


def payment_refunded(payment: Payment, event_id: str) -> events_pb2.PaymentRefunded:
    if payment.refunded_at is None:
        raise ValueError(f"payment {payment.id} is not refunded")
    return events_pb2.PaymentRefunded(
        event_id=event_id,
        occurred_at=_timestamp(payment.refunded_at),
        payment_id=payment.id,
        order_id=payment.order_id,
        amount=_money(payment.amount),
        reason=payment.refund_reason,
    )
