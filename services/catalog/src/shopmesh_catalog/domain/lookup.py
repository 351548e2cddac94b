"""Looking products up by id: the NOT_FOUND errors and the all-or-nothing batch (AIP-231)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shopmesh_catalog.domain.models import Product
from shopmesh_chassis.errors import NotFound

PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"


def product_not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id!r} not found", reason=PRODUCT_NOT_FOUND, metadata={"product_id": product_id})


def batch_in_request_order(requested_ids: Sequence[str], found: Mapping[str, Product]) -> tuple[Product, ...]:
    """One product per requested id, duplicates included, in request order; NOT_FOUND naming every missing
    id (once each, in request order) when any is missing, so a caller learns all of them in one call."""
    missing = [product_id for product_id in dict.fromkeys(requested_ids) if product_id not in found]
    if missing:
        raise NotFound(
            f"{len(missing)} of the requested products not found: {', '.join(missing)}",
            reason=PRODUCT_NOT_FOUND,
            metadata={"product_ids": ",".join(missing)},
        )
    return tuple(found[product_id] for product_id in requested_ids)
