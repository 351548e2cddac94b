"""Never oversell, never reserve twice: many concurrent calls over real gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_inventory.application import Inventory

from .conftest import BACKENDS, serving
from .inventory_calls import commit, release, reserve, set_stock, stock


async def _outcome(call: Awaitable[object]) -> str:
    """ "OK", or the ErrorInfo reason of the failure."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return details_of(error).reason or error.code().name
    return "OK"


@BACKENDS
async def test_fifty_concurrent_reservations_of_ten_units_never_oversell(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    async with serving(make_inventory(), tmp_path) as stub:
        await set_stock(stub, "prod_p", 10)
        outcomes = await asyncio.gather(*(_outcome(reserve(stub, f"ord_{n}", {"prod_p": 1})) for n in range(50)))
        assert Counter(outcomes) == {"OK": 10, "INSUFFICIENT_STOCK": 40}
        assert await stock(stub, "prod_p") == (0, 10, 10)


@BACKENDS
async def test_concurrent_multi_item_reservations_in_any_item_order_never_oversell_or_deadlock(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    products = ["prod_a", "prod_b", "prod_c"]
    async with serving(make_inventory(), tmp_path) as stub:
        for product in products:
            await set_stock(stub, product, 10)

        async def order(n: int) -> str:
            # Each order names the products in its own order; the service must lock them in one order.
            shuffled = random.Random(n).sample(products, k=len(products))
            return await _outcome(reserve(stub, f"ord_{n}", dict.fromkeys(shuffled, 2)))

        outcomes = await asyncio.gather(*(order(n) for n in range(20)))
        assert Counter(outcomes) == {"OK": 5, "INSUFFICIENT_STOCK": 15}
        for product in products:
            assert await stock(stub, product) == (0, 10, 10)


@BACKENDS
async def test_concurrent_duplicate_reservations_for_one_order_reserve_once(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    async with serving(make_inventory(), tmp_path) as stub:
        await set_stock(stub, "prod_p", 10)
        reservations = await asyncio.gather(*(reserve(stub, "ord_1", {"prod_p": 3}) for _ in range(20)))
        assert len({r.id for r in reservations}) == 1
        assert await stock(stub, "prod_p") == (7, 3, 10)


@BACKENDS
async def test_concurrent_commits_and_releases_of_one_reservation_move_stock_consistently(
    make_inventory: Callable[..., Inventory], tmp_path: Path
) -> None:
    async with serving(make_inventory(), tmp_path) as stub:
        await set_stock(stub, "prod_p", 10)
        reservation = await reserve(stub, "ord_1", {"prod_p": 4})
        calls = [commit(stub, reservation.id) for _ in range(10)] + [release(stub, reservation.id) for _ in range(10)]
        outcomes = Counter(await asyncio.gather(*(_outcome(c) for c in calls)))
        # Every release succeeds; a commit succeeds or finds the reservation already released.
        assert set(outcomes) <= {"OK", "RESERVATION_RELEASED"}
        final = await stub.GetReservation(inventory_pb2.GetReservationRequest(reservation_id=reservation.id))
        assert final.reservation.state == inventory_pb2.RESERVATION_STATE_RELEASED
        # Released from PENDING, or committed and then restocked: either way every unit is back.
        assert await stock(stub, "prod_p") == (10, 0, 10)
