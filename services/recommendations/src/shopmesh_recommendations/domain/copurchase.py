"""What one confirmed order teaches: which products were bought together, and who bought what.

Counts are numbers of orders, not units: ten of the same socks in one order say no more about taste than
one pair, and a bulk buyer should not dominate everybody's recommendations.
"""

from __future__ import annotations

from dataclasses import dataclass

from shopmesh_recommendations.domain.models import CancelledOrder, ConfirmedOrder


@dataclass(frozen=True, slots=True)
class PurchaseEffects:
    """Increments by one: each ordered pair in `pairs`, each of `user_id`'s `products`."""

    # The order they come from: an order counts once, and only a counted order is taken back.
    order_id: str
    user_id: str
    products: tuple[str, ...]
    # Both directions, so "bought with X" is one indexed lookup by X.
    pairs: tuple[tuple[str, str], ...]


def purchase_effects(order: ConfirmedOrder | CancelledOrder) -> PurchaseEffects:
    """The counts an order adds when it is confirmed, and takes back when a confirmed order is cancelled."""
    # Sorted: the same order always yields the same statements (and the same row-lock order on PostgreSQL).
    products = tuple(sorted({p for p in order.product_ids if p}))
    pairs = tuple((a, b) for a in products for b in products if a != b)
    return PurchaseEffects(order_id=order.order_id, user_id=order.user_id, products=products, pairs=pairs)
