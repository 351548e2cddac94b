"""The fake processor's ledger of the attempts it answered, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update

from shopmesh_chassis.db import DbConnection
from shopmesh_payments.domain.models import Money
from shopmesh_payments.store.tables import processor_charges

_INSERT = insert(processor_charges)  # built once: every charge records one

CAPTURED = "CAPTURED"
DECLINED = "DECLINED"


class ProcessorLedger:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def record(
        self,
        *,
        charge_id: str,
        reference: str,
        amount: Money,
        card_last4: str,
        decline_code: str,
        now: datetime,
    ) -> None:
        await self._session.execute(
            _INSERT,
            {
                "id": charge_id,
                "reference": reference,
                "amount_minor": amount.amount_minor,
                "currency": amount.currency,
                "card_last4": card_last4,
                "outcome": DECLINED if decline_code else CAPTURED,
                "decline_code": decline_code,
                "created_at": now,
            },
        )

    async def refund(self, charge_id: str, amount: Money, now: datetime) -> bool:
        """Mark a capture of exactly `amount` refunded; False when there is no such unrefunded capture."""
        result = await self._session.execute(
            update(processor_charges)
            .where(
                processor_charges.c.id == charge_id,
                processor_charges.c.outcome == CAPTURED,
                processor_charges.c.refunded_at.is_(None),
                processor_charges.c.amount_minor == amount.amount_minor,
                processor_charges.c.currency == amount.currency,
            )
            .values(refunded_at=now)
        )
        return int(result.rowcount or 0) == 1
