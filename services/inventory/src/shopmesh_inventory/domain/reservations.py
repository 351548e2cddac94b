"""The reservation state machine and the errors the contract names for it.

    PENDING ──commit──▶ COMMITTED ──restock──▶ RELEASED
       │ ╲──release──────────────────────────▶ RELEASED
       ╰────expire (at expires_at)───────────▶ EXPIRED

A reservation in a state a newer release stored (UNSPECIFIED) takes no transition: Commit and Release
refuse it, and it never expires.

Each transition moves stock by a fixed amount per reserved unit (`StockEffect`), which the store
applies to every item of the reservation in the same transaction as the state change.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from shopmesh_chassis.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    listed_ids,
)
from shopmesh_inventory.domain.models import PurgedReservation, Reservation, ReservationState
from shopmesh_inventory.domain.validation import ReserveCommand

PENDING = ReservationState.PENDING
COMMITTED = ReservationState.COMMITTED
RELEASED = ReservationState.RELEASED
EXPIRED = ReservationState.EXPIRED
# The states no transition leaves but a restock (COMMITTED -> RELEASED): what the retention purges. Not
# PENDING, nor a state a newer release stored, which may still hold stock.
FINISHED = (COMMITTED, RELEASED, EXPIRED)


@dataclass(frozen=True, slots=True)
class StockEffect:
    """How `on_hand` and `reserved` of a product change per unit of a reservation item."""

    on_hand: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    source: ReservationState
    target: ReservationState
    effect: StockEffect


COMMIT = Transition("commit", PENDING, COMMITTED, StockEffect(on_hand=-1, reserved=-1))
RELEASE = Transition("release", PENDING, RELEASED, StockEffect(on_hand=0, reserved=-1))
RESTOCK = Transition("restock", COMMITTED, RELEASED, StockEffect(on_hand=+1, reserved=0))
EXPIRE = Transition("expire", PENDING, EXPIRED, StockEffect(on_hand=0, reserved=-1))
# Holding units for a new reservation, as one conditional update per item (never below available).
HOLD = StockEffect(on_hand=0, reserved=+1)


@dataclass(frozen=True, slots=True)
class Plan:
    """What an operation does: apply `transition` if any, then fail with `failure` if any.

    Both can be set: committing an overdue reservation records its expiry and then fails.
    """

    transition: Transition | None = None
    failure: DomainError | None = None


def mint_reservation_id() -> str:
    return f"res_{secrets.token_hex(16)}"


def new_reservation(command: ReserveCommand, reservation_id: str, now: datetime) -> Reservation:
    return Reservation(
        id=reservation_id,
        order_id=command.order_id,
        items=command.items,
        state=PENDING,
        created_at=now,
        expires_at=now + command.ttl,
        updated_at=now,
    )


def applied(reservation: Reservation, transition: Transition, now: datetime) -> Reservation:
    """The reservation after `transition`; an expiry is dated at expires_at, when it took effect."""
    if reservation.state is not transition.source:
        raise ValueError(f"{transition.name} does not apply to a {reservation.state.value} reservation")
    changed_at = reservation.expires_at if transition is EXPIRE else now
    return replace(reservation, state=transition.target, updated_at=changed_at)


def plan_commit(reservation: Reservation, now: datetime) -> Plan:
    if reservation.is_overdue(now):
        return Plan(EXPIRE, reservation_expired(reservation.id))
    match reservation.state:
        case ReservationState.PENDING:
            return Plan(COMMIT)
        case ReservationState.COMMITTED:
            return Plan()
        case ReservationState.EXPIRED:
            return Plan(failure=reservation_expired(reservation.id))
        case ReservationState.RELEASED:
            return Plan(failure=reservation_released(reservation.id))
        case ReservationState.UNSPECIFIED:
            return Plan(failure=reservation_state_unknown(reservation.id))


def plan_release(reservation: Reservation, now: datetime) -> Plan:
    """A release fails only on a state a newer release stored; an overdue reservation is recorded as EXPIRED."""
    if reservation.is_overdue(now):
        return Plan(EXPIRE)
    match reservation.state:
        case ReservationState.PENDING:
            return Plan(RELEASE)
        case ReservationState.COMMITTED:
            return Plan(RESTOCK)
        case ReservationState.RELEASED | ReservationState.EXPIRED:
            return Plan()
        case ReservationState.UNSPECIFIED:
            # Restocking or releasing units the newer release may already have moved would count them twice.
            return Plan(failure=reservation_state_unknown(reservation.id))


def plan_expiry(reservation: Reservation, now: datetime) -> Plan:
    return Plan(EXPIRE) if reservation.is_overdue(now) else Plan()


def replayed(existing: Reservation, command: ReserveCommand, now: datetime) -> Reservation:
    """A repeated Reserve for an order: the existing reservation if the items match, whatever its state."""
    if not existing.holds_same_items(command.items):
        raise idempotency_key_reused(existing)
    return existing.as_seen_at(now)


def reservation_not_found(reservation_id: str, purged: PurgedReservation | None = None) -> NotFound:
    """Still NOT_FOUND when the reservation was purged (what every caller already handles as "holds no
    stock"), saying so: `purged_state` tells a late Commit of a COMMITTED one that it was committed."""
    if purged is None:
        return NotFound(
            f"reservation {reservation_id!r} not found",
            reason="RESERVATION_NOT_FOUND",
            metadata={"reservation_id": reservation_id},
        )
    return NotFound(
        f"reservation {reservation_id!r} ended {purged.state.value} at {purged.ended_at.isoformat()} and was "
        "deleted past its retention (RESERVATION_RETENTION_SECONDS)",
        reason="RESERVATION_NOT_FOUND",
        metadata=_purged_metadata(purged),
    )


def reservation_purged(purged: PurgedReservation) -> FailedPrecondition:
    """A Reserve for an order whose reservation was purged: never a second reservation for the order."""
    return FailedPrecondition(
        f"order {purged.order_id!r} had reservation {purged.reservation_id!r}, which ended "
        f"{purged.state.value} at {purged.ended_at.isoformat()} and was deleted past its retention "
        "(RESERVATION_RETENTION_SECONDS); it holds no stock, and none is reserved for the order again",
        reason="RESERVATION_PURGED",
        metadata={"order_id": purged.order_id, **_purged_metadata(purged)},
    )


def _purged_metadata(purged: PurgedReservation) -> dict[str, str]:
    return {
        "reservation_id": purged.reservation_id,
        "purged_state": f"RESERVATION_STATE_{purged.state.value}",
        "ended_at": purged.ended_at.isoformat(),
    }


def reservation_expired(reservation_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"reservation {reservation_id!r} has expired",
        reason="RESERVATION_EXPIRED",
        metadata={"reservation_id": reservation_id},
    )


def reservation_released(reservation_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"reservation {reservation_id!r} has been released",
        reason="RESERVATION_RELEASED",
        metadata={"reservation_id": reservation_id},
    )


def reservation_state_unknown(reservation_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"reservation {reservation_id!r} is in a state this release does not know (a newer release stored it)",
        reason="RESERVATION_STATE_UNKNOWN",
        metadata={"reservation_id": reservation_id},
    )


def insufficient_stock(product_ids: Iterable[str]) -> FailedPrecondition:
    """Names the products short of stock as far as their list fits in the trailers, and counts them all."""
    short = sorted(set(product_ids))
    return FailedPrecondition(
        f"insufficient stock for {', '.join(short)}",
        reason="INSUFFICIENT_STOCK",
        metadata=listed_ids(short, key="product_ids", count_key="short_count"),
    )


def idempotency_key_reused(existing: Reservation) -> InvalidArgument:
    return InvalidArgument(
        f"order {existing.order_id!r} already has reservation {existing.id!r} with different items",
        [FieldViolation("items", "differ from the items already reserved for this order", "IDEMPOTENCY_KEY_REUSED")],
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"order_id": existing.order_id, "reservation_id": existing.id},
    )


def stock_below_reserved(product_id: str, reserved: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"on_hand of {product_id!r} cannot be set below the {reserved} units currently reserved",
        reason="STOCK_BELOW_RESERVED",
        metadata={"product_id": product_id, "reserved": str(reserved)},
    )
