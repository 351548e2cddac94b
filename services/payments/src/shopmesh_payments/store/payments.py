"""Payments and the order-charge guard, read and written in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update

from shopmesh_chassis.db import DbConnection, as_utc, insert_skipping_existing, stored_enum
from shopmesh_payments.domain.models import Money, Payment, PaymentState
from shopmesh_payments.store.tables import order_charges, payments

# Built once: the charge path runs these on every order (building a statement costs more than running it).
_HOLDER = select(order_charges.c.payment_id).where(order_charges.c.order_id == bindparam("b_order_id"))
_INSERT_PAYMENT = insert(payments)


def _payment(row: Any) -> Payment:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        amount=Money(amount_minor=row.amount_minor, currency=row.currency),
        state=stored_enum(PaymentState, row.state),
        card_last4=row.card_last4,
        decline_reason=row.decline_reason,
        refund_reason=row.refund_reason,
        processor_charge_id=row.processor_charge_id,
        created_at=as_utc(row.created_at),
        refunded_at=as_utc(row.refunded_at),
    )


class PaymentRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def claim_order(self, order_id: str, payment_id: str, now: datetime) -> str | None:
        """Reserve `order_id` for `payment_id`; returns None, or the id of the payment that holds it."""
        # One INSERT that skips an order already claimed (a concurrent claim waits for the first, then skips).
        claim = insert_skipping_existing(self._session.dialect.name, order_charges)
        result = await self._session.execute(claim, {"order_id": order_id, "payment_id": payment_id, "created_at": now})
        if int(result.rowcount or 0) == 1:
            return None
        return str(await self._session.scalar(_HOLDER, {"b_order_id": order_id}))

    async def release_order(self, order_id: str, payment_id: str) -> None:
        await self._session.execute(
            delete(order_charges).where(order_charges.c.order_id == order_id, order_charges.c.payment_id == payment_id)
        )

    async def add(self, payment: Payment) -> None:
        await self._session.execute(
            _INSERT_PAYMENT,
            {
                "id": payment.id,
                "order_id": payment.order_id,
                "amount_minor": payment.amount.amount_minor,
                "currency": payment.amount.currency,
                "state": payment.state.value,
                "card_last4": payment.card_last4,
                "decline_reason": payment.decline_reason,
                "refund_reason": payment.refund_reason,
                "processor_charge_id": payment.processor_charge_id,
                "created_at": payment.created_at,
                "refunded_at": payment.refunded_at,
            },
        )

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        query = select(payments).where(payments.c.id == payment_id)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).one_or_none()
        return _payment(row) if row is not None else None

    async def mark_refunded(self, payment: Payment) -> bool:
        """Store a refund; False when the payment was no longer CAPTURED (someone refunded it first)."""
        result = await self._session.execute(
            update(payments)
            .where(payments.c.id == payment.id, payments.c.state == PaymentState.CAPTURED.value)
            .values(state=payment.state.value, refund_reason=payment.refund_reason, refunded_at=payment.refunded_at)
        )
        return int(result.rowcount or 0) == 1

    async def list_for_order(
        self, order_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> tuple[list[Payment], bool]:
        """Up to `limit` payments of `order_id`, newest first, after the key `after`; and whether more follow."""
        query = select(payments).where(payments.c.order_id == order_id)
        if after is not None:
            created_at, last_id = after
            query = query.where(
                or_(
                    payments.c.created_at < created_at,
                    and_(payments.c.created_at == created_at, payments.c.id < last_id),
                )
            )
        query = query.order_by(payments.c.created_at.desc(), payments.c.id.desc()).limit(limit + 1)
        rows = (await self._session.execute(query)).all()
        return [_payment(row) for row in rows[:limit]], len(rows) > limit
