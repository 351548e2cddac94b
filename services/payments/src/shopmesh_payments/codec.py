"""Payment → protobuf: the contract's shape, for the servicer's answers and the responses stored under a key."""

from __future__ import annotations

from shopmesh.common.v1 import money_pb2
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.proto_values import to_money, to_timestamp
from shopmesh_payments.domain.models import Money, Payment, PaymentState

_STATES = {
    PaymentState.CAPTURED: payments_pb2.PAYMENT_STATE_CAPTURED,
    PaymentState.REFUNDED: payments_pb2.PAYMENT_STATE_REFUNDED,
    PaymentState.DECLINED: payments_pb2.PAYMENT_STATE_DECLINED,
    PaymentState.UNSPECIFIED: payments_pb2.PAYMENT_STATE_UNSPECIFIED,
}


def money_message(amount: Money) -> money_pb2.Money:
    return to_money(amount.amount_minor, amount.currency)


def payment_to_proto(payment: Payment) -> payments_pb2.Payment:
    message = payments_pb2.Payment(
        id=payment.id,
        order_id=payment.order_id,
        amount=money_message(payment.amount),
        state=_STATES[payment.state],
        card_last4=payment.card_last4,
        decline_reason=payment.decline_reason,
        refund_reason=payment.refund_reason,
        created_at=to_timestamp(payment.created_at),
    )
    if payment.refunded_at is not None:
        message.refunded_at.CopyFrom(to_timestamp(payment.refunded_at))
    return message
