"""What inventory answers about a reservation it deleted past its retention is what orders' InventoryClient
reads: the real inventory service (its purge, on SQLite, over real gRPC) and orders' own client, which the saga
tests drive against a stand-in of the contract (services/orders/tests/inventory_on_the_wire.py). A replayed
Reserve comes out as a lapsed reservation (the saga cancels, never reserves again), a Commit of one that ended
COMMITTED as done, any other Commit as lapsed, and a Release as done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database, sqlite_url
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import serve_in_process
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.migrations import VERSIONS
from shopmesh_inventory.settings import InventorySettings
from shopmesh_inventory.store.tables import metadata
from shopmesh_inventory.wiring import binding
from shopmesh_orders.clients import InventoryClient
from shopmesh_orders.domain.ports import ReservationExpired
from shopmesh_orders.domain.validation import CartLine

RETENTION = timedelta(days=30)
SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def _inventory(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[Inventory, InventoryClient]]:
    database = Database(sqlite_url(tmp_path, "inventory"))
    await migrate(database, VERSIONS, metadata)
    inventory = Inventory(database, clock=clock, retention=RETENTION)
    settings = load_settings(InventorySettings, grpc_port=0, metrics_port=-1, data_dir=str(tmp_path))
    try:
        async with (
            serve_in_process(settings, [binding(inventory)]) as server,
            ResilientChannel(server.address, [SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
        ):
            yield inventory, InventoryClient(channel.channel, timeout=5, unknown_state_wait=1)
    finally:
        await database.dispose()


async def test_orders_reads_inventorys_answers_about_purged_reservations_as_the_saga_needs(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 1, tzinfo=UTC))
    async with _inventory(tmp_path, clock) as (inventory, client):
        await inventory.set_stock("prod_a", 10)
        lines = [CartLine("prod_a", 2)]
        committed = await client.reserve("ord_committed", lines, 60)
        await client.commit(committed)
        released = await client.reserve("ord_released", lines, 60)
        await client.release(released)
        clock.now += RETENTION + timedelta(seconds=1)
        assert await inventory.purge_finished() == 2

        for order_id in ("ord_committed", "ord_released"):
            with pytest.raises(ReservationExpired):
                await client.reserve(order_id, lines, 60)
        await client.commit(committed)  # done before: not refused
        with pytest.raises(ReservationExpired):
            await client.commit(released)
        await client.release(committed)  # nothing held: done (its units are not restocked)
        await client.release(released)
        [level] = await inventory.get_stock(["prod_a"])
        assert (level.on_hand, level.reserved) == (8, 0)
