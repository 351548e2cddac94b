"""Small helpers the inventory service tests share: calls with terse arguments, errors decoded."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of

# The async stub class exists only in the type stubs; at run time InventoryServiceStub builds it.
Stub: TypeAlias = "inventory_pb2_grpc.InventoryServiceAsyncStub"


async def set_stock(stub: Stub, product_id: str, on_hand: int) -> inventory_pb2.StockLevel:
    response = await stub.SetStock(inventory_pb2.SetStockRequest(product_id=product_id, on_hand=on_hand))
    return response.stock_level


async def reserve(
    stub: Stub, order_id: str, items: dict[str, int], ttl_seconds: float | None = None
) -> inventory_pb2.Reservation:
    request = inventory_pb2.ReserveRequest(
        order_id=order_id,
        items=[inventory_pb2.ReservationItem(product_id=p, quantity=q) for p, q in items.items()],
    )
    if ttl_seconds is not None:
        whole = int(ttl_seconds)
        request.ttl.CopyFrom(Duration(seconds=whole, nanos=round((ttl_seconds - whole) * 1e9)))
    return (await stub.Reserve(request)).reservation


async def commit(stub: Stub, reservation_id: str) -> inventory_pb2.Reservation:
    request = inventory_pb2.CommitReservationRequest(reservation_id=reservation_id)
    return (await stub.CommitReservation(request)).reservation


async def release(stub: Stub, reservation_id: str) -> inventory_pb2.Reservation:
    request = inventory_pb2.ReleaseReservationRequest(reservation_id=reservation_id)
    return (await stub.ReleaseReservation(request)).reservation


async def get_reservation(stub: Stub, reservation_id: str) -> inventory_pb2.Reservation:
    request = inventory_pb2.GetReservationRequest(reservation_id=reservation_id)
    return (await stub.GetReservation(request)).reservation


async def stock(stub: Stub, product_id: str) -> tuple[int, int, int]:
    """(available, reserved, on_hand) of one product."""
    response = await stub.GetStock(inventory_pb2.GetStockRequest(product_ids=[product_id]))
    level = response.stock_levels[0]
    return level.available, level.reserved, level.on_hand


async def error_of(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def violations(details: ErrorDetails) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in details.field_violations]


def metadata(details: ErrorDetails) -> dict[str, str]:
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.inventory"
    return dict(details.error_info.metadata)
