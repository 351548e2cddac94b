"""Async repositories over one session (one transaction): rows in, domain objects out.

Every write that a concurrent request could race is one conditional statement whose rowcount says
whether it applied, so the same code is safe on SQLite (writers serialized by BEGIN IMMEDIATE) and
on PostgreSQL (the UPDATE takes the row lock and re-checks its WHERE clause on the newest version).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, exists, func, insert, literal_column, select, update

from shopmesh_chassis.db import DbConnection, as_utc, insert_skipping_existing, stored_enum
from shopmesh_chassis.db_errors import duplicates_raised
from shopmesh_inventory.domain.models import (
    PurgedReservation,
    Reservation,
    ReservationItem,
    ReservationState,
    StockLevel,
)
from shopmesh_inventory.domain.reservations import FINISHED, StockEffect, Transition
from shopmesh_inventory.domain.validation import MAX_ON_HAND
from shopmesh_inventory.store.tables import purged_reservations, reservation_items, reservations, stock

# The state as a literal, not a bound parameter: the planner then knows that the partial index of pending
# reservations (ix_reservations_pending_expires_at) holds every row the query wants. With a parameter it
# cannot (SQLite never; PostgreSQL not in the generic plan of asyncpg's prepared statement).
_PENDING = reservations.c.state == literal_column(f"'{ReservationState.PENDING.value}'")

# The statements of Reserve / Commit / Release are built once, with bound parameters: building one costs
# SQLAlchemy more than running it, and a reused statement also reuses its compiled form.
_HOLD = (
    update(stock)
    .where(
        stock.c.product_id == bindparam("b_product_id"), stock.c.on_hand - stock.c.reserved >= bindparam("b_quantity")
    )
    .values(reserved=stock.c.reserved + bindparam("b_quantity"))
)
# Restocking a committed reservation can take on_hand past the contract's int32 (SetStock may have set the
# maximum meanwhile): it stops at the maximum rather than fail the release a cancelled order's compensation
# must complete. `b_room` (bigint: MAX_ON_HAND less the change, beyond int32 when the change is negative) is
# compared first, so on_hand + change is only computed where it fits.
_MOVE = (
    update(stock)
    .where(stock.c.product_id == bindparam("b_product_id"))
    .values(
        on_hand=case(
            (stock.c.on_hand > bindparam("b_room", type_=BigInteger), MAX_ON_HAND),
            else_=stock.c.on_hand + bindparam("b_on_hand"),
        ),
        reserved=stock.c.reserved + bindparam("b_reserved"),
    )
)
_RECORD = (
    update(reservations)
    .where(reservations.c.id == bindparam("b_id"), reservations.c.state == bindparam("b_source"))
    .values(state=bindparam("b_state"), updated_at=bindparam("b_updated_at"))
)
_INSERT_RESERVATION = insert(reservations)
_INSERT_ITEMS = insert(reservation_items)
_BY_ID = select(reservations).where(reservations.c.id == bindparam("b_key"))
_BY_ORDER = select(reservations).where(reservations.c.order_id == bindparam("b_key"))
# Unordered: the items are sorted in Python, as the domain compares them (`holds_same_items`). ORDER BY
# would sort by the database's collation, and PostgreSQL's default one for a language (en_US, as the
# official image initialises) ignores '_': prod_tea_set after prod_teapot, and a repeated Reserve taken for
# one with other items.
_ITEMS = select(reservation_items.c.product_id, reservation_items.c.quantity).where(
    reservation_items.c.reservation_id == bindparam("b_id")
)
_PURGED_BY_ORDER = select(purged_reservations).where(purged_reservations.c.order_id == bindparam("b_key"))
_PURGED_BY_ID = select(purged_reservations).where(purged_reservations.c.reservation_id == bindparam("b_key"))
# The finished reservations that ended before the cutoff, through ix_reservations_updated_at. Locked (FOR
# UPDATE; SQLite's one writer needs no lock): a Release restocking a COMMITTED one meanwhile either goes
# first, and the row no longer matches once the lock is had, or waits and then finds it gone. Rows another
# replica's purge holds are skipped, not waited for: it deletes them.
_FINISHED_BEFORE = (
    select(reservations.c.id, reservations.c.order_id, reservations.c.state, reservations.c.updated_at)
    .where(
        reservations.c.state.in_([literal_column(f"'{state.value}'") for state in FINISHED]),
        reservations.c.updated_at < bindparam("b_before"),
    )
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)


async def _rowcount(session: DbConnection, statement: Any, parameters: dict[str, Any] | None = None) -> int:
    return (await session.execute(statement, parameters)).rowcount


class StockRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def levels(self, product_ids: Collection[str]) -> dict[str, StockLevel]:
        """Stored levels of the products that have a stock record (`reserved` includes overdue units)."""
        rows = await self._session.execute(
            select(stock.c.product_id, stock.c.on_hand, stock.c.reserved).where(stock.c.product_id.in_(product_ids))
        )
        return {row.product_id: StockLevel(row.product_id, row.on_hand, row.reserved) for row in rows}

    async def hold(self, product_id: str, quantity: int) -> bool:
        """Reserve `quantity` units if that many are available; False (and no change) otherwise."""
        return await _rowcount(self._session, _HOLD, {"b_product_id": product_id, "b_quantity": quantity}) == 1

    async def move(self, items: Iterable[ReservationItem], effect: StockEffect) -> None:
        """Apply a transition's effect to each item's stock, in product order (the lock order)."""
        for item in sorted(items):
            parameters = {
                "b_product_id": item.product_id,
                "b_on_hand": effect.on_hand * item.quantity,
                "b_room": MAX_ON_HAND - effect.on_hand * item.quantity,
                "b_reserved": effect.reserved * item.quantity,
            }
            if await _rowcount(self._session, _MOVE, parameters) != 1:
                # A reservation's units were held on this row, and stock rows are never deleted.
                raise RuntimeError(f"stock record of {item.product_id!r} is missing")

    async def set_on_hand(self, product_id: str, on_hand: int) -> bool:
        """Set on_hand unless fewer units than are reserved; False when refused or missing."""
        statement = (
            update(stock).where(stock.c.product_id == product_id, stock.c.reserved <= on_hand).values(on_hand=on_hand)
        )
        return await _rowcount(self._session, statement) == 1

    async def add_missing(self, on_hand: Mapping[str, int]) -> int:
        """Create stock records for the products that have none; existing ones are never touched."""
        existing = set((await self.levels(on_hand.keys())).keys())
        missing = [{"product_id": p, "on_hand": n, "reserved": 0} for p, n in on_hand.items() if p not in existing]
        if missing:
            # Another replica (or request) may create the same record between our read and our insert.
            await self._session.execute(insert_skipping_existing(self._session.dialect.name, stock), missing)
        return len(missing)


class ReservationRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def get(self, reservation_id: str) -> Reservation | None:
        return await self._one(_BY_ID, reservation_id)

    async def get_by_order(self, order_id: str) -> Reservation | None:
        return await self._one(_BY_ORDER, order_id)

    async def add(self, reservation: Reservation) -> None:
        """Insert a new reservation; a second one for the same order raises Duplicate."""
        with duplicates_raised():
            await self._session.execute(
                _INSERT_RESERVATION,
                {
                    "id": reservation.id,
                    "order_id": reservation.order_id,
                    "state": reservation.state.value,
                    "expires_at": reservation.expires_at,
                    "created_at": reservation.created_at,
                    "updated_at": reservation.updated_at,
                },
            )
            await self._session.execute(
                _INSERT_ITEMS,
                [
                    {"reservation_id": reservation.id, "product_id": i.product_id, "quantity": i.quantity}
                    for i in reservation.items
                ],
            )

    async def record(self, transition: Transition, changed: Reservation) -> bool:
        """Store `changed` if the reservation is still in the transition's source state.

        False means a concurrent request moved it first; nothing was written.
        """
        parameters = {
            "b_id": changed.id,
            "b_source": transition.source.value,
            "b_state": changed.state.value,
            "b_updated_at": changed.updated_at,
        }
        return await _rowcount(self._session, _RECORD, parameters) == 1

    async def overdue_ids(self, now: datetime, limit: int, product_ids: Collection[str] | None = None) -> list[str]:
        """Ids of PENDING reservations past expires_at, oldest first; only those holding `product_ids` if given."""
        statement = select(reservations.c.id).where(_PENDING, reservations.c.expires_at <= now)
        if product_ids is not None:
            # Asked of each overdue reservation (its items' primary key), not as `id IN (the product's
            # reservations)`: SQLite builds that list first, every reservation of a popular product ever made.
            holding = exists().where(
                reservation_items.c.reservation_id == reservations.c.id,
                reservation_items.c.product_id.in_(product_ids),
            )
            statement = statement.where(holding)
        rows = await self._session.execute(statement.order_by(reservations.c.expires_at).limit(limit))
        return [row.id for row in rows]

    async def overdue_units(self, product_ids: Collection[str], now: datetime) -> dict[str, int]:
        """Per product, the units still counted in `stock.reserved` by reservations past expires_at."""
        statement = (
            select(reservation_items.c.product_id, func.sum(reservation_items.c.quantity).label("units"))
            .join(reservations, reservations.c.id == reservation_items.c.reservation_id)
            .where(
                _PENDING,
                reservations.c.expires_at <= now,
                reservation_items.c.product_id.in_(product_ids),
            )
            .group_by(reservation_items.c.product_id)
        )
        return {row.product_id: int(row.units) for row in await self._session.execute(statement)}

    async def purged_for_order(self, order_id: str) -> PurgedReservation | None:
        return await self._purged(_PURGED_BY_ORDER, order_id)

    async def purged(self, reservation_id: str) -> PurgedReservation | None:
        return await self._purged(_PURGED_BY_ID, reservation_id)

    async def purge_finished(self, before: datetime, limit: int, now: datetime) -> int:
        """Delete up to `limit` reservations that ended (COMMITTED, RELEASED, EXPIRED) before `before`, with
        their items, keeping each one's order, id and final state in purged_reservations; how many."""
        rows = (await self._session.execute(_FINISHED_BEFORE, {"b_before": before, "b_limit": limit})).all()
        if not rows:
            return 0
        ids = [row.id for row in rows]
        await self._session.execute(
            insert_skipping_existing(self._session.dialect.name, purged_reservations),
            [
                {
                    "order_id": row.order_id,
                    "reservation_id": row.id,
                    "state": row.state,
                    "ended_at": row.updated_at,
                    "purged_at": now,
                }
                for row in rows
            ],
        )
        # The items first: they refer to their reservation.
        await self._session.execute(delete(reservation_items).where(reservation_items.c.reservation_id.in_(ids)))
        await self._session.execute(delete(reservations).where(reservations.c.id.in_(ids)))
        return len(rows)

    async def _purged(self, query: Any, key: str) -> PurgedReservation | None:
        row = (await self._session.execute(query, {"b_key": key})).one_or_none()
        if row is None:
            return None
        return PurgedReservation(
            reservation_id=row.reservation_id,
            order_id=row.order_id,
            state=stored_enum(ReservationState, row.state),
            ended_at=as_utc(row.ended_at),
        )

    async def _one(self, query: Any, key: str) -> Reservation | None:
        row = (await self._session.execute(query, {"b_key": key})).one_or_none()
        if row is None:
            return None
        items = (await self._session.execute(_ITEMS, {"b_id": row.id})).all()
        if not items:
            # Every reservation has items: these were purged with it between the two reads. Only a writer
            # sees that on PostgreSQL: its READ COMMITTED gives each statement its own snapshot, while
            # Database.read() is one REPEATABLE READ snapshot for both.
            return None
        return Reservation(
            id=row.id,
            order_id=row.order_id,
            items=tuple(sorted(ReservationItem(i.product_id, i.quantity) for i in items)),
            state=stored_enum(ReservationState, row.state),
            created_at=as_utc(row.created_at),
            expires_at=as_utc(row.expires_at),
            updated_at=as_utc(row.updated_at),
        )
