"""Looking products up by id: the NOT_FOUND errors and the all-or-nothing batch (AIP-231)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shopmesh_catalog.domain.models import Product
from shopmesh_chassis.errors import NotFound, listed_ids

PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"


def product_not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id!r} not found", reason=PRODUCT_NOT_FOUND, metadata={"product_id": product_id})


def batch_in_request_order(requested_ids: Sequence[str], found: Mapping[str, Product]) -> tuple[Product, ...]:
    """One product per requested id, duplicates included, in request order; NOT_FOUND naming the missing
    ids (once each, in request order) when any is missing, so a caller learns them in one call: all that
    fit in ErrorInfo's metadata (errors.listed_ids), with their number beside them."""
    missing = [product_id for product_id in dict.fromkeys(requested_ids) if product_id not in found]
    if missing:
        named = ", ".join(missing[:_NAMED_IN_MESSAGE]) + (", ..." if len(missing) > _NAMED_IN_MESSAGE else "")
        raise NotFound(
            f"{len(missing)} of the requested products not found: {named}",
            reason=PRODUCT_NOT_FOUND,
            metadata=listed_ids(missing, key="product_ids", count_key="missing_count"),
        )
    return tuple(found[product_id] for product_id in requested_ids)


# The message goes out beside the metadata, in the same trailers: it names a few, the metadata the rest.
_NAMED_IN_MESSAGE = 5
