"""The gRPC servicer of shopmesh.inventory.v1.InventoryService: proto → domain → proto, nothing else."""

from __future__ import annotations

from typing import Any

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis.proto_values import to_timestamp
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.domain.models import Reservation, ReservationItem, ReservationState, StockLevel
from shopmesh_inventory.domain.validation import is_duration

DESCRIPTOR = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]

_STATES: dict[ReservationState, inventory_pb2.ReservationState.ValueType] = {
    ReservationState.PENDING: inventory_pb2.RESERVATION_STATE_PENDING,
    ReservationState.COMMITTED: inventory_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: inventory_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: inventory_pb2.RESERVATION_STATE_EXPIRED,
    ReservationState.UNSPECIFIED: inventory_pb2.RESERVATION_STATE_UNSPECIFIED,
}


def stock_level_pb(level: StockLevel) -> inventory_pb2.StockLevel:
    return inventory_pb2.StockLevel(
        product_id=level.product_id, available=level.available, reserved=level.reserved, on_hand=level.on_hand
    )


def reservation_pb(reservation: Reservation) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(
        id=reservation.id,
        order_id=reservation.order_id,
        items=[inventory_pb2.ReservationItem(product_id=i.product_id, quantity=i.quantity) for i in reservation.items],
        state=_STATES[reservation.state],
        created_at=to_timestamp(reservation.created_at),
        expires_at=to_timestamp(reservation.expires_at),
        updated_at=to_timestamp(reservation.updated_at),
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    async def GetStock(self, request: inventory_pb2.GetStockRequest, context: Any) -> inventory_pb2.GetStockResponse:
        levels = await self._inventory.get_stock(list(request.product_ids))
        return inventory_pb2.GetStockResponse(stock_levels=[stock_level_pb(level) for level in levels])

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> inventory_pb2.ReserveResponse:
        ttl_seconds = request.ttl.seconds + request.ttl.nanos / 1e9 if request.HasField("ttl") else None
        reservation = await self._inventory.reserve(
            request.order_id,
            [ReservationItem(product_id=i.product_id, quantity=i.quantity) for i in request.items],
            ttl_seconds,
            ttl_well_formed=is_duration(request.ttl.seconds, request.ttl.nanos),
        )
        return inventory_pb2.ReserveResponse(reservation=reservation_pb(reservation))

    async def CommitReservation(
        self, request: inventory_pb2.CommitReservationRequest, context: Any
    ) -> inventory_pb2.CommitReservationResponse:
        reservation = await self._inventory.commit(request.reservation_id)
        return inventory_pb2.CommitReservationResponse(reservation=reservation_pb(reservation))

    async def ReleaseReservation(
        self, request: inventory_pb2.ReleaseReservationRequest, context: Any
    ) -> inventory_pb2.ReleaseReservationResponse:
        reservation = await self._inventory.release(request.reservation_id)
        return inventory_pb2.ReleaseReservationResponse(reservation=reservation_pb(reservation))

    async def GetReservation(
        self, request: inventory_pb2.GetReservationRequest, context: Any
    ) -> inventory_pb2.GetReservationResponse:
        reservation = await self._inventory.get_reservation(request.reservation_id)
        return inventory_pb2.GetReservationResponse(reservation=reservation_pb(reservation))

    async def SetStock(self, request: inventory_pb2.SetStockRequest, context: Any) -> inventory_pb2.SetStockResponse:
        level = await self._inventory.set_stock(request.product_id, request.on_hand)
        return inventory_pb2.SetStockResponse(stock_level=stock_level_pb(level))
