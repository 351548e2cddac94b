"""Payments and the values they are made of, as the rest of the service sees them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class PaymentState(enum.Enum):
    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"
    DECLINED = "DECLINED"
    # A state a newer release stored (during a rollout, a canary or after a rollback both run on the same
    # database): the payment stays readable, but this release cannot tell what money it still holds, so it
    # is neither refunded nor written back over the stored state (docs/chassis.md).
    UNSPECIFIED = "UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in the minor units of an ISO 4217 currency (cents for USD); never a float."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Card:
    """Card details for one charge. They live in memory for the processor call only: never stored, and
    kept out of repr() so that no log line or traceback can carry the number or the CVV."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvv: str = field(repr=False)

    @property
    def last4(self) -> str:
        return self.number[-4:]


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    order_id: str
    amount: Money
    state: PaymentState
    card_last4: str
    # "CARD_DECLINED" or "INSUFFICIENT_FUNDS" when DECLINED, else empty.
    decline_reason: str
    # The text given to Refund when REFUNDED, else empty.
    refund_reason: str
    # The processor's id of the attempt; refunds are made against it.
    processor_charge_id: str
    created_at: datetime
    refunded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PaymentPage:
    """One page of ListPayments; `next_page_token` is empty on the last page."""

    payments: tuple[Payment, ...]
    next_page_token: str
