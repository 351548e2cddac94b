"""The gRPC servicer of shopmesh.payments.v1.PaymentsService: proto → domain, domain → proto."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_key_of
from shopmesh_chassis.db import DbConnection
from shopmesh_chassis.idempotency import IdempotencyStore
from shopmesh_payments.application import PaymentsApplication
from shopmesh_payments.codec import payment_to_proto
from shopmesh_payments.domain.models import Card, Money
from shopmesh_payments.domain.payments import charge_declined
from shopmesh_payments.domain.validation import RefundCommand

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
    def __init__(
        self,
        application: PaymentsApplication,
        idempotency: IdempotencyStore,
        events_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self._app = application
        self._idempotency = idempotency
        # Tells the outbox relay that a committed transaction may have added events.
        self._events_committed = events_committed

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        # Validated before the key is claimed: a malformed request is not an outcome worth storing. An expiry
        # that is all that is wrong is checked by the charge itself, after the key's outcome and the order's
        # claim are looked up: a retry after the month ended reads the charge its first call made.
        command = self._app.validate_charge(request.order_id, _money(request), _card(request))

        async def operation(session: DbConnection) -> payments_pb2.ChargeResponse:
            return payments_pb2.ChargeResponse(payment=payment_to_proto(await self._app.charge(session, command)))

        response = await self._idempotency.run(
            method="Charge",
            key=idempotency_key_of(context),
            request=request,
            response_type=payments_pb2.ChargeResponse,
            operation=operation,
        )
        self._events_committed()
        # chassis-candidate: a decline must commit its DECLINED payment, but the idempotency store rolls
        # back an operation that raises. So the operation returns the DECLINED payment, stored under the
        # key like any response, and it becomes the contract's FAILED_PRECONDITION here, on the first
        # answer and on every replay alike.
        payment = response.payment
        if payment.state == payments_pb2.PAYMENT_STATE_DECLINED:
            raise charge_declined(payment.id, payment.order_id, payment.decline_reason)
        return response

    async def Refund(self, request: payments_pb2.RefundRequest, context: Any) -> payments_pb2.RefundResponse:
        # Validated once no outcome is stored under the key, before it is claimed: a retry of a refund a release
        # before the one-line reason applied replays it (an older orders retries with its reason), and a
        # malformed new request stores nothing.
        def validated() -> RefundCommand:
            return self._app.validate_refund(request.payment_id, request.reason)

        async def operation(session: DbConnection) -> payments_pb2.RefundResponse:
            return payments_pb2.RefundResponse(payment=payment_to_proto(await self._app.refund(session, validated())))

        response = await self._idempotency.run(
            method="Refund",
            key=idempotency_key_of(context),
            request=request,
            response_type=payments_pb2.RefundResponse,
            operation=operation,
            check=validated,
        )
        self._events_committed()
        return response

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
