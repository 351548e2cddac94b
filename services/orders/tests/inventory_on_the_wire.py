"""Inventory over a real gRPC socket, for the saga tests where what inventory answers on the wire decides the
outcome: `InventoryOnTheWire` serves inventory's contract in memory, and `_with_inventory_over_grpc` puts
orders' own InventoryClient, talking to it, in place of the fake inventory (unknown enum numbers, RetryInfo
and ABORTED then reach the saga as the real client decodes them)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ResilientChannel
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_orders.clients import InventoryClient
from shopmesh_orders.domain.ports import DependencyDown
from shopmesh_orders.domain.validation import CartLine
from shopmesh_orders.wiring import step_client_options

from .saga_kit import Clocked

INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]


@dataclass
class Reachable:
    """Orders' InventoryClient, cut off while `down` (the DependencyDown a transport failure gives)."""

    client: InventoryClient
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise DependencyDown("inventory down")

    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        self._check()
        return await self.client.reserve(order_id, items, ttl_seconds)

    async def commit(self, reservation_id: str) -> None:
        self._check()
        await self.client.commit(reservation_id)

    async def release(self, reservation_id: str) -> None:
        self._check()
        await self.client.release(reservation_id)


# A ReservationState number this release of the contract has no name for: what a newer inventory storing a new
# state (say ON_HOLD) puts on the wire to this release of orders.
A_NEWER_RELEASES_STATE = inventory_pb2.ReservationState.ValueType(max(inventory_pb2.ReservationState.values()) + 1)


class InventoryOnTheWire(inventory_pb2_grpc.InventoryServiceServicer):
    """InventoryService as its contract describes the reservation calls, in memory, for orders' InventoryClient to
    call over a real gRPC socket: Reserve replays the order's reservation whatever its state (the number stored,
    even one this release cannot name) and reserves anew only for an order it has none for; Commit and Release
    refuse what inventory refuses (FAILED_PRECONDITION, by state), and an id it does not have is NOT_FOUND,
    RESERVATION_NOT_FOUND. A reservation `purge`d (as inventory deletes finished ones past its retention) is
    NOT_FOUND too, its metadata naming the state it ended in, and a Reserve for its order is refused
    (FAILED_PRECONDITION, RESERVATION_PURGED). Stock levels and expiry are left out: the tests set the states.
    Every Release is recorded. The next `reserve_races_to_lose` Reserves (and `release_races_to_lose` Releases)
    answer ABORTED, as inventory does when its write lost a concurrency race (a serialization failure, or a state
    change that lost its retries). While `asks_to_wait` is set, every call answers UNAVAILABLE with RetryInfo
    asking for that many seconds, as an inventory draining or shedding load does (`asked_to_wait` counts them)."""

    def __init__(self) -> None:
        self.reservations: dict[str, inventory_pb2.Reservation] = {}
        self.purged: dict[str, inventory_pb2.Reservation] = {}
        self.released: list[str] = []
        self.reserve_races_to_lose = 0
        self.release_races_to_lose = 0
        self.asks_to_wait: float | None = None
        # How many calls answered so.
        self.asked_to_wait = 0

    def _check_available(self) -> None:
        if self.asks_to_wait is not None:
            self.asked_to_wait += 1
            raise errors.Unavailable("inventory is draining", retry_after_seconds=self.asks_to_wait)

    @staticmethod
    def _lost_race() -> errors.Aborted:
        return errors.Aborted("concurrent update of the same records; retry", reason="CONCURRENT_UPDATE")

    def of_order(self, order_id: str) -> inventory_pb2.Reservation | None:
        return next((r for r in self.reservations.values() if r.order_id == order_id), None)

    def held(self, product_id: str) -> int:
        return sum(
            i.quantity
            for r in self.reservations.values()
            if r.state == inventory_pb2.RESERVATION_STATE_PENDING
            for i in r.items
            if i.product_id == product_id
        )

    def purge(self, reservation_id: str) -> None:
        """Delete a finished reservation, as inventory does past RESERVATION_RETENTION_SECONDS."""
        reservation = self.reservations.pop(reservation_id)
        assert reservation.state != inventory_pb2.RESERVATION_STATE_PENDING, "only finished ones are purged"
        self.purged[reservation_id] = reservation

    @staticmethod
    def _purged_metadata(reservation: inventory_pb2.Reservation) -> dict[str, str]:
        return {
            "reservation_id": reservation.id,
            "purged_state": inventory_pb2.ReservationState.Name(reservation.state),
            "ended_at": "2026-11-01T00:00:00+00:00",
        }

    def _get(self, reservation_id: str) -> inventory_pb2.Reservation:
        if reservation_id not in self.reservations:
            purged = self.purged.get(reservation_id)
            raise errors.NotFound(
                f"reservation {reservation_id!r} not found",
                reason="RESERVATION_NOT_FOUND",
                metadata={"reservation_id": reservation_id} if purged is None else self._purged_metadata(purged),
            )
        return self.reservations[reservation_id]

    @staticmethod
    def _refused(reservation: inventory_pb2.Reservation) -> errors.FailedPrecondition:
        reason = {
            inventory_pb2.RESERVATION_STATE_EXPIRED: "RESERVATION_EXPIRED",
            inventory_pb2.RESERVATION_STATE_RELEASED: "RESERVATION_RELEASED",
        }.get(reservation.state, "RESERVATION_STATE_UNKNOWN")
        return errors.FailedPrecondition(
            f"reservation {reservation.id!r}: {reason}", reason=reason, metadata={"reservation_id": reservation.id}
        )

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> inventory_pb2.ReserveResponse:
        self._check_available()
        if self.reserve_races_to_lose:
            self.reserve_races_to_lose -= 1
            raise self._lost_race()
        reservation = self.of_order(request.order_id)
        purged = next((r for r in self.purged.values() if r.order_id == request.order_id), None)
        if reservation is None and purged is not None:
            raise errors.FailedPrecondition(
                f"order {request.order_id!r} had reservation {purged.id!r}, deleted past its retention",
                reason="RESERVATION_PURGED",
                metadata={"order_id": request.order_id, **self._purged_metadata(purged)},
            )
        if reservation is None:
            reservation = inventory_pb2.Reservation(
                id=f"res_{uuid.uuid4().hex}",  # never an id it had before, as inventory
                order_id=request.order_id,
                items=request.items,
                state=inventory_pb2.RESERVATION_STATE_PENDING,
            )
            self.reservations[reservation.id] = reservation
        return inventory_pb2.ReserveResponse(reservation=reservation)

    async def CommitReservation(
        self, request: inventory_pb2.CommitReservationRequest, context: Any
    ) -> inventory_pb2.CommitReservationResponse:
        self._check_available()
        reservation = self._get(request.reservation_id)
        if reservation.state == inventory_pb2.RESERVATION_STATE_PENDING:
            reservation.state = inventory_pb2.RESERVATION_STATE_COMMITTED
        elif reservation.state != inventory_pb2.RESERVATION_STATE_COMMITTED:
            raise self._refused(reservation)
        return inventory_pb2.CommitReservationResponse(reservation=reservation)

    async def ReleaseReservation(
        self, request: inventory_pb2.ReleaseReservationRequest, context: Any
    ) -> inventory_pb2.ReleaseReservationResponse:
        self.released.append(request.reservation_id)
        self._check_available()
        if self.release_races_to_lose:
            self.release_races_to_lose -= 1
            raise self._lost_race()
        reservation = self._get(request.reservation_id)
        if reservation.state in (inventory_pb2.RESERVATION_STATE_PENDING, inventory_pb2.RESERVATION_STATE_COMMITTED):
            reservation.state = inventory_pb2.RESERVATION_STATE_RELEASED
        elif reservation.state not in (
            inventory_pb2.RESERVATION_STATE_RELEASED,
            inventory_pb2.RESERVATION_STATE_EXPIRED,
        ):
            # Releasing units a newer release may already have moved would count them twice.
            raise self._refused(reservation)
        return inventory_pb2.ReleaseReservationResponse(reservation=reservation)


@contextlib.asynccontextmanager
async def _with_inventory_over_grpc(
    clocked: Clocked, timeout: float = 5
) -> AsyncIterator[tuple[Clocked, InventoryOnTheWire]]:
    """`clocked` with orders' InventoryClient in place of the fake, talking over real gRPC to `InventoryOnTheWire`
    served by the chassis (what inventory answers is then what the client decodes, unknown enum numbers too);
    `timeout` is each call's deadline (a step's)."""
    inventory = InventoryOnTheWire()
    binding = ServiceBinding(INVENTORY_SERVICE, inventory, inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    async with (
        serve_in_process(clocked.settings, [binding]) as server,
        # orders' channel to inventory as its wiring builds it (no retries under the saga's), breaker aside.
        ResilientChannel(
            server.address, [INVENTORY_SERVICE], replace(step_client_options(clocked.settings), breaker=None)
        ) as channel,
    ):
        port = Reachable(
            InventoryClient(
                channel.channel, timeout=timeout, unknown_state_wait=clocked.settings.recovery_interval_seconds
            )
        )
        yield replace(clocked, inventory=port), inventory  # type: ignore[arg-type]
