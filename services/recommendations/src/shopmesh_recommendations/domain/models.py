"""What recommendations are made of: catalog products as this service sees them, and confirmed orders
(and cancellations of them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CatalogProduct:
    """The part of a catalog product that recommendations need: its category and its display summary."""

    id: str
    name: str
    category: str
    price_minor: int
    currency: str
    image_url: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    product: CatalogProduct
    # In (0, 1]; only comparable within one answer.
    score: float


@dataclass(frozen=True, slots=True)
class ConfirmedOrder:
    """An order that was paid for: the only evidence of taste this service learns from."""

    order_id: str
    user_id: str
    product_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelledOrder:
    """An order that was cancelled. If it had been confirmed (and counted), what it taught is taken back:
    a customer who returns a purchase did not, in the end, buy those products together."""

    order_id: str
    user_id: str
    product_ids: tuple[str, ...]
