"""The inventory use cases: one method per operation, each running the domain against the store in
transactions. This is where the never-oversell guarantee is assembled (see `reserve`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta

from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import Duplicate, database_errors_as_domain_errors
from shopmesh_chassis.errors import Aborted
from shopmesh_chassis.periodic import in_batches
from shopmesh_inventory.domain import reservations as rules
from shopmesh_inventory.domain import validation
from shopmesh_inventory.domain.models import Reservation, ReservationItem, StockLevel
from shopmesh_inventory.store.repositories import ReservationRepository, StockRepository

log = logging.getLogger("shopmesh.inventory")

Planner = Callable[[Reservation, datetime], rules.Plan]

# A state change that loses a race re-reads the reservation and plans again; losing this often means
# something is hammering one reservation, and the client should back off (ABORTED).
_STATE_CHANGE_ATTEMPTS = 3


class _ShortOfStock(Exception):
    """Raised inside a Reserve transaction to roll every hold back."""

    def __init__(self, product_ids: list[str]) -> None:
        super().__init__(", ".join(product_ids))
        self.product_ids = product_ids


class Inventory:
    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = utc_now,
        sweep_batch_size: int = 100,
        retention: timedelta | None = None,
        purge_batch_size: int = 500,
    ) -> None:
        """`retention`: how long a finished reservation is kept after it ended (None: for ever)."""
        self._db = database
        self._clock = clock
        self._sweep_batch_size = sweep_batch_size
        self._retention = retention
        self._purge_batch_size = purge_batch_size

    @database_errors_as_domain_errors
    async def get_stock(self, product_ids: Sequence[str]) -> list[StockLevel]:
        ids = validation.stock_query(product_ids)
        now = self._clock()
        async with self._db.read() as session:
            levels = await StockRepository(session).levels(set(ids))
            overdue = await ReservationRepository(session).overdue_units(set(ids), now)
        # Units of overdue reservations are available even before the sweep records the expiry.
        return [levels.get(p, StockLevel.empty(p)).releasing(overdue.get(p, 0)) for p in ids]

    @database_errors_as_domain_errors
    async def reserve(
        self,
        order_id: str,
        items: Sequence[ReservationItem],
        ttl_seconds: float | None,
        *,
        ttl_well_formed: bool = True,
    ) -> Reservation:
        """All items or none, never beyond available stock, at most one reservation per order.

        Each hold is one conditional UPDATE (`on_hand - reserved >= quantity`) in a single transaction
        for all items, in product order so concurrent reservations lock rows in the same order.
        """
        command = validation.reserve_command(order_id, items, ttl_seconds, ttl_well_formed=ttl_well_formed)
        try:
            return await self._reserve(command)
        except Duplicate:
            # PostgreSQL: a concurrent Reserve for the same order inserted its reservation first.
            async with self._db.read() as session:
                existing = await ReservationRepository(session).get_by_order(command.order_id)
            if existing is None:
                raise  # not a duplicate order but a broken invariant: an internal error
            return rules.replayed(existing, command, self._clock())

    async def _reserve(self, command: validation.ReserveCommand) -> Reservation:
        try:
            return await self._reserve_once(command)
        except _ShortOfStock:
            # The units may be held by reservations that expired but were not swept yet: free them first.
            # Tried again even when this look expired nothing: a sweep may have freed them since the hold.
            # Freed for every product of the request, not only the short ones: meanwhile another order may
            # take the free units of a product that had enough, and the retry would then be short of it
            # while its overdue units, really free, still counted as reserved.
            await self._expire_overdue([item.product_id for item in command.items])
        try:
            return await self._reserve_once(command)
        except _ShortOfStock as short:
            raise rules.insufficient_stock(short.product_ids) from None

    async def _reserve_once(self, command: validation.ReserveCommand) -> Reservation:
        now = self._clock()
        async with self._db.transaction() as session:
            reservations = ReservationRepository(session)
            existing = await reservations.get_by_order(command.order_id)
            if existing is not None:
                return rules.replayed(existing, command, now)
            # Asked only when the order has no reservation: one key lookup more for a new order's Reserve.
            purged = await reservations.purged_for_order(command.order_id)
            if purged is not None:
                raise rules.reservation_purged(purged)
            reservation = rules.new_reservation(command, rules.mint_reservation_id(), now)
            # The reservation row first: a concurrent duplicate waits on its order_id before holding stock.
            await reservations.add(reservation)
            stock = StockRepository(session)
            short: list[str] = []
            for item in reservation.items:
                # Every item is tried, so that the error names all the products short of stock.
                if not await stock.hold(item.product_id, item.quantity):
                    short.append(item.product_id)
            if short:
                raise _ShortOfStock(short)
            return reservation

    @database_errors_as_domain_errors
    async def commit(self, reservation_id: str) -> Reservation:
        return await self._advance(validation.reservation_id(reservation_id), rules.plan_commit)

    @database_errors_as_domain_errors
    async def release(self, reservation_id: str) -> Reservation:
        return await self._advance(validation.reservation_id(reservation_id), rules.plan_release)

    @database_errors_as_domain_errors
    async def get_reservation(self, reservation_id: str) -> Reservation:
        reservation_id = validation.reservation_id(reservation_id)
        async with self._db.read() as session:
            repository = ReservationRepository(session)
            reservation = await repository.get(reservation_id)
            if reservation is None:
                raise rules.reservation_not_found(reservation_id, await repository.purged(reservation_id))
        return reservation.as_seen_at(self._clock())

    @database_errors_as_domain_errors
    async def set_stock(self, product_id: str, on_hand: int) -> StockLevel:
        command = validation.set_stock_command(product_id, on_hand)
        level, reserved = await self._set_stock_once(command)
        if level is None:
            # As in Reserve: expired units may still count as reserved, or a sweep freed them just now.
            await self._expire_overdue([command.product_id])
            level, reserved = await self._set_stock_once(command)
        if level is None:
            raise rules.stock_below_reserved(command.product_id, reserved)
        return level

    async def _set_stock_once(self, command: validation.SetStockCommand) -> tuple[StockLevel | None, int]:
        """The new level, or None and the reserved units that prevent it."""
        now = self._clock()
        async with self._db.transaction() as session:
            stock = StockRepository(session)
            await stock.add_missing({command.product_id: 0})
            updated = await stock.set_on_hand(command.product_id, command.on_hand)
            level = (await stock.levels([command.product_id]))[command.product_id]
            if not updated:
                return None, level.reserved
            overdue = await ReservationRepository(session).overdue_units([command.product_id], now)
        return level.releasing(overdue.get(command.product_id, 0)), level.reserved

    @database_errors_as_domain_errors
    async def seed_stock(self, on_hand: Mapping[str, int]) -> int:
        """Create stock records for seed products that have none; returns how many were created."""
        async with self._db.transaction() as session:
            return await StockRepository(session).add_missing(on_hand)

    @database_errors_as_domain_errors
    async def sweep_expired(self) -> int:
        """Record the expiry of every PENDING reservation past expires_at; returns how many."""
        return await self._expire_overdue(None)

    @database_errors_as_domain_errors
    async def purge_finished(self) -> int:
        """Delete the reservations that ended more than the retention ago, in batches; returns how many.

        Each batch in a transaction of its own, as the chassis' purges: a month's reservations at once would
        hold SQLite's one writer (on the event loop) for seconds, and every Reserve with it."""
        if self._retention is None:
            return 0
        now = self._clock()
        before = now - self._retention

        async def batch(session: DbConnection) -> int:
            return await ReservationRepository(session).purge_finished(before, self._purge_batch_size, now)

        purged = await in_batches(self._db, batch, batch_size=self._purge_batch_size)
        if purged:
            log.info(
                "purged %d reservations that ended before %s",
                purged,
                before.isoformat(timespec="seconds"),
                extra={"purged": purged},
            )
        return purged

    async def _expire_overdue(self, product_ids: Collection[str] | None) -> int:
        # Small batches, one transaction per reservation: a sweep never holds many locks for long.
        expired = 0
        while True:
            # Found in a snapshot: the sweep runs every second, and finds nothing nearly every time. Each
            # expiry then takes the write lock in `_apply`, which rechecks the reservation.
            async with self._db.read() as session:
                ids = await ReservationRepository(session).overdue_ids(
                    self._clock(), self._sweep_batch_size, product_ids
                )
            expired_in_batch = 0
            for reservation_id in ids:
                _, plan = await self._apply(reservation_id, rules.plan_expiry)
                if plan.transition is not None:
                    expired_in_batch += 1
            expired += expired_in_batch
            # A full batch of which nothing expired (the clock stepped back) would come back unchanged.
            if len(ids) < self._sweep_batch_size or not expired_in_batch:
                if expired:
                    log.info("expired %d reservations", expired, extra={"expired": expired})
                return expired

    async def _advance(self, reservation_id: str, planner: Planner) -> Reservation:
        reservation, plan = await self._apply(reservation_id, planner)
        if plan.failure is not None:
            raise plan.failure
        return reservation

    async def _apply(self, reservation_id: str, planner: Planner) -> tuple[Reservation, rules.Plan]:
        """Plan against the stored reservation and apply the plan's transition, retrying lost races.

        The transition is committed even when the plan then fails (an overdue reservation's expiry).
        """
        for _ in range(_STATE_CHANGE_ATTEMPTS):
            now = self._clock()
            async with self._db.transaction() as session:
                reservations = ReservationRepository(session)
                current = await reservations.get(reservation_id)
                if current is None:
                    raise rules.reservation_not_found(reservation_id, await reservations.purged(reservation_id))
                plan = planner(current, now)
                if plan.transition is None:
                    return current.as_seen_at(now), plan
                changed = rules.applied(current, plan.transition, now)
                if await reservations.record(plan.transition, changed):
                    await StockRepository(session).move(current.items, plan.transition.effect)
                    return changed, plan
        raise Aborted(
            f"reservation {reservation_id!r} is being changed concurrently; retry", reason="CONCURRENT_UPDATE"
        )
