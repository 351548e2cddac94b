"""The product page's rules: what a valid request is, and which recommendations may be shown."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from shopmesh_chassis.contract_limits import id_violations
from shopmesh_chassis.errors import FieldViolation, InvalidArgument

DEFAULT_RECOMMENDATIONS = 4
MAX_RECOMMENDATIONS = 20

T = TypeVar("T")


def recommendation_limit(product_id: str, max_recommendations: int) -> int:
    """The number of recommendations to show; INVALID_ARGUMENT for an unusable request."""
    # Catalog's rule for a product id: no product has one that breaks it. Refused here, the page's own field
    # named, rather than by whichever of catalog and inventory (asked at once) answered first.
    violations = id_violations("product_id", product_id, listable=True)
    if max_recommendations < 0:
        # OUT_OF_RANGE, as every other count's bound in the contracts (page_size, quantity, on_hand).
        violations.append(FieldViolation("max_recommendations", "must not be negative", "OUT_OF_RANGE"))
    if violations:
        raise InvalidArgument("invalid product page request", violations, reason="VALIDATION_FAILED")
    if max_recommendations == 0:
        return DEFAULT_RECOMMENDATIONS
    return min(max_recommendations, MAX_RECOMMENDATIONS)


def shown(candidates: Iterable[T], product_id: str, limit: int, id_of: Callable[[T], str]) -> list[T]:
    """At most `limit` candidates, in order, never the product itself and no product twice.

    Applied to the recommendations service's answer as well as to the fallback list: the page's promise
    holds whichever source filled it."""
    seen = {product_id}
    out: list[T] = []
    for candidate in candidates:
        if len(out) >= limit:
            break
        candidate_id = id_of(candidate)
        if candidate_id in seen:
            continue
        seen.add(candidate_id)
        out.append(candidate)
    return out
