"""Async repositories over one session (one transaction): rows in, domain objects out.

Every write that a concurrent request could race is one conditional statement whose rowcount says
whether it applied, so the same code is safe on SQLite (writers serialized by BEGIN IMMEDIATE) and
on PostgreSQL (the UPDATE takes the row lock and re-checks its WHERE clause on the newest version).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Insert, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from shopmesh_chassis.db import as_utc
from shopmesh_inventory.domain.models import Reservation, ReservationItem, ReservationState, StockLevel
from shopmesh_inventory.domain.reservations import StockEffect, Transition
from shopmesh_inventory.store.tables import reservation_items, reservations, stock


async def _rowcount(session: AsyncSession, statement: Any) -> int:
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount


class StockRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def levels(self, product_ids: Collection[str]) -> dict[str, StockLevel]:
        """Stored levels of the products that have a stock record (`reserved` includes overdue units)."""
        rows = await self._session.execute(
            select(stock.c.product_id, stock.c.on_hand, stock.c.reserved).where(stock.c.product_id.in_(product_ids))
        )
        return {row.product_id: StockLevel(row.product_id, row.on_hand, row.reserved) for row in rows}

    async def hold(self, product_id: str, quantity: int) -> bool:
        """Reserve `quantity` units if that many are available; False (and no change) otherwise."""
        statement = (
            update(stock)
            .where(stock.c.product_id == product_id, stock.c.on_hand - stock.c.reserved >= quantity)
            .values(reserved=stock.c.reserved + quantity)
        )
        return await _rowcount(self._session, statement) == 1

    async def move(self, items: Iterable[ReservationItem], effect: StockEffect) -> None:
        """Apply a transition's effect to each item's stock, in product order (the lock order)."""
        for item in sorted(items):
            statement = (
                update(stock)
                .where(stock.c.product_id == item.product_id)
                .values(
                    on_hand=stock.c.on_hand + effect.on_hand * item.quantity,
                    reserved=stock.c.reserved + effect.reserved * item.quantity,
                )
            )
            if await _rowcount(self._session, statement) != 1:
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
            await self._session.execute(self._insert_ignoring_existing(), missing)
        return len(missing)

    def _insert_ignoring_existing(self) -> Insert:
        # Another replica (or request) may create the same record between our read and our insert.
        if self._session.get_bind().dialect.name == "postgresql":
            return postgresql.insert(stock).on_conflict_do_nothing(index_elements=[stock.c.product_id])
        return sqlite.insert(stock).on_conflict_do_nothing(index_elements=[stock.c.product_id])


class ReservationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, reservation_id: str) -> Reservation | None:
        return await self._one(reservations.c.id == reservation_id)

    async def get_by_order(self, order_id: str) -> Reservation | None:
        return await self._one(reservations.c.order_id == order_id)

    async def add(self, reservation: Reservation) -> None:
        """Insert a new reservation; a second one for the same order raises IntegrityError."""
        await self._session.execute(
            insert(reservations).values(
                id=reservation.id,
                order_id=reservation.order_id,
                state=reservation.state.value,
                expires_at=reservation.expires_at,
                created_at=reservation.created_at,
                updated_at=reservation.updated_at,
            )
        )
        await self._session.execute(
            insert(reservation_items),
            [
                {"reservation_id": reservation.id, "product_id": i.product_id, "quantity": i.quantity}
                for i in reservation.items
            ],
        )

    async def record(self, transition: Transition, changed: Reservation) -> bool:
        """Store `changed` if the reservation is still in the transition's source state.

        False means a concurrent request moved it first; nothing was written.
        """
        statement = (
            update(reservations)
            .where(reservations.c.id == changed.id, reservations.c.state == transition.source.value)
            .values(state=changed.state.value, updated_at=changed.updated_at)
        )
        return await _rowcount(self._session, statement) == 1

    async def overdue_ids(self, now: datetime, limit: int, product_ids: Collection[str] | None = None) -> list[str]:
        """Ids of PENDING reservations past expires_at, oldest first; only those holding `product_ids` if given."""
        statement = select(reservations.c.id).where(
            reservations.c.state == ReservationState.PENDING.value, reservations.c.expires_at <= now
        )
        if product_ids is not None:
            holding = select(reservation_items.c.reservation_id).where(reservation_items.c.product_id.in_(product_ids))
            statement = statement.where(reservations.c.id.in_(holding))
        rows = await self._session.execute(statement.order_by(reservations.c.expires_at).limit(limit))
        return [row.id for row in rows]

    async def overdue_units(self, product_ids: Collection[str], now: datetime) -> dict[str, int]:
        """Per product, the units still counted in `stock.reserved` by reservations past expires_at."""
        statement = (
            select(reservation_items.c.product_id, func.sum(reservation_items.c.quantity).label("units"))
            .join(reservations, reservations.c.id == reservation_items.c.reservation_id)
            .where(
                reservations.c.state == ReservationState.PENDING.value,
                reservations.c.expires_at <= now,
                reservation_items.c.product_id.in_(product_ids),
            )
            .group_by(reservation_items.c.product_id)
        )
        return {row.product_id: int(row.units) for row in await self._session.execute(statement)}

    async def _one(self, condition: Any) -> Reservation | None:
        row = (await self._session.execute(select(reservations).where(condition))).one_or_none()
        if row is None:
            return None
        items = await self._session.execute(
            select(reservation_items.c.product_id, reservation_items.c.quantity)
            .where(reservation_items.c.reservation_id == row.id)
            .order_by(reservation_items.c.product_id)
        )
        return Reservation(
            id=row.id,
            order_id=row.order_id,
            items=tuple(ReservationItem(i.product_id, i.quantity) for i in items),
            state=ReservationState(row.state),
            created_at=as_utc(row.created_at),
            expires_at=as_utc(row.expires_at),
            updated_at=as_utc(row.updated_at),
        )
