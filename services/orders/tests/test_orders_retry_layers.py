"""Which layer retries a checkout while a dependency is down: orders' saga alone, by its step attempts. Not
also the channel under them (gRPC's retry policy would send each attempt up to 4 times: 12 Reserve calls for one
checkout), nor the gateway's channel retrying PlaceOrder on top: orders' answer, UNAVAILABLE
DEPENDENCY_UNAVAILABLE, goes out with gRPC's "do not retry" pushback (the chassis' rule), so one checkout is one
PlaceOrder at orders, and STEP_ATTEMPTS calls of the step, however long the dependency stays away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_metadata
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.idempotency import RequestFingerprint
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process, told_not_to_retry
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import InventoryClient, PaymentsClient
from shopmesh_orders.domain.ports import PricedProduct
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.transport import DESCRIPTOR, OrdersServicer
from shopmesh_orders.wiring import VERSIONS, step_client_options

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import command, place

INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]
PAYMENTS_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
BARE_UNAVAILABLE = "upstream connect error or disconnect/reset before headers"


class DownInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Inventory's pod gone behind its sidecar: every Reserve answered the proxy's bare UNAVAILABLE."""

    def __init__(self) -> None:
        self.reserve_calls = 0

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> inventory_pb2.ReserveResponse:
        self.reserve_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, BARE_UNAVAILABLE)
        raise AssertionError("unreachable")


class DownPayments(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments' pod gone behind its sidecar, as `DownInventory`."""

    def __init__(self) -> None:
        self.charge_calls = 0
        self.list_calls = 0

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        self.charge_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, BARE_UNAVAILABLE)
        raise AssertionError("unreachable")

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Any
    ) -> payments_pb2.ListPaymentsResponse:
        self.list_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, BARE_UNAVAILABLE)
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


async def test_a_checkout_while_inventory_is_down_sends_one_reserve_per_saga_attempt(
    tmp_path: Path, down_inventory: tuple[DownInventory, str]
) -> None:
    inventory, address = down_inventory
    # A step timeout that leaves every Reserve attempt its answer: the count below is the retries', not the clock's.
    settings = load_settings(
        OrdersSettings,
        grpc_port=0,
        metrics_port=-1,
        data_dir=str(tmp_path),
        step_attempts=3,
        step_backoff_seconds=0.01,
        step_timeout_seconds=5,
    )
    db = Database(settings.resolved_database_url)
    await migrate(db, VERSIONS, metadata)
    catalog = FakeCatalog({"prod_a": PricedProduct("prod_a", "Product A", 1250, "USD")})
    try:
        # orders' own channel to inventory, as its wiring builds it.
        async with ResilientChannel(address, [INVENTORY_SERVICE], step_client_options(settings)) as to_inventory:
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
    # One PlaceOrder (the gateway's channel did not send it again), and one Reserve per saga attempt: before,
    # orders' channel sent each attempt up to 4 times (12 Reserve calls by default), and before that the
    # gateway's 4 attempts each ran the saga's too.
    assert (servicer.placed, inventory.reserve_calls) == (1, settings.step_attempts)
    assert told_not_to_retry(caught.value)


async def test_a_checkout_while_payments_is_down_sends_one_charge_and_one_listing_per_saga_attempt(
    database: Database, catalog: FakeCatalog, inventory: FakeInventory, settings: OrdersSettings
) -> None:
    """The saga's payments calls go through a channel of the same options: each Charge attempt, and each attempt
    of compensation's question whether a charge went through (ListPayments), reaches payments once."""
    payments = DownPayments()
    server = grpc.aio.server()
    payments_pb2_grpc.add_PaymentsServiceServicer_to_server(payments, server)
    port = server.add_insecure_port("127.0.0.1:0")
    # Long enough for every call's answer: the counts are the retries', not the clock's.
    settings = settings.model_copy(update={"step_attempts": 3, "step_timeout_seconds": 5.0})
    await server.start()
    try:
        async with ResilientChannel(
            f"127.0.0.1:{port}", [PAYMENTS_SERVICE], step_client_options(settings)
        ) as to_payments:
            wait = settings.recovery_interval_seconds
            client = PaymentsClient(to_payments.channel, settings.step_timeout_seconds, unknown_state_wait=wait)
            app = OrdersApplication(database, catalog, SagaDriver(database, inventory, client, settings))
            # Charged in vain, cancelled as PAYMENT_UNAVAILABLE, then compensation waits for payments to say
            # whether a charge got through.
            with pytest.raises(errors.Unavailable) as caught:
                await place(app, command())
    finally:
        await server.stop(None)
    assert (caught.value.reason, caught.value.metadata["step"]) == (errors.DEPENDENCY_UNAVAILABLE, "COMPENSATE")
    assert (payments.charge_calls, payments.list_calls) == (settings.step_attempts, settings.step_attempts)


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
