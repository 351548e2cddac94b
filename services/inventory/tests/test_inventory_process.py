"""`python -m shopmesh_inventory` runs the whole service: migrations, seed stock, sweeper, drain."""

from __future__ import annotations

import math
import time
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis.testing import PYTHON, start_process_serving
from shopmesh_inventory.seed import SEED_STOCK


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
