"""Finished reservations are deleted with their items past RESERVATION_RETENTION_SECONDS, and what is left of
them keeps every call replayed afterwards from having a second effect: a Reserve for the order is refused
(never a second reservation), Commit, Release and GetReservation answer NOT_FOUND saying how it ended."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.errors import NotFound
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.domain.models import ReservationItem
from shopmesh_inventory.settings import InventorySettings
from shopmesh_inventory.store.tables import purged_reservations, reservation_items, reservations
from shopmesh_inventory.wiring import inventory_of

from .conftest import BACKENDS, FakeClock, serving
from .inventory_calls import commit, error_of, get_reservation, metadata, release, reserve, set_stock, stock

RETENTION = timedelta(days=30)


async def _count(database: Database, table: object) -> int:
    async with database.read() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


@BACKENDS
async def test_finished_reservations_are_purged_past_the_retention_and_replays_never_reserve_again(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    inventory = Inventory(database, clock=clock, retention=RETENTION, purge_batch_size=2)
    async with serving(inventory, tmp_path) as stub:
        await set_stock(stub, "prod_a", 100)
        await set_stock(stub, "prod_b", 100)
        committed = await reserve(stub, "ord_committed", {"prod_a": 1, "prod_b": 2})
        await commit(stub, committed.id)
        released = await reserve(stub, "ord_released", {"prod_a": 3})
        await release(stub, released.id)
        expired = await reserve(stub, "ord_expired", {"prod_b": 4}, ttl_seconds=60)
        clock.advance(60)
        assert await inventory.sweep_expired() == 1
        restocked = await reserve(stub, "ord_restocked", {"prod_b": 6})
        await commit(stub, restocked.id)

        clock.advance(RETENTION.total_seconds() - 30)
        # Ended within the retention: the customer's cancellation of a confirmed order restocks it as always.
        assert (await release(stub, restocked.id)).state == inventory_pb2.RESERVATION_STATE_RELEASED
        pending = await reserve(stub, "ord_pending", {"prod_a": 7})
        clock.advance(60)
        levels = [await stock(stub, "prod_a"), await stock(stub, "prod_b")]

        # Three ended more than the retention ago; the one released just now and the pending one stay. In
        # batches of two: two transactions.
        assert await inventory.purge_finished() == 3
        assert await inventory.purge_finished() == 0
        assert await _count(database, reservations) == 2
        assert await _count(database, reservation_items) == 2
        assert await _count(database, purged_reservations) == 3
        # Deleting finished reservations moves no stock.
        assert [await stock(stub, "prod_a"), await stock(stub, "prod_b")] == levels
        assert (await get_reservation(stub, pending.id)).state == inventory_pb2.RESERVATION_STATE_PENDING
        assert (await get_reservation(stub, restocked.id)).state == inventory_pb2.RESERVATION_STATE_RELEASED

        # A replayed Reserve (orders' saga after a crash) is refused, for any state it ended in: the order's
        # stock is not held, and never again.
        for order_id, items, gone, state in [
            ("ord_committed", {"prod_a": 1, "prod_b": 2}, committed, "COMMITTED"),
            ("ord_released", {"prod_a": 3}, released, "RELEASED"),
            ("ord_expired", {"prod_b": 4}, expired, "EXPIRED"),
        ]:
            details = await error_of(reserve(stub, order_id, items))
            assert details.code == grpc.StatusCode.FAILED_PRECONDITION
            assert details.reason == "RESERVATION_PURGED"
            assert metadata(details) == {
                "order_id": order_id,
                "reservation_id": gone.id,
                "purged_state": f"RESERVATION_STATE_{state}",
                "ended_at": metadata(details)["ended_at"],
            }
        assert [await stock(stub, "prod_a"), await stock(stub, "prod_b")] == levels
        assert await _count(database, reservations) == 2

        # Commit, Release and GetReservation: NOT_FOUND as for any reservation inventory does not have (what
        # callers handle as "holds no stock"), saying how it ended.
        for call in (commit, release, get_reservation):
            details = await error_of(call(stub, committed.id))
            assert details.code == grpc.StatusCode.NOT_FOUND
            assert details.reason == "RESERVATION_NOT_FOUND"
            assert metadata(details)["purged_state"] == "RESERVATION_STATE_COMMITTED"
            assert "deleted past its retention" in details.message
        assert [await stock(stub, "prod_a"), await stock(stub, "prod_b")] == levels


async def test_without_a_retention_nothing_is_purged(database: Database, clock: FakeClock, tmp_path: Path) -> None:
    inventory = Inventory(database, clock=clock)
    async with serving(inventory, tmp_path) as stub:
        await set_stock(stub, "prod_a", 10)
        await commit(stub, (await reserve(stub, "ord_1", {"prod_a": 1})).id)
    clock.advance(3650 * 86400)
    assert await inventory.purge_finished() == 0
    assert await _count(database, reservations) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_release_racing_the_purge_restocks_or_finds_the_reservation_purged_never_both(
    database: Database, clock: FakeClock
) -> None:
    """A customer's cancellation (Release of a COMMITTED reservation: a restock) meeting the purge of that
    reservation: either the restock goes first, and the reservation, RELEASED just now, stays; or the purge
    does, and the release finds it purged. The units come back exactly when the release succeeded."""
    inventory = Inventory(database, clock=clock, retention=RETENTION, purge_batch_size=5)
    await inventory.set_stock("prod_a", 1000)
    ids = []
    for n in range(40):
        reservation = await inventory.reserve(f"ord_{n}", [ReservationItem("prod_a", 1)], None)
        await inventory.commit(reservation.id)
        ids.append(reservation.id)
    clock.advance(RETENTION.total_seconds() + 1)

    async def released(reservation_id: str) -> bool:
        try:
            await inventory.release(reservation_id)
        except NotFound:
            return False
        return True

    purged, *outcomes = await asyncio.gather(inventory.purge_finished(), *(released(i) for i in ids))
    restocked = sum(outcomes)
    assert purged + restocked == len(ids)
    [level] = await inventory.get_stock(["prod_a"])
    assert level.on_hand == 1000 - len(ids) + restocked
    assert await _count(database, reservations) == restocked
    assert await _count(database, reservation_items) == restocked
    async with database.read() as session:
        kept = set((await session.execute(select(reservations.c.id, reservations.c.state))).all())
    assert {state for _, state in kept} <= {"RELEASED"}


def test_retention_defaults_to_30_days_and_refuses_less_than_orders_may_wait() -> None:
    settings = load_settings(InventorySettings)
    assert settings.reservation_retention_seconds == 30 * 86400
    assert load_settings(InventorySettings, reservation_retention_seconds=0).reservation_retention_seconds == 0
    assert load_settings(InventorySettings, reservation_retention_seconds=90000).reservation_retention_seconds == 90000
    with pytest.raises(
        ConfigError, match=r"RESERVATION_RETENTION_SECONDS=86400: must be 0 \(for ever\) or at least 90000"
    ):
        load_settings(InventorySettings, reservation_retention_seconds=86400)


async def test_the_service_purges_with_its_retention_and_keeps_for_ever_with_0(database: Database) -> None:
    ended = datetime.now(UTC) - timedelta(days=2)
    async with database.transaction() as session:
        await session.execute(
            reservations.insert(),
            {
                "id": "res_old",
                "order_id": "ord_old",
                "state": "COMMITTED",
                "expires_at": ended,
                "created_at": ended,
                "updated_at": ended,
            },
        )
        await session.execute(
            reservation_items.insert(), {"reservation_id": "res_old", "product_id": "p", "quantity": 1}
        )
    for_ever = inventory_of(load_settings(InventorySettings, reservation_retention_seconds=0), database)
    assert await for_ever.purge_finished() == 0
    a_day_and_a_bit = inventory_of(load_settings(InventorySettings, reservation_retention_seconds=90000), database)
    assert await a_day_and_a_bit.purge_finished() == 1
