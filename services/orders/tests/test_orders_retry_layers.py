"""Which layer retries a checkout while inventory is down: orders (its saga's step attempts, each through a
channel retrying Reserve), not also the gateway's channel retrying PlaceOrder on top. Orders' answer,
UNAVAILABLE DEPENDENCY_UNAVAILABLE, goes out with gRPC's "do not retry" pushback (the chassis' rule), so one
checkout is one PlaceOrder at orders however long inventory stays away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel, RetryPolicy, idempotency_metadata
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.idempotency import RequestFingerprint
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process, told_not_to_retry
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import InventoryClient
from shopmesh_orders.domain.ports import PricedProduct
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.transport import DESCRIPTOR, OrdersServicer
from shopmesh_orders.wiring import VERSIONS

from .conftest import FakeCatalog, FakePayments

INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]


class DownInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Inventory's pod gone behind its sidecar: every Reserve answered the proxy's bare UNAVAILABLE."""

    def __init__(self) -> None:
        self.reserve_calls = 0

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> inventory_pb2.ReserveResponse:
        self.reserve_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error or disconnect/reset before headers")
        raise AssertionError("unreachable")


class CountingOrders(OrdersServicer):
    placed = 0

    async def PlaceOrder(self, request: orders_pb2.PlaceOrderRequest, context: Any) -> orders_pb2.PlaceOrderResponse:
        self.placed += 1
        return await super().PlaceOrder(request, context)


@pytest.fixture
async def down_inventory() -> AsyncIterator[tuple[DownInventory, str]]:
    inventory = DownInventory()
    server = grpc.aio.server()
    inventory_pb2_grpc.add_InventoryServiceServicer_to_server(inventory, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield inventory, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_a_checkout_while_inventory_is_down_is_retried_by_orders_alone(
    tmp_path: Path, down_inventory: tuple[DownInventory, str]
) -> None:
    inventory, address = down_inventory
    # A step timeout that leaves every Reserve attempt its answer: the count below is the retries', not the clock's.
    settings = load_settings(
        OrdersSettings,
        grpc_port=0,
        metrics_port=-1,
        data_dir=str(tmp_path),
        step_attempts=2,
        step_backoff_seconds=0.01,
        step_timeout_seconds=5,
    )
    db = Database(settings.resolved_database_url)
    await migrate(db, VERSIONS, metadata)
    catalog = FakeCatalog({"prod_a": PricedProduct("prod_a", "Product A", 1250, "USD")})
    try:
        async with ResilientChannel(
            address, [INVENTORY_SERVICE], ClientOptions(default_timeout_seconds=settings.step_timeout_seconds)
        ) as to_inventory:
            wait = settings.recovery_interval_seconds
            inventory_client = InventoryClient(
                to_inventory.channel, settings.step_timeout_seconds, unknown_state_wait=wait
            )
            saga = SagaDriver(db, inventory_client, FakePayments(), settings)
            servicer = CountingOrders(OrdersApplication(db, catalog, saga), RequestFingerprint(b"k" * 32))
            binding = ServiceBinding(DESCRIPTOR, servicer, orders_pb2_grpc.add_OrdersServiceServicer_to_server)
            async with (
                serve_in_process(settings, [binding]) as orders,
                # The gateway's channel to orders: PlaceOrder is IDEMPOTENT, so it has the retry policy.
                ResilientChannel(orders.address, [DESCRIPTOR], ClientOptions(breaker=None)) as gateway,
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await orders_pb2_grpc.OrdersServiceStub(gateway.channel).PlaceOrder(
                        _checkout(), timeout=15, metadata=idempotency_metadata("key-1", (("x-user-id", "usr_1"),))
                    )
    finally:
        await db.dispose()
    assert details_of(caught.value).reason == errors.DEPENDENCY_UNAVAILABLE
    # One PlaceOrder (the gateway's channel did not send it again), so Reserve is tried by orders' layers only;
    # before, the gateway's 4 attempts each ran the saga's, 20 Reserve calls for one checkout in production.
    assert (servicer.placed, inventory.reserve_calls <= settings.step_attempts * RetryPolicy().max_attempts) == (
        1,
        True,
    ), inventory.reserve_calls
    assert told_not_to_retry(caught.value)


def _checkout() -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        user_id="usr_1",
        items=[orders_pb2.CartItem(product_id="prod_a", quantity=1)],
        currency="USD",
        shipping_address=orders_pb2.ShippingAddress(
            full_name="Ada Lovelace", street="1 Analytical Way", city="London", postal_code="N1 7AA", country="GB"
        ),
        email="ada@example.com",
        card=payments_pb2.PaymentCard(number="4242424242424242", exp_month=12, exp_year=2030, cvv="123"),
    )
