"""`python -m shopmesh_inventory` runs the whole service: migrations, seed stock, sweeper, drain."""

from __future__ import annotations

from pathlib import Path

import grpc

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
