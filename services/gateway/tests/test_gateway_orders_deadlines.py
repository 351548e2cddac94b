"""Each orders method gets the gateway's budget for what it does, not PlaceOrder's 15 s for all.

Degradation audit (the local mesh, orders' process stopped): the gateway gave GetOrder, ListOrders and
CancelOrder PlaceOrder's budget (ORDERS_TIMEOUT_SECONDS, 15 s), so with orders hung the order page and the
order history held the first shoppers of each method 15 s until the breaker opened, and again each half-open
trial, where catalog's, inventory's and notifications' reads give up after 2 s.

The deadlines are read where orders gets them (`context.time_remaining()`), not timed on a clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from shopmesh.common.v1 import money_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import details_of

from .gateway_fakes import shop_with_orders
from .gateway_serving import bearer

# The gateway's defaults: a read's budget (the other services' reads', CATALOG_TIMEOUT_SECONDS...), a
# cancellation's (ORDERS_CANCEL_TIMEOUT_SECONDS: it refunds and releases before it answers) and a checkout's.
READ_BUDGET = 2.0
CANCEL_BUDGET = 5.0
PLACE_BUDGET = 15.0
# gRPC sends a deadline (grpc-timeout) rounded up, to 100 ms units at these lengths: orders may find a 15 s
# budget's call with 15.09 s left.
ROUNDED_UP = 0.1
# The shopper's own deadline, above every budget but PlaceOrder's: the gateway's budget is what ends the call.
SHOPPER_DEADLINE = 10.0


def an_order(order_id: str) -> orders_pb2.Order:
    return orders_pb2.Order(id=order_id, user_id="usr_ada", total=money_pb2.Money(amount_minor=100, currency="USD"))


@dataclass
class OrdersRecordingDeadlines(orders_pb2_grpc.OrdersServiceServicer):
    """Records the time each call had left when it came; GetOrder and ListOrders then hang (orders stopped),
    the others answer."""

    time_left: dict[str, float | None] = field(default_factory=dict)

    def deadline_of(self, method: str) -> float:
        left = self.time_left[method]
        assert left is not None, f"the gateway sent {method} without a deadline"
        return left

    async def _hang(self, method: str, context: Any) -> None:
        self.time_left[method] = context.time_remaining()
        # Until the gateway's deadline cancels the call.
        await asyncio.Event().wait()

    async def GetOrder(self, request: orders_pb2.GetOrderRequest, context: Any) -> orders_pb2.GetOrderResponse:
        await self._hang("GetOrder", context)
        raise AssertionError("unreachable")

    async def ListOrders(self, request: orders_pb2.ListOrdersRequest, context: Any) -> orders_pb2.ListOrdersResponse:
        await self._hang("ListOrders", context)
        raise AssertionError("unreachable")

    async def PlaceOrder(self, request: orders_pb2.PlaceOrderRequest, context: Any) -> orders_pb2.PlaceOrderResponse:
        self.time_left["PlaceOrder"] = context.time_remaining()
        return orders_pb2.PlaceOrderResponse(order=an_order("ord_1"))

    async def CancelOrder(self, request: orders_pb2.CancelOrderRequest, context: Any) -> orders_pb2.CancelOrderResponse:
        self.time_left["CancelOrder"] = context.time_remaining()
        return orders_pb2.CancelOrderResponse(order=an_order(request.order_id))


async def test_a_hung_orders_fails_order_reads_within_a_reads_budget_not_a_checkouts() -> None:
    orders = OrdersRecordingDeadlines()
    async with shop_with_orders(orders) as (shop, _, token):
        answers = {}
        for method, call in {
            "GetOrder": shop.GetOrder(
                shop_pb2.GetOrderRequest(order_id="ord_1"), metadata=bearer(token), timeout=SHOPPER_DEADLINE
            ),
            "ListOrders": shop.ListOrders(
                shop_pb2.ListOrdersRequest(), metadata=bearer(token), timeout=SHOPPER_DEADLINE
            ),
        }.items():
            try:
                await call
            except grpc.aio.AioRpcError as error:
                details = details_of(error)
                answers[method] = (details.code, details.reason)
            else:
                raise AssertionError(f"{method} succeeded; orders hangs")
    gone = (grpc.StatusCode.UNAVAILABLE, errors.DEPENDENCY_UNAVAILABLE)
    assert answers == {"GetOrder": gone, "ListOrders": gone}, orders.time_left
    for method in ("GetOrder", "ListOrders"):
        left = orders.deadline_of(method)
        assert left <= READ_BUDGET + ROUNDED_UP, f"{method} came to orders with {left} s left"


async def test_a_checkout_keeps_its_saga_budget_and_a_cancellation_gets_its_own() -> None:
    orders = OrdersRecordingDeadlines()
    async with shop_with_orders(orders) as (shop, _, token):
        await shop.PlaceOrder(
            shop_pb2.PlaceOrderRequest(currency="USD"),
            metadata=(*bearer(token), ("idempotency-key", "place-1")),
            timeout=2 * PLACE_BUDGET,
        )
        await shop.CancelOrder(
            shop_pb2.CancelOrderRequest(order_id="ord_1", reason="changed my mind"),
            metadata=(*bearer(token), ("idempotency-key", "cancel-1")),
            timeout=2 * PLACE_BUDGET,
        )
    place, cancel = orders.deadline_of("PlaceOrder"), orders.deadline_of("CancelOrder")
    # Lower bounds with room for a loaded test machine's scheduling: each well above the next smaller budget.
    assert CANCEL_BUDGET < place <= PLACE_BUDGET + ROUNDED_UP, f"PlaceOrder came with {place} s left"
    assert READ_BUDGET < cancel <= CANCEL_BUDGET + ROUNDED_UP, f"CancelOrder came with {cancel} s left"
