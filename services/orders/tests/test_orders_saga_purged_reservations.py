"""An order whose saga comes back to inventory after inventory deleted its finished reservation (past
inventory's RESERVATION_RETENTION_SECONDS: a saga stuck that long, or a customer cancelling an order confirmed
long ago). Inventory answers a Reserve for the order FAILED_PRECONDITION, RESERVATION_PURGED (never a second
reservation), and Commit and Release NOT_FOUND naming the state the reservation ended in; orders' own
InventoryClient decodes it over real gRPC (inventory_on_the_wire.py)."""

from __future__ import annotations

import logging

import pytest

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_orders.domain.model import CancelCode, OrderState, SagaStep

from .conftest import FakePayments
from .inventory_on_the_wire import Reachable, _with_inventory_over_grpc
from .saga_kit import Clocked, _crash_at, command, place


async def test_a_retry_after_inventory_purged_the_orders_lapsed_reservation_cancels_and_reserves_nothing(
    clocked: Clocked, payments: FakePayments
) -> None:
    """The first Reserve went through but its answer was lost; the reservation lapsed, and inventory purged it
    before the order was retried. The retry's Reserve is refused: the order is cancelled as RESERVATION_EXPIRED
    with nothing charged, not reserved (and charged) a second time, nor failed as a bug on every retry."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app = clocked.app()
        reachable = clocked.inventory
        assert isinstance(reachable, Reachable)
        reachable.down = True
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        order_id = caught.value.metadata["order_id"]
        inventory.reservations["res_lost"] = inventory_pb2.Reservation(
            id="res_lost", order_id=order_id, state=inventory_pb2.RESERVATION_STATE_EXPIRED
        )
        inventory.purge("res_lost")
        reachable.down = False
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command())
        assert caught.value.reason == "RESERVATION_EXPIRED"
        order = await app.get_order(order_id)
        assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.RESERVATION_EXPIRED)
        assert inventory.of_order(order_id) is None
        assert payments.charge_calls == 0


async def test_an_order_whose_committed_reservation_was_purged_before_its_save_is_confirmed_not_refunded(
    clocked: Clocked, payments: FakePayments, database: Database
) -> None:
    """Inventory committed the reservation, but the driver died before saving it, and orders came back only after
    inventory purged it: the commit is done (inventory says it ended COMMITTED), so the order is confirmed, not
    refunded and cancelled with the units gone from stock."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app = clocked.app()
        order_id = await place(app, command())
        order = await app.get_order(order_id)
        assert order.state is OrderState.CONFIRMED
        await _crash_at(database, order_id, SagaStep.COMMIT)
        inventory.purge(order.reservation_id)
        assert await app.resume_unfinished() == 1
        order = await app.get_order(order_id)
        assert (order.state, order.step, order.refunded) == (OrderState.CONFIRMED, SagaStep.DONE, False)
        assert payments.refunds == []


async def test_cancelling_an_order_confirmed_before_inventory_purged_its_reservation_refunds_without_restocking(
    clocked: Clocked, payments: FakePayments, caplog: pytest.LogCaptureFixture
) -> None:
    """The customer cancels an order confirmed longer ago than inventory keeps reservations: the refund goes
    through and the order is cancelled; the units cannot be restocked, which orders says."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app = clocked.app()
        order_id = await place(app, command())
        reservation_id = (await app.get_order(order_id)).reservation_id
        inventory.purge(reservation_id)
        with caplog.at_level(logging.WARNING, logger="shopmesh.orders"):
            order = await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
        assert (order.state, order.cancel_code, order.refunded) == (
            OrderState.CANCELLED,
            CancelCode.CUSTOMER_REQUESTED,
            True,
        )
        assert payments.refunds == [order.payment_id]
        assert inventory.released == [reservation_id]
        assert f"reservation {reservation_id} was committed and purged by inventory: its units are not restocked" in (
            caplog.text
        )
