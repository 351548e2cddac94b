"""A checkout or a cancellation whose saga waits for a hung dependency, through the gateway: orders answers
before the gateway's deadline for it, UNAVAILABLE naming the order, and the saga goes on detached and
finishes once the dependency is back. orders.proto promises PlaceOrder's errors name the order "whenever an
order was recorded"; shop.proto and docs/http-api.md read an UNAVAILABLE that names it as "the cancellation
was accepted" and one without as "it may not have been". Orders' saga waits longer for a step (STEP_ATTEMPTS
x STEP_TIMEOUT_SECONDS) than the gateway waits for orders (ORDERS_TIMEOUT_SECONDS for a checkout,
ORDERS_CANCEL_TIMEOUT_SECONDS for a cancellation): waiting to its own deadline, orders answered too late,
and the client got the gateway's own UNAVAILABLE, which names no order.

A hung dependency is a stopped process (SIGSTOP: a GC pause, a frozen node): its calls neither fail nor answer."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_platform.stack import Stack

from .shop import CHEAP_PASSWORD_HASHING, NO_RATE_LIMITS, eventually, order_for, scraped, signed_up

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The gateway's wait for orders, shorter than its 15 s default only to keep the module short: still longer
# than a step's deadline (5 s), so the saga is in its retries of the hung step when the gateway would give up,
# as with the defaults. Long enough for the calls that set the tests up (a checkout: a tenth of a second).
# A cancellation's wait (ORDERS_CANCEL_TIMEOUT_SECONDS) is left at its default, 5 s: the gateway gives up
# with the hung step's deadline still ahead.
ORDERS_TIMEOUT_SECONDS = 6.0
CLIENT_DEADLINE = 30.0
ENV = {
    "gateway": {
        "ORDERS_TIMEOUT_SECONDS": str(ORDERS_TIMEOUT_SECONDS),
        **NO_RATE_LIMITS,
    },
    "users": CHEAP_PASSWORD_HASHING,
}
SERVICES = ["users", "catalog", "inventory", "payments", "orders", "gateway"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, services=SERVICES, env=ENV) as running:
        yield running


@contextmanager
def hung(stack: Stack, service: str) -> Iterator[None]:
    """`service` stopped (SIGSTOP) inside, running again after, however the block ends."""
    pid = stack.pid(service)
    assert pid is not None, f"{service} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def keyed(auth: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return (*auth, ("idempotency-key", str(uuid.uuid4())))


def naming_the_order(details: ErrorDetails) -> str:
    """The order an UNAVAILABLE DEPENDENCY_UNAVAILABLE of orders names (what its domain and metadata say when
    it is the gateway's own instead)."""
    info = details.error_info
    assert info is not None
    assert (details.code, info.reason) == (grpc.StatusCode.UNAVAILABLE, errors.DEPENDENCY_UNAVAILABLE)
    assert "order_id" in info.metadata, f"no order named: {info.domain} {dict(info.metadata)}"
    return str(info.metadata["order_id"])


async def started(stack: Stack, method: str) -> float:
    """The calls of `method` orders has begun handling: one per client call when the gateway's channel does
    not retry orders' answer (a DEPENDENCY_UNAVAILABLE carries the chassis' "do not retry" pushback), which
    would drive the waiting saga again, or meet its driver, only to answer the same."""
    labels = {"grpc_method": method}
    return await asyncio.to_thread(scraped, stack, "orders", "grpc_server_started_total", labels)


async def state_of(gateway: Any, auth: tuple[tuple[str, str], ...], order_id: str) -> orders_pb2.Order:
    answer = await gateway.GetOrder(shop_pb2.GetOrderRequest(order_id=order_id), metadata=auth)
    order: orders_pb2.Order = answer.order
    return order


async def test_a_checkout_waiting_for_a_hung_inventory_names_its_order_and_completes_once_it_is_back(
    stack: Stack, gateway: Any
) -> None:
    _, _, auth = await signed_up(gateway, "waits")
    before = await started(stack, "PlaceOrder")
    with hung(stack, "inventory"), pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.PlaceOrder(order_for("prod_chef_knife"), metadata=keyed(auth), timeout=CLIENT_DEADLINE)
    assert await started(stack, "PlaceOrder") == before + 1
    details = details_of(caught.value)
    order_id = naming_the_order(details)
    assert details.error_info is not None
    assert details.error_info.metadata["step"] == "RESERVE"
    listed = await gateway.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth)
    assert [order.id for order in listed.orders] == [order_id]

    async def confirmed() -> orders_pb2.Order | None:
        order = await state_of(gateway, auth, order_id)
        return order if order.state != orders_pb2.ORDER_STATE_PENDING else None

    # The drive that holds the card goes on detached, and finishes the checkout once inventory answers.
    order = await eventually(confirmed, "the checkout finished", timeout=60)
    assert orders_pb2.OrderState.Name(order.state) == "ORDER_STATE_CONFIRMED"


async def test_a_cancellation_waiting_for_a_hung_payments_is_accepted_naming_its_order_and_completes(
    stack: Stack, gateway: Any
) -> None:
    _, _, auth = await signed_up(gateway, "waits")
    placed = await gateway.PlaceOrder(order_for("prod_cutting_board"), metadata=keyed(auth), timeout=CLIENT_DEADLINE)
    order_id = placed.order.id
    before = await started(stack, "CancelOrder")
    with hung(stack, "payments"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.CancelOrder(
                shop_pb2.CancelOrderRequest(order_id=order_id), metadata=keyed(auth), timeout=CLIENT_DEADLINE
            )
        waiting = await state_of(gateway, auth, order_id)
    assert naming_the_order(details_of(caught.value)) == order_id
    assert await started(stack, "CancelOrder") == before + 1
    assert waiting.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert waiting.HasField("pending_cancellation")

    async def cancelled() -> orders_pb2.Order | None:
        order = await state_of(gateway, auth, order_id)
        return order if order.state == orders_pb2.ORDER_STATE_CANCELLED else None

    order = await eventually(cancelled, "the cancellation completed", timeout=60)
    assert order.cancel_reason.code == orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED
