"""Request validation as the contract states it: one FieldViolation per bad field, all reported at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from shopmesh_chassis.contract_limits import id_violations
from shopmesh_chassis.errors import FieldViolation, InvalidArgument
from shopmesh_inventory.domain.models import ReservationItem

MAX_STOCK_QUERY_IDS = 100
MAX_RESERVATION_ITEMS = 50
MIN_QUANTITY = 1
MAX_QUANTITY = 1000
# on_hand is an int32 in the contract: SetStock can set no more, and no level can be reported above it.
MAX_ON_HAND = 2**31 - 1
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(hours=1)
DEFAULT_TTL = timedelta(minutes=15)

VALIDATION_FAILED = "VALIDATION_FAILED"


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    order_id: str
    items: tuple[ReservationItem, ...]  # sorted by product_id
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class SetStockCommand:
    product_id: str
    on_hand: int


def _check(what: str, violations: list[FieldViolation]) -> None:
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(f"invalid {what}: {summary}", violations, reason=VALIDATION_FAILED)


# Every id is held to the chassis' id_violations, the rule orders and payments hold ids to: no order, reservation
# or product has an id of " " or "\u202e", and one taken would be stored (a reservation for order "\n\r", stock for
# product " ").


def _product_id_violations(path: str, value: str) -> list[FieldViolation]:
    """A reserved product id is named in INSUFFICIENT_STOCK's comma-separated list (errors.listed_ids): one
    holding a comma would read as several, and the caller take another line for short. Reserve and SetStock
    hold a product id to it: stock set for an id Reserve refuses could never be reserved. Reads (GetStock)
    take one with a comma (but printable, as every id): they store nothing, and answer it as unknown."""
    return id_violations(path, value, listable=True)


def stock_query(product_ids: Sequence[str]) -> tuple[str, ...]:
    """GetStock: 1-100 non-empty ids; duplicates are allowed (one answer per id, in request order)."""
    violations: list[FieldViolation] = []
    if not product_ids:
        violations.append(FieldViolation("product_ids", "at least one product id is required", "REQUIRED"))
    elif len(product_ids) > MAX_STOCK_QUERY_IDS:
        violations.append(
            FieldViolation("product_ids", f"at most {MAX_STOCK_QUERY_IDS} product ids per request", "TOO_MANY")
        )
    for i, product_id in enumerate(product_ids):
        violations += id_violations(f"product_ids[{i}]", product_id)
    _check("GetStock request", violations)
    return tuple(product_ids)


# google.protobuf.Duration's range of nanos.
MAX_DURATION_NANOS = 999_999_999


def is_duration(seconds: int, nanos: int) -> bool:
    """Whether (seconds, nanos) is a google.protobuf.Duration: nanos within +-999,999,999, and not of the
    opposite sign to seconds. Anything else has no single meaning (gRPC carries it, JSON refuses it), so it
    is not read as seconds + nanos."""
    return abs(nanos) <= MAX_DURATION_NANOS and not (seconds > 0 > nanos or seconds < 0 < nanos)


def reserve_command(
    order_id: str, items: Sequence[ReservationItem], ttl_seconds: float | None, *, ttl_well_formed: bool = True
) -> ReserveCommand:
    """Reserve: `ttl_seconds` None means the default TTL; `ttl_well_formed` False when the request's ttl is no
    valid Duration (`is_duration`). Items come back sorted by product_id."""
    violations = id_violations("order_id", order_id)
    if not items:
        violations.append(FieldViolation("items", "at least one item is required", "REQUIRED"))
    elif len(items) > MAX_RESERVATION_ITEMS:
        violations.append(FieldViolation("items", f"at most {MAX_RESERVATION_ITEMS} items", "TOO_MANY"))
    seen: set[str] = set()
    for i, item in enumerate(items):
        if bad_id := _product_id_violations(f"items[{i}].product_id", item.product_id):
            violations += bad_id
        elif item.product_id in seen:
            violations.append(
                FieldViolation(f"items[{i}].product_id", f"duplicate product id {item.product_id!r}", "DUPLICATE")
            )
        seen.add(item.product_id)
        if not MIN_QUANTITY <= item.quantity <= MAX_QUANTITY:
            violations.append(
                FieldViolation(
                    f"items[{i}].quantity", f"must be between {MIN_QUANTITY} and {MAX_QUANTITY}", "OUT_OF_RANGE"
                )
            )
    if not ttl_well_formed:
        violations.append(
            FieldViolation(
                "ttl", "not a valid Duration: nanos within +-999,999,999, of the seconds' sign", "INVALID_FORMAT"
            )
        )
    elif ttl_seconds is not None and not MIN_TTL.total_seconds() <= ttl_seconds <= MAX_TTL.total_seconds():
        violations.append(FieldViolation("ttl", "must be between 1 second and 1 hour", "OUT_OF_RANGE"))
    _check("Reserve request", violations)
    ttl = DEFAULT_TTL if ttl_seconds is None else timedelta(seconds=ttl_seconds)
    return ReserveCommand(order_id=order_id, items=tuple(sorted(items)), ttl=ttl)


def reservation_id(value: str) -> str:
    _check("request", id_violations("reservation_id", value))
    return value


def set_stock_command(product_id: str, on_hand: int) -> SetStockCommand:
    violations = _product_id_violations("product_id", product_id)
    if on_hand < 0:
        violations.append(FieldViolation("on_hand", "must not be negative", "OUT_OF_RANGE"))
    _check("SetStock request", violations)
    return SetStockCommand(product_id=product_id, on_hand=on_hand)
