"""Reservations expire on the real clock, and the background sweeper records it until it is stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_inventory.application import Inventory

from .conftest import serving
from .inventory_calls import commit, error_of, get_reservation, metadata, reserve, set_stock, stock


async def test_reservation_with_a_one_second_ttl_expires_and_then_cannot_be_committed(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    inventory = make_inventory()  # the wall clock
    async with serving(inventory, tmp_path) as stub:
        await set_stock(stub, "prod_a", 5)
        reservation = await reserve(stub, "ord_1", {"prod_a": 2}, ttl_seconds=1)
        assert await stock(stub, "prod_a") == (3, 2, 5)
        # Wait until expires_at has passed (the domain's minimum TTL is one second).
        expires_at = reservation.expires_at.ToDatetime(tzinfo=UTC)
        await asyncio.sleep(max((expires_at - datetime.now(UTC)).total_seconds(), 0) + 0.2)
        assert await inventory.sweep_expired() == 1
        expired = await get_reservation(stub, reservation.id)
        assert expired.state == inventory_pb2.RESERVATION_STATE_EXPIRED
        assert await stock(stub, "prod_a") == (5, 0, 5)
        details = await error_of(commit(stub, reservation.id))
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.reason == "RESERVATION_EXPIRED"
        assert metadata(details) == {"reservation_id": reservation.id}
