"""Looking products up by id: the NOT_FOUND errors and the all-or-nothing batch (AIP-231)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shopmesh_catalog.domain.models import Product
from shopmesh_chassis.errors import NotFound

PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"


def product_not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id!r} not found", reason=PRODUCT_NOT_FOUND, metadata={"product_id": product_id})


def batch_in_request_order(requested_ids: Sequence[str], found: Mapping[str, Product]) -> tuple[Product, ...]:
    """One product per requested id, duplicates included, in request order; NOT_FOUND naming the missing
    ids (once each, in request order) when any is missing, so a caller learns them in one call: all that
    fit in ErrorInfo's metadata (MAX_LISTED_CHARS), with their number beside them."""
    missing = [product_id for product_id in dict.fromkeys(requested_ids) if product_id not in found]
    if missing:
        listed = _listed(missing)
        named = ", ".join(missing[:_NAMED_IN_MESSAGE]) + (", ..." if len(missing) > _NAMED_IN_MESSAGE else "")
        raise NotFound(
            f"{len(missing)} of the requested products not found: {named}",
            reason=PRODUCT_NOT_FOUND,
            metadata={"product_ids": ",".join(listed), "missing_count": str(len(missing))},
        )
    return tuple(found[product_id] for product_id in requested_ids)


# The error travels in the call's trailers, which a gRPC client takes only up to 8 KiB: 100 missing ids
# of 64 characters, listed in full (twice, with the message), made it refuse the answer as RESOURCE_EXHAUSTED.
MAX_LISTED_CHARS = 1000
_NAMED_IN_MESSAGE = 5


def _listed(missing: Sequence[str]) -> list[str]:
    """The first missing ids whose comma-separated list fits in MAX_LISTED_CHARS."""
    listed: list[str] = []
    length = -1
    for product_id in missing:
        length += len(product_id) + 1
        if length > MAX_LISTED_CHARS:
            break
        listed.append(product_id)
    return listed
