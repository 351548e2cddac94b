"""The gRPC servicer of shopmesh.payments.v1.PaymentsService: proto → domain, domain → proto."""

from __future__ import annotations

from typing import Any

from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_key_of
from shopmesh_payments.application import PaymentsApplication
from shopmesh_payments.codec import payment_to_proto
from shopmesh_payments.domain.models import Card, Money

DESCRIPTOR = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]


def _money(request: payments_pb2.ChargeRequest) -> Money | None:
    if not request.HasField("amount"):
        return None
    return Money(amount_minor=request.amount.amount_minor, currency=request.amount.currency)


def _card(request: payments_pb2.ChargeRequest) -> Card | None:
    if not request.HasField("card"):
        return None
    card = request.card
    return Card(number=card.number, exp_month=card.exp_month, exp_year=card.exp_year, cvv=card.cvv)


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, application: PaymentsApplication) -> None:
        self._app = application

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        # Validated before the key is claimed: a malformed request is not an outcome worth storing. An expiry
        # that is all that is wrong is checked by the charge itself, after the key's outcome and the order's
        # claim are looked up: a retry after the month ended reads the charge its first call made.
        command = self._app.validate_charge(request.order_id, _money(request), _card(request))
        return await self._app.charge(command, idempotency_key_of(context), request)

    async def Refund(self, request: payments_pb2.RefundRequest, context: Any) -> payments_pb2.RefundResponse:
        return await self._app.refund(request.payment_id, request.reason, idempotency_key_of(context), request)

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Any
    ) -> payments_pb2.GetPaymentResponse:
        payment = await self._app.get_payment(request.payment_id)
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Any
    ) -> payments_pb2.ListPaymentsResponse:
        page = await self._app.list_payments(request.order_id, request.page_size, request.page_token)
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_to_proto(p) for p in page.payments], next_page_token=page.next_page_token
        )
