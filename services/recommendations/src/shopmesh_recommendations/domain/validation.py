"""Validation of ListRecommendations (exactly one subject, a non-empty id, a sane max_results) and of the
order events counted.

A bad request is INVALID_ARGUMENT with one FieldViolation per bad field and ErrorInfo reason VALIDATION_FAILED.
A bad event is a list of problems, which the event handler turns into the consumer's InvalidEvent.
"""

from __future__ import annotations

from dataclasses import dataclass

from shopmesh_chassis.contract_limits import (
    event_id_problem,
    id_violations,
)
from shopmesh_chassis.errors import FieldViolation, InvalidArgument
from shopmesh_recommendations.domain.models import CancelledOrder, ConfirmedOrder

VALIDATION_FAILED = "VALIDATION_FAILED"

DEFAULT_MAX_RESULTS = 5
MAX_RESULTS = 20


@dataclass(frozen=True, slots=True)
class ProductSubject:
    product_id: str


@dataclass(frozen=True, slots=True)
class UserSubject:
    user_id: str


Subject = ProductSubject | UserSubject


@dataclass(frozen=True, slots=True)
class RecommendationQuery:
    subject: Subject
    limit: int


def validate_request(product_id: str | None, user_id: str | None, max_results: int) -> RecommendationQuery:
    """`product_id` / `user_id` are None when that member of the `subject` oneof is not set."""
    violations: list[FieldViolation] = []
    subject: Subject | None = None
    if product_id is not None:
        # Catalog refuses an id no product can have (one with a comma read as several in its lists): refused
        # here too, as the caller's mistake, not looked up and failed as catalog's INTERNAL.
        violations.extend(id_violations("product_id", product_id, listable=True))
        subject = ProductSubject(product_id)
    elif user_id is not None:
        violations.extend(id_violations("user_id", user_id))
        subject = UserSubject(user_id)
    else:
        violations.append(FieldViolation("subject", "set product_id or user_id", "REQUIRED"))
    if max_results < 0:
        violations.append(FieldViolation("max_results", "must not be negative", "OUT_OF_RANGE"))
    if violations or subject is None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(f"invalid request: {summary}", violations, reason=VALIDATION_FAILED)
    limit = DEFAULT_MAX_RESULTS if max_results == 0 else min(max_results, MAX_RESULTS)
    return RecommendationQuery(subject=subject, limit=limit)


def is_product_id(value: str) -> bool:
    """Whether some catalog product could have this id: catalog refuses a whole BatchGetProducts naming one
    that could not (empty, over-long, or not listable) as INVALID_ARGUMENT: the rule an event's product id is
    checked by."""
    return event_id_problem("product_id", value, listable=True) is None


def order_problems(order: ConfirmedOrder | CancelledOrder, *, products_checked: bool = True) -> list[str]:
    """What makes an order event unfit to count, worded as every consumer words it; empty if nothing does.

    orders issues none of these, so an event with one is forged or broken, and no retry mends it. Counted, a
    product id no product can have would be ranked for ever (counts never decay) and sent to catalog, which
    refuses the whole lookup; and an order with no id or no products teaches nothing."""
    problems = [
        problem
        for name, value in (("order_id", order.order_id), ("user_id", order.user_id))
        if (problem := event_id_problem(name, value)) is not None
    ]
    if not order.product_ids:
        problems.append("items is empty")
    if products_checked:
        problems.extend(
            problem
            for index, product_id in enumerate(order.product_ids)
            if (problem := event_id_problem(f"items[{index}].product_id", product_id, listable=True)) is not None
        )
    return problems
