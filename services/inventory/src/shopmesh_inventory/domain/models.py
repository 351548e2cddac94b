"""Stock levels and reservations as the rest of the service sees them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime


class ReservationState(enum.Enum):
    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    # A state a newer release stored (during a rollout, a canary or after a rollback both run on the same
    # database): this release cannot tell whether the units are still held, so the reservation stays
    # readable but is never committed, released or expired, nor written back over (docs/chassis.md).
    UNSPECIFIED = "UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class StockLevel:
    """`reserved` counts only units held by PENDING reservations that have not expired."""

    product_id: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return max(self.on_hand - self.reserved, 0)

    def releasing(self, units: int) -> StockLevel:
        """The level once `units` held by overdue reservations count as available again."""
        return replace(self, reserved=self.reserved - units) if units else self

    @classmethod
    def empty(cls, product_id: str) -> StockLevel:
        # The contract: a product without a stock record simply has zero stock.
        return cls(product_id=product_id, on_hand=0, reserved=0)


@dataclass(frozen=True, slots=True, order=True)
class ReservationItem:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    order_id: str
    # Sorted by product_id, as the contract returns them and as stock rows are locked.
    items: tuple[ReservationItem, ...]
    state: ReservationState
    created_at: datetime
    expires_at: datetime
    updated_at: datetime

    def is_overdue(self, now: datetime) -> bool:
        """PENDING past expires_at: expired in fact, even if no sweep has recorded it yet."""
        return self.state is ReservationState.PENDING and now >= self.expires_at

    def as_seen_at(self, now: datetime) -> Reservation:
        """The reservation as clients must see it: an overdue PENDING one is reported EXPIRED.

        It changed state at expires_at, whenever a sweep gets to record it, so that is its updated_at.
        """
        if not self.is_overdue(now):
            return self
        return replace(self, state=ReservationState.EXPIRED, updated_at=self.expires_at)

    def holds_same_items(self, items: tuple[ReservationItem, ...]) -> bool:
        return self.items == tuple(sorted(items))


@dataclass(frozen=True, slots=True)
class PurgedReservation:
    """What is kept of a finished reservation deleted past its retention: no items, so no stock it moves."""

    reservation_id: str
    order_id: str
    # The state it ended in: COMMITTED, RELEASED or EXPIRED.
    state: ReservationState
    ended_at: datetime
