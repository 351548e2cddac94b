"""What the saga needs from other services, in the orders domain's own words.

The adapters in `clients.py` implement these over gRPC; unit tests use in-memory fakes.
Every method raises `shopmesh_chassis.errors.Unavailable` when the other side cannot answer now:
`DependencyDown` when it does not answer at all, `LostRace` when it answered that it lost a race (worth asking
again soon), a plain `Unavailable` when it answered but the order must wait (about that order alone, e.g. a state
a newer release of that service stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shopmesh_chassis import errors
from shopmesh_orders.domain.model import CancelCode, OrderLine
from shopmesh_orders.domain.validation import Card, CartLine


@dataclass(frozen=True, slots=True)
class PricedProduct:
    product_id: str
    name: str
    price_minor: int
    currency: str


class DependencyDown(errors.Unavailable):
    """The other service does not answer at all: its transport is UNAVAILABLE (the client's circuit breaker
    open included), the call's deadline passed, or it sheds load. Every order's call would fail alike for
    now, so a pass over many orders (the charge rechecks) stops at the first. Any other `errors.Unavailable`
    an adapter raises is about the one order it was called for: that order waits, the others go on (a pass
    that stopped for it would stop at it every time, since it stays first in line)."""


class LostRace(errors.Unavailable):
    """The other service answered ABORTED: its write for this order lost a concurrency race (a database
    serialization failure, an optimistic update that lost its own retries). It says nothing about the order's
    state, and the same call asked again shortly is likely to get the answer; about this order alone."""


class InsufficientStock(Exception):
    """Inventory refused the reservation: `product_ids` are the first products short (all of them unless
    they are many and long), `short_count` how many are short in all."""

    def __init__(self, product_ids: Sequence[str], short_count: int | None = None) -> None:
        super().__init__(f"insufficient stock for {', '.join(product_ids)}")
        self.product_ids = tuple(product_ids)
        self.short_count = len(self.product_ids) if short_count is None else short_count


class ReservationExpired(Exception):
    """The reservation can no longer be committed (expired, released, or no longer known to inventory): it
    holds no stock."""


class PaymentRefused(Exception):
    """Payments will not charge the order, for good: mostly the card said no, recorded by payments as
    `payment_id`; or the order's one capture was refunded since (`payment_id`), and payments never captures an
    order twice."""

    def __init__(self, code: CancelCode, payment_id: str) -> None:
        super().__init__(code.value)
        self.code = code
        self.payment_id = payment_id


class RefundRefused(RuntimeError):
    """Payments refused the refund's request itself, not the refund: its key was used with another request
    (IDEMPOTENCY_KEY_REUSED), or its reason breaks payments' rules. An orders release that asked with another
    reason (before the reason was the same on every try) may have refunded the payment under the key already:
    only the payment's state tells. A RuntimeError as any answer the contract does not promise here."""


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    payment_id: str
    captured: bool  # captured and not refunded
    declined: CancelCode | None
    # Captured, then refunded in full. Payments refunds only when orders asks (`<order_id>:refund`), and lists
    # only this order's payments: the refund was the order's own, perhaps one whose answer was lost.
    refunded: bool
    # What was charged (or attempted, when declined): a capture is the order's charge only for its total.
    amount_minor: int
    currency: str


class Catalog(Protocol):
    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        """The products' current prices; `fresh` asks catalog itself, past any prices remembered."""
        ...


class Inventory(Protocol):
    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        """The id of the order's reservation, made now or earlier (keyed by order id). Raises
        ReservationExpired when the order's reservation exists but expired or was released: it holds no
        stock, and a new one cannot be made for the same order."""
        ...

    async def commit(self, reservation_id: str) -> None:
        """Raises ReservationExpired when the reservation holds no stock to commit (expired, released, or no
        longer known to inventory)."""
        ...

    async def release(self, reservation_id: str) -> None: ...


class Payments(Protocol):
    async def charge(
        self, order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str
    ) -> str: ...
    async def payments_for(self, order_id: str) -> list[PaymentRecord]: ...
    async def refund(self, payment_id: str, reason: str, idempotency_key: str) -> None: ...


def cart_of(lines: Sequence[OrderLine]) -> tuple[CartLine, ...]:
    return tuple(CartLine(line.product_id, line.quantity) for line in lines)
