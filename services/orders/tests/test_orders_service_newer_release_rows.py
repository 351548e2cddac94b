"""OrdersService over a real gRPC socket, on orders' rows a newer release wrote (a rolling update, a canary, a
rollback: both releases share the database). docs/architecture.md: such an order stays readable."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from sqlalchemy import select, update

from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import orders

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import _stored_by_a_newer_release, command, place
from .test_orders_service import request, serving_orders

_DELIVERY_NOTES = "leave at the door"


@pytest.fixture
async def stub(
    settings: OrdersSettings, database: Database, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    async with serving_orders(settings, database, catalog, inventory, payments) as served:
        yield served


async def _address_with_a_newer_field(database: Database, order_id: str) -> None:
    """The order's address as a newer release stores it: with a field this release does not know."""
    async with database.transaction() as session:
        address = json.loads(await session.scalar(select(orders.c.address).where(orders.c.id == order_id)))
        address["delivery_notes"] = _DELIVERY_NOTES
        await session.execute(update(orders).where(orders.c.id == order_id).values(address=json.dumps(address)))


async def _stored_address(database: Database, order_id: str) -> dict[str, Any]:
    async with database.read() as session:
        stored: dict[str, Any] = json.loads(
            await session.scalar(select(orders.c.address).where(orders.c.id == order_id))
        )
    return stored


async def _row(database: Database, order_id: str) -> Any:
    async with database.read() as session:
        return (
            await session.execute(
                select(orders.c.state, orders.c.step, orders.c.cancel_key).where(orders.c.id == order_id)
            )
        ).one()


def _unavailable_as_from_a_newer_release(error: grpc.aio.AioRpcError, order_id: str) -> None:
    details = details_of(error)
    assert details.error_info is not None
    assert (details.code, details.reason, details.error_info.metadata["order_id"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "ORDER_FROM_NEWER_RELEASE",
        order_id,
    ), details
    assert details.retry_delay_seconds == 1.0
    assert "newer release" in details.message


async def test_an_order_whose_address_a_newer_release_extended_is_read_cancelled_and_keeps_the_new_field(
    stub: orders_pb2_grpc.OrdersServiceStub, database: Database
) -> None:
    """An address with a field a newer release added failed every call on the order with INTERNAL, and the
    user's whole ListOrders. Read without the field; the cancellation's saves leave the stored address as it
    was, the newer release's field included."""
    placed = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    await _address_with_a_newer_field(database, placed.id)

    got = (await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.id))).order
    [listed] = (await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))).orders
    again = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    assert got == listed == again == placed
    cancelled = (
        await stub.CancelOrder(orders_pb2.CancelOrderRequest(order_id=placed.id), metadata=idempotency_metadata("c1"))
    ).order
    assert cancelled.state == orders_pb2.ORDER_STATE_CANCELLED
    assert cancelled.shipping_address == placed.shipping_address
    assert (await _stored_address(database, placed.id))["delivery_notes"] == _DELIVERY_NOTES


async def test_an_order_this_release_cannot_read_is_unavailable_to_its_owner_and_not_found_to_others(
    stub: orders_pb2_grpc.OrdersServiceStub, database: Database, payments: FakePayments
) -> None:
    """GetOrder, a PlaceOrder retry with its key and CancelOrder of an order this release cannot read answered
    INTERNAL. UNAVAILABLE naming the order (ORDER_FROM_NEWER_RELEASE, RetryInfo): a replica of the newer release
    reads it. Another user's is NOT_FOUND as any; another body under the key is still refused; CancelOrder
    changes nothing."""
    placed = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    await _stored_by_a_newer_release(database, [placed.id])
    before = await _row(database, placed.id)

    calls = {
        "GetOrder": stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.id), timeout=30),
        "PlaceOrder retry": stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"), timeout=30),
        "CancelOrder": stub.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=placed.id), metadata=idempotency_metadata("c1"), timeout=30
        ),
    }
    for call in calls.values():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        _unavailable_as_from_a_newer_release(caught.value, placed.id)
    assert await _row(database, placed.id) == before
    assert payments.refund_calls == 0

    theirs = [("x-user-id", "usr_2")]
    for call in (
        stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.id), metadata=theirs),
        stub.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=placed.id), metadata=idempotency_metadata("c2", theirs)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code(), details_of(caught.value).reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    other = request()
    other.items[0].quantity = 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(other, metadata=idempotency_metadata("k1"))
    assert details_of(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize("damaged", ["{not json", "[]", "null"], ids=["not-json", "a-list", "null"])
async def test_an_order_whose_address_is_damaged_fails_internal_and_is_not_taken_for_a_newer_releases(
    stub: orders_pb2_grpc.OrdersServiceStub, database: Database, damaged: str
) -> None:
    """An address no release writes (not JSON, not an object) passed for a newer release's order: UNAVAILABLE
    ORDER_FROM_NEWER_RELEASE, retried for ever, and left out of ListOrders unseen. A damaged row is INTERNAL,
    on every call that loads it, ListOrders included."""
    placed = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == placed.id).values(address=damaged))

    for call in (
        stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.id), timeout=30),
        stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"), timeout=30),
        stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"), timeout=30),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INTERNAL, details_of(caught.value)


async def test_list_orders_leaves_out_an_order_this_release_cannot_read_and_lists_every_other_once(
    stub: orders_pb2_grpc.OrdersServiceStub, database: Database
) -> None:
    """One order this release could not read failed the user's whole ListOrders with INTERNAL. It is left out;
    a page whose only order it was is empty, its next_page_token going on past it."""
    placed = [(await stub.PlaceOrder(request(), metadata=idempotency_metadata(f"k{n}"))).order.id for n in range(3)]
    unreadable = placed[1]
    await _stored_by_a_newer_release(database, [unreadable])

    whole = (await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))).orders
    assert {order.id for order in whole} == set(placed) - {unreadable}
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1", page_size=1, page_token=token))
        pages.append([order.id for order in page.orders])
        token = page.next_page_token
        if not token:
            break
    assert [order.id for order in whole] == [order_id for page_ids in pages for order_id in page_ids]
    assert [] in pages


async def test_each_order_left_out_of_a_page_or_answered_unavailable_is_counted(
    database: Database, catalog: FakeCatalog, saga: SagaDriver
) -> None:
    """Unreadable orders are met only during a rollout or after a rollback: outside those the counter
    (shopmesh_orders_unreadable_orders_total) stays at zero, and one that rises says a release cannot read
    its orders."""
    met: list[None] = []
    app = OrdersApplication(database, catalog, saga, on_unreadable=lambda: met.append(None))
    order_id = await place(app, command())
    await app.list_orders("usr_1", 10, "")
    assert met == []
    await _stored_by_a_newer_release(database, [order_id])
    assert await app.list_orders("usr_1", 10, "") == ([], "")
    with pytest.raises(errors.Unavailable):
        await app.get_order(order_id)
    assert len(met) == 2
