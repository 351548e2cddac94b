"""What recommendations need from the catalog, in this service's own terms.

`clients.CatalogClient` implements it over gRPC (with a short-lived cache); tests may use fakes. Every
method raises `shopmesh_chassis.errors.Unavailable` when the catalog cannot answer now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shopmesh_recommendations.domain.models import CatalogProduct

# How many products one catalog call looks up: BatchGetProducts' limit (catalog.proto). `Catalog.products`
# splits a longer list into calls of this many; a caller that wants one round trip asks for this many at most.
BATCH_LIMIT = 100


class Catalog(Protocol):
    async def product(self, product_id: str) -> CatalogProduct | None:
        """The product, or None when the catalog does not know it."""
        ...

    async def products_in_category(self, category: str) -> Sequence[CatalogProduct]:
        """Products of the category, in the catalog's order; empty for an unknown category."""
        ...

    async def products(self, product_ids: Sequence[str]) -> dict[str, CatalogProduct]:
        """The products among `product_ids` that exist; unknown ids are left out."""
        ...
