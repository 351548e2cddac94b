"""`python -m shopmesh_inventory` runs the whole service: migrations, seed stock, sweeper, purge, drain."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis.db import Database, sqlite_url
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import PYTHON, start_process_serving
from shopmesh_inventory.migrations import VERSIONS
from shopmesh_inventory.seed import SEED_STOCK
from shopmesh_inventory.store.tables import metadata, reservation_items, reservations


async def test_service_process_serves_seeded_stock_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {"METRICS_PORT": "-1", "DATA_DIR": str(tmp_path), "RESERVATION_SWEEP_INTERVAL_SECONDS": "0.05"}
    service = await start_process_serving(
        [PYTHON, "-m", "shopmesh_inventory"], log_path=tmp_path / "inventory.log", env=env
    )
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            response = await stub.GetStock(inventory_pb2.GetStockRequest(product_ids=list(SEED_STOCK)))
        assert {s.product_id: s.on_hand for s in response.stock_levels} == SEED_STOCK
    finally:
        service.signal()
        exit_code = service.wait()
    assert exit_code == 0, service.output()
    assert "shutdown hook failed" not in service.output()


async def test_the_service_as_run_dates_reservations_by_the_wall_clock(tmp_path: Path) -> None:
    # The unit tests hold the clock; this is the composition root's own wiring. Bracketed by the wall clock
    # read before and after the call (whole seconds, whatever a store rounds), so no speed is assumed: a held,
    # shifted or monotonic clock lands outside.
    env = {"METRICS_PORT": "-1", "DATA_DIR": str(tmp_path)}
    service = await start_process_serving(
        [PYTHON, "-m", "shopmesh_inventory"], log_path=tmp_path / "inventory.log", env=env
    )
    ttl = 900
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            item = inventory_pb2.ReservationItem(product_id=next(iter(SEED_STOCK)), quantity=1)
            request = inventory_pb2.ReserveRequest(order_id="ord_wall_clock", items=[item], ttl=Duration(seconds=ttl))
            before = math.floor(time.time())
            reservation = (await stub.Reserve(request)).reservation
            after = math.ceil(time.time())
    finally:
        service.signal()
        service.wait()
    created, expires = reservation.created_at.ToSeconds(), reservation.expires_at.ToSeconds()
    assert before <= created <= after, (before, reservation.created_at, after)
    assert before + ttl <= expires <= after + ttl, (before, reservation.expires_at, after)


async def test_the_service_as_run_purges_reservations_past_its_retention(tmp_path: Path) -> None:
    # The composition root's own wiring of the purge: a reservation that ended two days ago, in the database
    # the service opens, is purged soon after it starts with a retention of a day and an hour.
    database = Database(sqlite_url(tmp_path, "inventory"))
    await migrate(database, VERSIONS, metadata)
    ended = datetime.now(UTC) - timedelta(days=2)
    async with database.transaction() as session:
        await session.execute(
            reservations.insert(),
            {"id": "res_old", "order_id": "ord_old", "state": "COMMITTED"}
            | {"expires_at": ended, "created_at": ended, "updated_at": ended},
        )
        await session.execute(
            reservation_items.insert(), {"reservation_id": "res_old", "product_id": "prod_a", "quantity": 1}
        )
    await database.dispose()
    env = {"METRICS_PORT": "-1", "DATA_DIR": str(tmp_path), "RESERVATION_RETENTION_SECONDS": "90000"}
    service = await start_process_serving(
        [PYTHON, "-m", "shopmesh_inventory"], log_path=tmp_path / "inventory.log", env=env
    )
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            request = inventory_pb2.GetReservationRequest(reservation_id="res_old")
            deadline = time.monotonic() + 30
            while True:
                try:
                    await stub.GetReservation(request)
                except grpc.aio.AioRpcError as error:
                    details = details_of(error)
                    assert details.error_info is not None
                    assert details.error_info.metadata["purged_state"] == "RESERVATION_STATE_COMMITTED"
                    break
                assert time.monotonic() < deadline, "not purged within 30 s of serving"
                await asyncio.sleep(0.05)
    finally:
        service.signal()
        service.wait()
    assert "purged 1 reservations that ended before" in service.output()
