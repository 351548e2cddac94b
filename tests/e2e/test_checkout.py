"""The checkout saga end to end: real catalog, inventory, payments and orders processes, a real
nats-server, real SQLite databases, real gRPC — started by the same launcher as `make run`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import select, update

from shopmesh.orders.v1 import orders_pb2
from shopmesh_catalog.store.tables import products
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually
from shopmesh_platform.stack import Stack

from .shop import (
    CHECKOUT_SERVICES,
    DECLINED_CARD,
    FAST_RECOVERY,
    PROCESSOR_DOWN_CARD,
    Shop,
    place_request,
    scraped,
    user,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, services=CHECKOUT_SERVICES, env={"orders": FAST_RECOVERY}) as running:
        yield running


async def test_successful_checkout_confirms_captures_once_and_commits_stock(shop: Shop) -> None:
    await shop.set_stock("prod_chef_knife", 10)
    order = await shop.place(place_request(user(), "prod_chef_knife", 2))
    assert order.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert order.total.amount_minor == 2 * 8900
    assert await shop.captured(order.id) == 1
    stock = await shop.stock("prod_chef_knife")
    assert (stock.on_hand, stock.reserved, stock.available) == (8, 0, 8)
    assert (await shop.order(order.id)).state == orders_pb2.ORDER_STATE_CONFIRMED


async def test_declined_card_cancels_puts_the_stock_back_and_is_counted_by_reason(shop: Shop, stack: Stack) -> None:
    await shop.set_stock("prod_french_press", 5)
    declined_before = await asyncio.to_thread(cancelled_orders, stack, "CARD_DECLINED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.place(place_request(user(), "prod_french_press", 1, DECLINED_CARD))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED")
    assert details.error_info is not None
    order = await shop.order(details.error_info.metadata["order_id"])
    assert order.state == orders_pb2.ORDER_STATE_CANCELLED
    assert order.cancel_reason.code == orders_pb2.CANCEL_REASON_CODE_CARD_DECLINED
    assert await shop.captured(order.id) == 0
    stock = await shop.stock("prod_french_press")
    assert (stock.available, stock.reserved) == (5, 0)
    assert await asyncio.to_thread(cancelled_orders, stack, "CARD_DECLINED") == declined_before + 1


@contextlib.asynccontextmanager
async def priced_in_catalogs_database(stack: Stack, product_id: str, amount_minor: int) -> AsyncIterator[None]:
    """`product_id` at `amount_minor` in catalog's own rows, as data written there by other means than its load
    (which refuses a price below 1) would put it; its price as it was afterwards."""
    url = stack.database_url("catalog")
    assert url is not None
    database = Database(url)
    where = products.c.id == product_id
    try:
        async with database.transaction() as session:
            before = (await session.execute(select(products.c.price_amount_minor).where(where))).scalar_one()
            await session.execute(update(products).where(where).values(price_amount_minor=amount_minor))
        try:
            yield
        finally:
            async with database.transaction() as session:
                await session.execute(update(products).where(where).values(price_amount_minor=before))
    finally:
        await database.dispose()


async def test_a_product_priced_zero_in_catalog_is_refused_and_no_card_is_said_declined(
    shop: Shop, stack: Stack
) -> None:
    """A price of 0 in catalog's database went through orders to the charge, which payments refused for its
    amount: the order was cancelled CARD_DECLINED, "Your card was declined.", its stock reserved and released.
    Orders refuses the product itself now, naming it, before any order is recorded (so no cancellation, no
    event, no e-mail) or anything reserved or charged. Not priced before in this module: orders remembers prices."""
    await shop.set_stock("prod_cast_iron_skillet", 5)
    async with priced_in_catalogs_database(stack, "prod_cast_iron_skillet", 0):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.place(place_request(user(), "prod_cast_iron_skillet", 1))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRODUCT_PRICE_INVALID")
    assert details.error_info is not None
    # No "order_id": no order was recorded, so none is cancelled, published or mailed.
    assert dict(details.error_info.metadata) == {"product_ids": "prod_cast_iron_skillet", "invalid_count": "1"}
    stock = await shop.stock("prod_cast_iron_skillet")
    assert (stock.available, stock.reserved) == (5, 0)


async def test_insufficient_stock_cancels_and_charges_nothing(shop: Shop) -> None:
    await shop.set_stock("prod_camp_stove", 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.place(place_request(user(), "prod_camp_stove", 3))
    details = details_of(caught.value)
    assert details.reason == "INSUFFICIENT_STOCK"
    assert details.error_info is not None
    order_id = details.error_info.metadata["order_id"]
    assert (await shop.order(order_id)).state == orders_pb2.ORDER_STATE_CANCELLED
    assert await shop.payments_for(order_id) == []
    assert (await shop.stock("prod_camp_stove")).available == 1


def charge_attempts(stack: Stack, code: str) -> float:
    labels = {"grpc_method": "Charge", "grpc_code": code}
    return scraped(stack, "payments", "grpc_server_handled_total", labels)


def cancelled_orders(stack: Stack, reason: str) -> float:
    labels = {"state": "CANCELLED", "reason": reason}
    return scraped(stack, "orders", "shopmesh_orders_finished_total", labels)


async def test_payments_unavailable_is_retried_then_compensated(shop: Shop, stack: Stack) -> None:
    await shop.set_stock("prod_headlamp", 4)
    before = await asyncio.to_thread(charge_attempts, stack, "UNAVAILABLE")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.place(place_request(user(), "prod_headlamp", 1, PROCESSOR_DOWN_CARD))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_UNAVAILABLE")
    # gRPC retried each Charge (IDEMPOTENT in the contract) and the saga retried the step.
    assert await asyncio.to_thread(charge_attempts, stack, "UNAVAILABLE") - before > 2
    assert details.error_info is not None
    order_id = details.error_info.metadata["order_id"]
    assert await shop.captured(order_id) == 0
    stock = await shop.stock("prod_headlamp")
    assert (stock.available, stock.reserved) == (4, 0)


async def test_replayed_place_order_returns_the_same_order_and_charges_once(shop: Shop) -> None:
    await shop.set_stock("prod_soy_candle", 10)
    request = place_request(user(), "prod_soy_candle", 1)
    first = await shop.place(request, key="replay-key-1")
    again = await shop.place(request, key="replay-key-1")
    assert again.id == first.id
    assert await shop.captured(first.id) == 1
    assert (await shop.stock("prod_soy_candle")).on_hand == 9


async def test_each_terminal_order_has_exactly_one_event(shop: Shop) -> None:
    await shop.set_stock("prod_wool_throw", 3)
    confirmed = await shop.place(place_request(user(), "prod_wool_throw", 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.place(place_request(user(), "prod_wool_throw", 1, DECLINED_CARD))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    cancelled_id = details_of(caught.value).error_info.metadata["order_id"]  # type: ignore[union-attr]

    async def both_published() -> list[tuple[str, str]] | None:
        events = await shop.order_events()
        return events if {confirmed.id, cancelled_id} <= {order_id for _, order_id in events} else None

    events = await eventually(both_published, "both orders' events on the stream")
    assert [e for e in events if e[1] == confirmed.id] == [("orders.v1.order_confirmed", confirmed.id)]
    assert [e for e in events if e[1] == cancelled_id] == [("orders.v1.order_cancelled", cancelled_id)]


async def test_recently_priced_products_can_be_ordered_while_catalog_is_down(shop: Shop, stack: Stack) -> None:
    """Orders remembers the prices catalog gave it (CATALOG_PRICE_CACHE_SECONDS, 30 s by default): a
    catalog restart does not stop checkouts of products priced moments ago; others fail as UNAVAILABLE."""
    await shop.set_stock("prod_desk_lamp", 5)
    await shop.set_stock("prod_ceramic_vase", 5)
    first = await shop.place(place_request(user(), "prod_desk_lamp", 1))
    await stack.stop_service("catalog")
    try:
        again = await shop.place(place_request(user(), "prod_desk_lamp", 1))
        assert again.state == orders_pb2.ORDER_STATE_CONFIRMED
        assert again.total.amount_minor == first.total.amount_minor
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.place(place_request(user(), "prod_ceramic_vase", 1))
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert (await shop.stock("prod_ceramic_vase")).available == 5  # nothing was reserved for it
    finally:
        await stack.start_service("catalog")
