"""A reservation with the shortest TTL the contract allows expires, and the sweep records it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path

import grpc

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis.clocks import utc_now
from shopmesh_inventory.application import Inventory

from .conftest import FakeClock, serving
from .inventory_calls import commit, error_of, get_reservation, metadata, reserve, set_stock, stock


async def test_reservation_with_a_one_second_ttl_expires_and_then_cannot_be_committed(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    # The wall clock's reading, held: a stall between Reserve and the stock check cannot run the TTL out
    # (overdue units count as available before any sweep), and expiry comes when the test moves it.
    clock = FakeClock(utc_now())
    inventory = make_inventory(clock)
    async with serving(inventory, tmp_path) as stub:
        await set_stock(stub, "prod_a", 5)
        reservation = await reserve(stub, "ord_1", {"prod_a": 2}, ttl_seconds=1)
        assert await stock(stub, "prod_a") == (3, 2, 5)
        assert reservation.expires_at.ToDatetime(tzinfo=UTC) == clock.now + timedelta(seconds=1)
        clock.advance(1)
        assert await inventory.sweep_expired() == 1
        expired = await get_reservation(stub, reservation.id)
        assert expired.state == inventory_pb2.RESERVATION_STATE_EXPIRED
        assert await stock(stub, "prod_a") == (5, 0, 5)
        details = await error_of(commit(stub, reservation.id))
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.reason == "RESERVATION_EXPIRED"
        assert metadata(details) == {"reservation_id": reservation.id}
