"""The built-in card processor: answers by the contract's test cards and keeps its ledger in the payments
database, inside the transaction of the payment it serves, so a rolled-back payment leaves no charge."""

from __future__ import annotations

from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.ids import new_id
from shopmesh_payments.domain.card_responses import CardResponse, response_for
from shopmesh_payments.domain.models import Card, Money
from shopmesh_payments.domain.payments import processor_unavailable
from shopmesh_payments.domain.processor import ProcessorResult
from shopmesh_payments.store.ledger import ProcessorLedger


class FakeCardProcessor:
    def __init__(self, ledger: ProcessorLedger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    async def charge(self, card: Card, amount: Money, *, reference: str) -> ProcessorResult:
        response = response_for(card.number)
        if response is CardResponse.PROCESSOR_UNAVAILABLE:
            raise processor_unavailable()
        decline_code = "" if response is CardResponse.APPROVED else response.value
        charge_id = new_id("ch_")
        await self._ledger.record(
            charge_id=charge_id,
            reference=reference,
            amount=amount,
            card_last4=card.last4,
            decline_code=decline_code,
            now=self._clock(),
        )
        return ProcessorResult(charge_id=charge_id, decline_reason=decline_code)

    async def refund(self, charge_id: str, amount: Money) -> None:
        if not await self._ledger.refund(charge_id, amount, self._clock()):
            # The payments table and the ledger disagree: a bug, not a client mistake.
            raise RuntimeError(f"processor charge {charge_id} is not a refundable capture of {amount}")
