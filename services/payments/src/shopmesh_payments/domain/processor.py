"""The port to a card processor: what the payments service needs from one, whoever implements it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shopmesh_payments.domain.models import Card, Money


@dataclass(frozen=True, slots=True)
class ProcessorResult:
    """A completed attempt: approved and captured, or declined (`decline_reason` set)."""

    charge_id: str
    decline_reason: str = ""

    @property
    def captured(self) -> bool:
        return not self.decline_reason


class CardProcessor(Protocol):
    async def charge(self, card: Card, amount: Money, *, reference: str) -> ProcessorResult:
        """Charge and capture `amount`; raise Unavailable (reason PROCESSOR_UNAVAILABLE) when the processor
        cannot answer, in which case nothing was charged."""
        ...

    async def refund(self, charge_id: str, amount: Money) -> None:
        """Refund a captured charge in full."""
        ...
