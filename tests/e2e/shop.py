"""A small typed client for the core services, as the end-to-end tests use them."""

from __future__ import annotations

import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import nats
from prometheus_client.parser import text_string_to_metric_families

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import events_pb2, orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import testing
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_metadata
from shopmesh_platform.shoppers import Checkout
from shopmesh_platform.stack import Stack
from shopmesh_platform.traces import load

T = TypeVar("T")

# The services a checkout runs through, and orders' settings that resume an interrupted saga within a
# second or so instead of the production defaults (2 s recovery interval, 10 s leases).
CHECKOUT_SERVICES = ["catalog", "inventory", "payments", "orders"]
FAST_RECOVERY = {"SAGA_LEASE_SECONDS": "2", "RECOVERY_INTERVAL_SECONDS": "0.5", "STEP_BACKOFF_SECONDS": "0.05"}
PASSWORD = "correct horse battery staple"
GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
PROCESSOR_DOWN_CARD = "4000000000000119"
# The gateway's settings that let a module sign up (Register, Login: the password limit) and call (the other
# limit) as often as it likes: each module's calls come from one address (the test's, or the edge's), test
# after test, and runs of the shoppers one after another would leave the next run's sign-ups RESOURCE_EXHAUSTED.
NO_PASSWORD_RATE_LIMIT = {"PASSWORD_RATE_LIMIT_PER_SECOND": "100000", "PASSWORD_RATE_LIMIT_BURST": "100000"}
NO_RATE_LIMITS = {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", **NO_PASSWORD_RATE_LIMIT}
# users' argon2id at its cheapest, for the modules that sign up and log in but test nothing of what a password
# costs (users' and the gateway's own tests do): the same hash and verify code runs, while at the default costs
# (64 MiB x 3 passes) each Register and Login spent up to half a second of CPU on a loaded machine.
CHEAP_PASSWORD_HASHING = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "8",
    "PASSWORD_HASH_PARALLELISM": "1",
}


# What a checkout sends besides its items, the same to orders and to the gateway.
SHIPPING_ADDRESS = orders_pb2.ShippingAddress(
    full_name="Grace Hopper", street="1 Compiler Road", city="Arlington", postal_code="22201", country="US"
)


def card(number: str = GOOD_CARD) -> payments_pb2.PaymentCard:
    return payments_pb2.PaymentCard(number=number, exp_month=12, exp_year=2031, cvv="123")


def place_request(
    user_id: str, product_id: str, quantity: int = 1, card_number: str = GOOD_CARD
) -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        user_id=user_id,
        items=[orders_pb2.CartItem(product_id=product_id, quantity=quantity)],
        currency="USD",
        shipping_address=SHIPPING_ADDRESS,
        email="grace@example.com",
        card=card(card_number),
    )


def order_for(product_id: str, email: str = "") -> shop_pb2.PlaceOrderRequest:
    """One of `product_id` through the gateway, confirmed to the account's e-mail unless `email` names another."""
    return shop_pb2.PlaceOrderRequest(
        items=[orders_pb2.CartItem(product_id=product_id, quantity=1)],
        currency="USD",
        shipping_address=SHIPPING_ADDRESS,
        email=email,
        card=card(),
    )


Metadata = tuple[tuple[str, str], ...]


async def signed_up(gateway: shop_pb2_grpc.ShopServiceStub, name: str) -> tuple[str, str, Metadata]:
    """A new account, through the gateway: (user id, e-mail, authorization metadata)."""
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    await gateway.Register(shop_pb2.RegisterRequest(email=email, password=PASSWORD, display_name=name.title()))
    login = await gateway.Login(shop_pb2.LoginRequest(email=email, password=PASSWORD))
    return login.user_id, email, (("authorization", f"Bearer {login.access_token}"),)


@dataclass
class Shop:
    catalog: catalog_pb2_grpc.CatalogServiceStub
    inventory: inventory_pb2_grpc.InventoryServiceStub
    orders: orders_pb2_grpc.OrdersServiceStub
    payments: payments_pb2_grpc.PaymentsServiceStub
    nats_url: str

    async def set_stock(self, product_id: str, on_hand: int) -> None:
        await self.inventory.SetStock(inventory_pb2.SetStockRequest(product_id=product_id, on_hand=on_hand))

    async def stock(self, product_id: str) -> inventory_pb2.StockLevel:
        response = await self.inventory.GetStock(inventory_pb2.GetStockRequest(product_ids=[product_id]))
        return response.stock_levels[0]

    async def place(self, request: orders_pb2.PlaceOrderRequest, key: str | None = None) -> orders_pb2.Order:
        response = await self.orders.PlaceOrder(
            request, metadata=idempotency_metadata(key or str(uuid.uuid4())), timeout=30
        )
        return response.order

    async def order(self, order_id: str) -> orders_pb2.Order:
        return (await self.orders.GetOrder(orders_pb2.GetOrderRequest(order_id=order_id))).order

    async def payments_for(self, order_id: str) -> list[payments_pb2.Payment]:
        response = await self.payments.ListPayments(payments_pb2.ListPaymentsRequest(order_id=order_id))
        return list(response.payments)

    async def captured(self, order_id: str) -> int:
        return sum(1 for p in await self.payments_for(order_id) if p.state == payments_pb2.PAYMENT_STATE_CAPTURED)

    async def order_events(self) -> list[tuple[str, str]]:
        """(subject, order_id) of every message on the ORDERS stream, in stream order."""
        client = await nats.connect(self.nats_url)
        try:
            js = client.jetstream()
            info = await js.stream_info("ORDERS")
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg("ORDERS", seq)
                event_type = (
                    events_pb2.OrderConfirmed if msg.subject.endswith("confirmed") else events_pb2.OrderCancelled
                )
                out.append((msg.subject, event_type.FromString(msg.data).order_id))
            return out
        finally:
            await client.close()


