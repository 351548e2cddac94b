"""The use cases of the payments service: one method per operation.

Charge and Refund run inside a transaction they are handed (the idempotency store's, which records their
outcome in the same commit); reads open their own.
"""

from __future__ import annotations

from collections.abc import Callable

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.outbox import add_event, new_event_id
from shopmesh_payments import event_messages
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
    def __init__(self, database: Database, processor_for: ProcessorFactory, clock: Clock = utc_now) -> None:
        self._db = database
        self._processor_for = processor_for
        self._clock = clock

    def validate_charge(self, order_id: str, amount: Money | None, card: Card | None) -> ChargeCommand:
        """Every rule, but an expiry that is all that is wrong waits for `charge`, after the idempotency lookup
        and the order's claim, so that a retry of a charge made before the card expired reads that charge."""
        return validate_charge_before_lookup(order_id, amount, card, self._clock().date())

    def validate_refund(self, payment_id: str, reason: str) -> RefundCommand:
        return validate_refund(payment_id, reason)

    async def charge(self, session: DbConnection, command: ChargeCommand) -> Payment:
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

    async def refund(self, session: DbConnection, command: RefundCommand) -> Payment:
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
