"""Orders a newer release of orders wrote on the same database (a rolling update, a canary, a rollback): a
cancel code, state or step this release does not know stays readable, is never written over, is not driven
by the recovery loop, and a retry of such an order is not told it is still being processed."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, OrderState, SagaStep
from shopmesh_orders.store.repository import OrderRepository

from .conftest import FakeInventory
from .saga_kit import command, place


async def test_an_order_cancelled_with_a_reason_a_newer_release_added_stays_readable(
    app: OrdersApplication, database: Database
) -> None:
    """Review finding: CHECKOUT_INTERRUPTED is a new value in orders.cancel_code. docs/chassis.md: during a
    rolling update, a canary's stable track or after a rollback, the previous release runs on the same
    database; it reads the column with CancelCode(row.cancel_code), which raises ValueError for a value it
    does not know, so GetOrder and ListOrders of that user fail INTERNAL on old pods (the symptom the
    totals fix removed). This release is no more tolerant of the next added reason: a cancel code this
    release does not know must not make the order unreadable."""
    from sqlalchemy import update

    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(state=OrderState.CANCELLED.value, cancel_code="SOME_LATER_REASON")
        )
    order = await app.get_order(order_id)
    assert order.state is OrderState.CANCELLED
    page, _ = await app.list_orders("usr_1", 10, "")
    assert [o.id for o in page] == [order_id]


async def test_a_cancel_code_this_release_does_not_know_is_answered_as_unspecified_and_never_written_over(
    app: OrdersApplication, database: Database
) -> None:
    from sqlalchemy import update

    from shopmesh.orders.v1 import orders_pb2
    from shopmesh_orders.codec import order_to_proto
    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(state=OrderState.CANCELLED.value, cancel_code="SOME_LATER_REASON", cancel_message="Why.")
        )
    order = await app.get_order(order_id)
    assert order.cancel_code is CancelCode.UNSPECIFIED
    reason = order_to_proto(order).cancel_reason
    assert (reason.code, reason.message) == (orders_pb2.CANCEL_REASON_CODE_UNSPECIFIED, "Why.")
    async with database.transaction() as session:
        await OrderRepository(session).save(replace(order, updated_at=order.updated_at + timedelta(seconds=1)))
    async with database.transaction() as session:
        stored = (await session.execute(select(orders.c.cancel_code).where(orders.c.id == order_id))).scalar_one()
    assert stored == "SOME_LATER_REASON"


async def test_an_order_in_a_state_and_step_this_release_does_not_know_is_listed_and_left_alone(
    app: OrdersApplication, database: Database
) -> None:
    """docs/chassis.md: values a newer release adds to a stored enum stay readable. An order at a step this
    release cannot drive is answered with the contract's 0 state, not cancellable here, and passed over
    by the recovery loop (which must not spend its batch on it), its stored state and step kept."""
    from sqlalchemy import update

    from shopmesh.orders.v1 import orders_pb2
    from shopmesh_orders.codec import order_to_proto
    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == order_id).values(state="HELD", step="REVIEW"))
    order = await app.get_order(order_id)
    assert (order.state, order.step) == (OrderState.UNSPECIFIED, SagaStep.UNSPECIFIED)
    assert order_to_proto(order).state == orders_pb2.ORDER_STATE_UNSPECIFIED
    page, _ = await app.list_orders("usr_1", 10, "")
    assert [o.id for o in page] == [order_id]
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "fp")
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"
    assert await app.resume_unfinished() == 0
    async with database.transaction() as session:
        await OrderRepository(session).save(replace(order, updated_at=order.updated_at + timedelta(seconds=1)))
    async with database.transaction() as session:
        stored = (await session.execute(select(orders.c.state, orders.c.step).where(orders.c.id == order_id))).one()
    assert tuple(stored) == ("HELD", "REVIEW")


async def test_a_retry_of_an_order_a_newer_release_finished_in_a_state_this_one_cannot_name_is_not_told_it_is_processed(
    app: OrdersApplication, database: Database, inventory: FakeInventory
) -> None:
    """PlaceOrder retried for an order a newer release finished (step DONE) in a state this release cannot name:
    nothing is being processed, and the saga is not driven. It was told "still being processed", which sent
    clients looking for a checkout that had ended. A replica of the newer release answers the retry: 1 s,
    not final (see `_outcome`), with the reason of every answer about a newer release's order (it was
    DEPENDENCY_UNAVAILABLE, which names no dependency here)."""
    from sqlalchemy import update

    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == order_id).values(state="HELD"))
    calls = len(inventory.calls)
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    assert "still being processed" not in caught.value.message
    assert "finished by a newer release" in caught.value.message
    assert (caught.value.reason, caught.value.metadata, caught.value.retry_after_seconds, caught.value.final) == (
        "ORDER_FROM_NEWER_RELEASE",
        {"order_id": order_id},
        1.0,
        False,
    )
    assert len(inventory.calls) == calls
