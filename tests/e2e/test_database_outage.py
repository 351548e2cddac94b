"""PostgreSQL going away under the running checkout services, as when its pod restarts or fails over on
Kubernetes: a restart between calls costs no call (each pool checks a connection before handing it
out); while the database is down every call answers UNAVAILABLE with the contracts' details, never
INTERNAL, and no process dies; once it is back the services heal by themselves, and the outbox relay,
which holds a connection of its own, publishes again. Sagas in flight when it stops end terminal with
money and stock conserved."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.postgres import PostgresServer, postgres_server
from shopmesh_platform.stack import Stack, postgres_env

from .shop import CHECKOUT_SERVICES, FAST_RECOVERY, Shop, place_request, user

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRODUCT = "prod_chef_knife"


@pytest.fixture(scope="module")
def database() -> Iterator[PostgresServer]:
    # Its own server, not the session's: this module stops and starts it.
    with postgres_server() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path, database: PostgresServer) -> AsyncIterator[Stack]:
    env = postgres_env(database, CHECKOUT_SERVICES)
    env["orders"] |= FAST_RECOVERY
    async with Stack.for_tests(module_dir, services=CHECKOUT_SERVICES, env=env) as running:
        yield running


Call = Callable[[], Awaitable[Any]]


@pytest_asyncio.fixture(loop_scope="module")
async def each_service(stack: Stack) -> AsyncIterator[dict[str, Call]]:
    """One call per service that reaches its database, over plain channels: no retries that could hide a
    failed attempt."""
    channels = {name: grpc.aio.insecure_channel(stack.address(name)) for name in CHECKOUT_SERVICES}
    catalog = catalog_pb2_grpc.CatalogServiceStub(channels["catalog"])
    inventory = inventory_pb2_grpc.InventoryServiceStub(channels["inventory"])
    payments = payments_pb2_grpc.PaymentsServiceStub(channels["payments"])
    orders = orders_pb2_grpc.OrdersServiceStub(channels["orders"])
    customer = user()
    try:
        yield {
            "catalog.GetProduct": lambda: catalog.GetProduct(catalog_pb2.GetProductRequest(product_id=PRODUCT)),
            "inventory.SetStock": lambda: inventory.SetStock(
                inventory_pb2.SetStockRequest(product_id=PRODUCT, on_hand=1000)
            ),
            "payments.ListPayments": lambda: payments.ListPayments(
                payments_pb2.ListPaymentsRequest(order_id="ord_unknown")
            ),
            "orders.ListOrders": lambda: orders.ListOrders(
                orders_pb2.ListOrdersRequest(user_id=customer), metadata=(("x-user-id", customer),)
            ),
            "orders.PlaceOrder": lambda: orders.PlaceOrder(
                place_request(customer, PRODUCT), metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30
            ),
        }
    finally:
        for channel in channels.values():
            await channel.close()


async def test_a_database_restart_between_calls_costs_no_call(
    each_service: dict[str, Call], database: PostgresServer
) -> None:
    for call in each_service.values():
        await call()  # every pool holds a connection now
    database.stop()
    database.start()
    for name, call in each_service.items():
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            pytest.fail(f"{name} after the restart: {error.code().name} {error.details()}")


async def test_while_the_database_is_down_calls_answer_unavailable_and_the_services_heal_after(
    stack: Stack, each_service: dict[str, Call], database: PostgresServer, shop: Shop
) -> None:
    before = await shop.place(place_request(user(), PRODUCT))
    database.stop()
    try:
        for name, call in each_service.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            error = caught.value
            details = details_of(error)
            assert (error.code(), details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"), name
            assert details.retry_delay_seconds, f"{name}: UNAVAILABLE without RetryInfo"
            assert not error.initial_metadata(), f"{name}: not trailers-only"
    finally:
        database.start()
    for name in CHECKOUT_SERVICES:
        assert stack.is_running(name), f"{name} exited during the outage"

    async def placed() -> orders_pb2.Order | None:
        try:
            return await shop.place(place_request(user(), PRODUCT))
        except grpc.aio.AioRpcError:
            return None  # a pool may still be finding out that the database is back

    after = await eventually(placed, "an order placed once the database is back")
    assert (before.state, after.state) == (orders_pb2.ORDER_STATE_CONFIRMED, orders_pb2.ORDER_STATE_CONFIRMED)

    async def both_published() -> bool:
        published = {order_id for _, order_id in await shop.order_events()}
        return {before.id, after.id} <= published

    await eventually(both_published, "OrderConfirmed of the orders from before and after the outage on NATS")


async def test_sagas_in_flight_when_the_database_stops_end_terminal_with_money_and_stock_conserved(
    database: PostgresServer, shop: Shop
) -> None:
    """Checkouts before, during and after the moment all four databases vanish (one server, as a shared cluster would
    have it): each order that exists ends CONFIRMED with one capture or CANCELLED with none, no stock is
    lost or left reserved, and each terminal order has its one event."""
    product, stock = "prod_headlamp", 100
    await shop.set_stock(product, stock)

    async def checkout(customer: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # some meet the outage; the orders tell
            await shop.place(place_request(customer, product))

    async def pending(wave: list[str]) -> list[str]:
        listed = await asyncio.gather(
            *(shop.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=customer)) for customer in wave)
        )
        return [o.id for answer in listed for o in answer.orders if o.state == orders_pb2.ORDER_STATE_PENDING]

    # Three waves: the first finishes, the second is in flight when the database stops, the third starts
    # while it is away (the client's retries may carry it past the restart).
    first = [user() for _ in range(4)]
    finished = await asyncio.gather(*(shop.place(place_request(customer, product)) for customer in first))
    assert {order.state for order in finished} == {orders_pb2.ORDER_STATE_CONFIRMED}, "the first wave, before"

    # The database stops as soon as a second-wave order is seen half-way (PENDING: recorded, its saga not
    # done), not after a guessed delay, which on a loaded machine came before the wave began or after it
    # ended. A wave that ends between two looks is followed by another. The bound only stops a hang.
    # The task group awaits every checkout on the way out; on any other exit (the bound, a failed look) it
    # cancels and awaits them, so none runs on into the next test. The database is back on every path.
    second: list[str] = []
    in_flight: list[str] = []
    stopped = False
    try:
        async with asyncio.TaskGroup() as placing:
            async with asyncio.timeout(60):
                while not in_flight:
                    wave = [user() for _ in range(8)]
                    second += wave
                    tasks = [placing.create_task(checkout(customer)) for customer in wave]
                    while not in_flight and not all(task.done() for task in tasks):
                        in_flight = await pending(wave)
            database.stop()
            stopped = True
            third = [user() for _ in range(4)]
            for customer in third:
                placing.create_task(checkout(customer))
            await asyncio.sleep(2)  # how long the outage lasts
            database.start()
            stopped = False
    finally:
        if stopped:
            database.start()
    customers = first + second + third

    async def terminal_orders(customer: str) -> tuple[list[orders_pb2.Order]] | None:
        try:
            listed = await shop.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=customer))
        except grpc.aio.AioRpcError:
            return None
        if any(order.state == orders_pb2.ORDER_STATE_PENDING for order in listed.orders):
            return None
        return (list(listed.orders),)  # none at all when the checkout never got to create one

    settled: list[orders_pb2.Order] = []
    for customer in customers:
        (found,) = await eventually(lambda c=customer: terminal_orders(c), f"the orders of {customer} terminal")
        settled += found
    assert settled, "no checkout got as far as an order"
    assert set(in_flight) <= {o.id for o in settled}, "an order in flight when the database stopped"
    confirmed = [o for o in settled if o.state == orders_pb2.ORDER_STATE_CONFIRMED]
    for order in settled:
        assert await shop.captured(order.id) == (1 if order in confirmed else 0), order
    level = await shop.stock(product)
    assert (level.on_hand, level.reserved) == (stock - len(confirmed), 0)

    async def one_event_each() -> bool:
        events = [order_id for _, order_id in await shop.order_events()]
        return all(events.count(order.id) == 1 for order in settled)

    await eventually(one_event_each, "one event for each order")