@asynccontextmanager
async def shop_client(stack: Stack) -> AsyncIterator[Shop]:
    """Clients of the four core services. Under a mesh they go to each service's own socket, around its
    sidecar, as an operator's port-forward to a pod would: for checking what the services hold, not
    for traffic the mesh should see."""
    options = ClientOptions(breaker=None, caller="e2e-tests", default_timeout_seconds=30)
    channels = {
        name: ResilientChannel(stack.app_address(name), [descriptor], options)
        for name, descriptor in (
            ("catalog", catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]),
            ("inventory", inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]),
            ("orders", orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]),
            ("payments", payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]),
        )
    }
    try:
        yield Shop(
            catalog=catalog_pb2_grpc.CatalogServiceStub(channels["catalog"].channel),
            inventory=inventory_pb2_grpc.InventoryServiceStub(channels["inventory"].channel),
            orders=orders_pb2_grpc.OrdersServiceStub(channels["orders"].channel),
            payments=payments_pb2_grpc.PaymentsServiceStub(channels["payments"].channel),
            nats_url=stack.nats_url,
        )
    finally:
        for channel in channels.values():
            await channel.close()


def user() -> str:
    """A fresh user id, so tests sharing one stack never see each other's orders."""
    return f"usr_{uuid.uuid4().hex[:10]}"


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """`testing.eventually` over gRPC calls that may meet a restarting server: UNAVAILABLE counts as
    "not yet", since the client's channel reconnects with backoff, as a real client's would."""

    async def answered() -> T | None:
        try:
            return await probe()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None

    return await testing.eventually(answered, what, timeout=timeout)


def scraped(stack: Stack, service: str, name: str, labels: dict[str, str]) -> float:
    """One sample of `service`'s metrics endpoint, as Prometheus would scrape it (0 when absent)."""
    url = stack.metrics_url(service)
    assert url is not None
    with urllib.request.urlopen(url, timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def spans_of_trace(stack: Stack, trace_id: str) -> list[dict[str, Any]]:
    """Every span the stack's trace sink holds for this trace, whichever process exported it."""
    return [span for trace in load(stack.traces_dir) if trace.trace_id == trace_id for span in trace.spans]


StockLevels = dict[str, tuple[int, int]]


async def stock_levels(shop: Shop, product_ids: Iterable[str]) -> StockLevels:
    """On hand and reserved of each product."""
    answer = await shop.inventory.GetStock(inventory_pb2.GetStockRequest(product_ids=sorted(product_ids)))
    return {level.product_id: (level.on_hand, level.reserved) for level in answer.stock_levels}


def assert_answered_but_for_checkouts(shopping: Any) -> None:
    """`shopping` (the `shoppers` fixture's) met no server fault, and nothing but a checkout was refused: to a
    signed-up shopper, an error elsewhere (a token not sent or lost on its route, a request the API or its
    transcoder rejects, a call that timed out) is a defect, not an answer."""
    assert shopping.faults == {}
    others = {method: codes for method, codes in shopping.answered.items() if method != "PlaceOrder"}
    assert all(codes.keys() == {"OK"} for codes in others.values()), others


async def assert_each_checkout_kept(shop: Shop, before: StockLevels, checkouts: Sequence[Checkout]) -> None:
    """What the shoppers were told of their checkouts is what the shop holds: a good card placed its order, a
    declined one was refused; each shopper has exactly the confirmed orders it was answered with (none placed
    twice, none lost) and a cancelled one per decline; each product's stock went down by what was confirmed,
    with nothing left reserved. No price changes while they shop: each order was accepted at the total its
    shopper saw and sent (never refused PRICE_CHANGED, which would mean the shopper got its total wrong), and
    each confirmed order's total is that one."""
    assert checkouts, "no shopper tried a checkout"
    for checkout in checkouts:
        assert checkout.code == ("FAILED_PRECONDITION" if checkout.declined_card else "OK"), checkout
        assert not checkout.price_changed, checkout
    for user_id in {checkout.user_id for checkout in checkouts}:
        mine = [checkout for checkout in checkouts if checkout.user_id == user_id]
        listed = await shop.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id, page_size=100))
        held = sorted((order.id, orders_pb2.OrderState.Name(order.state)) for order in listed.orders)
        confirmed = [order_id for order_id, state in held if state == "ORDER_STATE_CONFIRMED"]
        cancelled = [order_id for order_id, state in held if state == "ORDER_STATE_CANCELLED"]
        assert confirmed == sorted(c.order_id for c in mine if c.code == "OK"), (user_id, held, mine)
        assert len(cancelled) == sum(c.declined_card for c in mine), (user_id, held, mine)
        assert len(held) == len(mine), ("an order besides those tried", user_id, held, mine)
        totals = {order.id: order.total.amount_minor for order in listed.orders}
        charged = {c.order_id: (totals[c.order_id], c.expected_total_minor) for c in mine if c.code == "OK"}
        assert all(total == expected for total, expected in charged.values()), ("not the total confirmed", charged)
    sold: Counter[str] = Counter()
    for checkout in checkouts:
        sold[checkout.product_id] += checkout.quantity if checkout.code == "OK" else 0
    assert sold.keys() <= before.keys(), "a product bought whose stock was not read before"
    after = await stock_levels(shop, before)
    expected = {p: (on_hand - sold[p], reserved) for p, (on_hand, reserved) in before.items()}
    wrong = {
        p: {"before": before[p], "sold": sold[p], "after": after.get(p)} for p in before if after.get(p) != expected[p]
    }
    assert not wrong, wrong
