"""The use cases of the payments service: one method per operation.

Charge and Refund run at most once per idempotency key: inside the chassis idempotency store's transaction,
which stores their response in the same commit, and replayed from it on a retry. Reads open their own.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.idempotency import IdempotencyStore
from shopmesh_chassis.outbox import add_event, new_event_id
from shopmesh_payments import event_messages
from shopmesh_payments.codec import payment_to_proto
from shopmesh_payments.domain import payments as rules
from shopmesh_payments.domain.models import Card, Money, Payment, PaymentPage, PaymentState
from shopmesh_payments.domain.processor import CardProcessor
from shopmesh_payments.domain.validation import (
    ChargeCommand,
    ListPaymentsQuery,
    RefundCommand,
    check_card_current,
    validate_charge_before_lookup,
    validate_list_payments,
    validate_payment_id,
    validate_refund,
)
from shopmesh_payments.store.payments import PaymentRepository

# The processor works in the transaction it is given (the built-in one keeps its ledger there).
ProcessorFactory = Callable[[DbConnection], CardProcessor]


class PaymentsApplication:
    def __init__(
        self,
        database: Database,
        processor_for: ProcessorFactory,
        idempotency: IdempotencyStore,
        clock: Clock = utc_now,
        events_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = database
        self._processor_for = processor_for
        self._idempotency = idempotency
        self._clock = clock
        # Tells the outbox relay that a committed transaction may have added events.
        self._events_committed = events_committed

    def validate_charge(self, order_id: str, amount: Money | None, card: Card | None) -> ChargeCommand:
        """Every rule, but an expiry that is all that is wrong waits for `charge`, after the idempotency lookup
        and the order's claim, so that a retry of a charge made before the card expired reads that charge."""
        return validate_charge_before_lookup(order_id, amount, card, self._clock().date())

    async def charge(self, command: ChargeCommand, key: str | None, request: Message) -> payments_pb2.ChargeResponse:
        """The charge `command` under idempotency key `key`, once; `request` (as sent) tells a retry from another
        request. A DECLINED payment is FAILED_PRECONDITION, on the first answer and on every replay alike."""

        async def operation(session: DbConnection) -> payments_pb2.ChargeResponse:
            return payments_pb2.ChargeResponse(payment=payment_to_proto(await self._charge_in(session, command)))

        response = await self._idempotency.run(
            method="Charge", key=key, request=request, response_type=payments_pb2.ChargeResponse, operation=operation
        )
        self._events_committed()
        # A decline must commit its DECLINED payment (and give the order's claim back), but the idempotency store
        # rolls back an operation that raises. So the operation returns the DECLINED payment, stored under the
        # key like any response, and it becomes the contract's error here.
        payment = response.payment
        if payment.state == payments_pb2.PAYMENT_STATE_DECLINED:
            raise rules.charge_declined(payment.id, payment.order_id, payment.decline_reason)
        return response

    async def refund(
        self, payment_id: str, reason: str, key: str | None, request: Message
    ) -> payments_pb2.RefundResponse:
        """The refund of `payment_id` under idempotency key `key`, once; `request` as for `charge`.

        Validated once no outcome is stored under the key, before it is claimed: a retry of a refund a release
        before the one-line reason applied replays it (an older orders retries with its reason), and a
        malformed new request stores nothing."""

        def validated() -> RefundCommand:
            return validate_refund(payment_id, reason)

        async def operation(session: DbConnection) -> payments_pb2.RefundResponse:
            return payments_pb2.RefundResponse(payment=payment_to_proto(await self._refund_in(session, validated())))

        response = await self._idempotency.run(
            method="Refund",
            key=key,
            request=request,
            response_type=payments_pb2.RefundResponse,
            operation=operation,
            check=validated,
        )
        self._events_committed()
        return response

    async def _charge_in(self, session: DbConnection, command: ChargeCommand) -> Payment:
        """Capture the amount, or record the decline. An order is captured at most once: its claim
        commits with the capture, and a declined attempt gives the claim back."""
        repository = PaymentRepository(session)
        now = self._clock()
        payment_id = rules.new_payment_id()
        holder = await repository.claim_order(command.order_id, payment_id, now)
        if holder is not None:
            raise rules.order_already_charged(command.order_id, holder)
        check_card_current(command.card, now.date())
        result = await self._processor_for(session).charge(command.card, command.amount, reference=command.order_id)
        payment = rules.record_attempt(payment_id, command.order_id, command.amount, command.card, result, now)
        await repository.add(payment)
        if payment.state is PaymentState.DECLINED:
            await repository.release_order(command.order_id, payment_id)
        else:
            event_id = new_event_id()
            await add_event(
                session,
                subject=event_messages.PAYMENT_CAPTURED,
                message=event_messages.payment_captured(payment, event_id),
                event_id=event_id,
            )
        return payment

    async def _refund_in(self, session: DbConnection, command: RefundCommand) -> Payment:
        repository = PaymentRepository(session)
        payment = await repository.get(command.payment_id, for_update=True)
        if payment is None:
            raise rules.payment_not_found(command.payment_id)
        if not rules.needs_refund(payment):
            return payment
        await self._processor_for(session).refund(payment.processor_charge_id, payment.amount)
        done = rules.refunded(payment, command.reason, self._clock())
        if not await repository.mark_refunded(done):
            # The row lock above makes this unreachable; should a database ever allow it, the refund is
            # not applied twice, and a retry (ABORTED is not stored under the key) returns the refund.
            raise errors.Aborted(f"payment {payment.id} changed concurrently; retry", reason="CONCURRENT_UPDATE")
        event_id = new_event_id()
        await add_event(
            session,
            subject=event_messages.PAYMENT_REFUNDED,
            message=event_messages.payment_refunded(done, event_id),
            event_id=event_id,
        )
        return done

    async def get_payment(self, payment_id: str) -> Payment:
        payment_id = validate_payment_id(payment_id)
        async with self._db.read() as session:
            payment = await PaymentRepository(session).get(payment_id)
        if payment is None:
            raise rules.payment_not_found(payment_id)
        return payment

    async def list_payments(self, order_id: str, page_size: int, page_token: str) -> PaymentPage:
        query: ListPaymentsQuery = validate_list_payments(order_id, page_size, page_token)
        async with self._db.read() as session:
            found, more = await PaymentRepository(session).list_for_order(query.order_id, query.limit, query.after)
        token = query.next_page_token(found[-1]) if more and found else ""
        return PaymentPage(payments=tuple(found), next_page_token=token)
