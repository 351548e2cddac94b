"""A healthy orders service that reports its own dependencies down must stay reachable through the gateway.

orders' contract: PlaceOrder fails UNAVAILABLE, reason DEPENDENCY_UNAVAILABLE (metadata order_id), when
"the saga is waiting for inventory or payments". That is orders, alive and answering, saying payments is
away: reading an order or the order history needs no payments at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from shopmesh.common.v1 import money_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.breaker import CircuitBreaker
from shopmesh_chassis.grpc_errors import answered_final, details_of

from .gateway_fakes import shop_with_orders
from .gateway_serving import RETRYING_CLIENT, bearer


@dataclass
class OrdersWithPaymentsAway(orders_pb2_grpc.OrdersServiceServicer):
    place_attempts: int = 0

    async def PlaceOrder(self, request: orders_pb2.PlaceOrderRequest, context: Any) -> orders_pb2.PlaceOrderResponse:
        self.place_attempts += 1
        raise errors.Unavailable(
            "order ord_1 is still being processed; retry with the same idempotency key",
            reason=errors.DEPENDENCY_UNAVAILABLE,
            retry_after_seconds=1.0,
            metadata={"order_id": "ord_1"},
        )

    async def ListOrders(self, request: orders_pb2.ListOrdersRequest, context: Any) -> orders_pb2.ListOrdersResponse:
        return orders_pb2.ListOrdersResponse()

    async def CancelOrder(self, request: orders_pb2.CancelOrderRequest, context: Any) -> orders_pb2.CancelOrderResponse:
        raise errors.FailedPrecondition("not cancellable", reason="ORDER_NOT_CANCELLABLE")

    async def GetOrder(self, request: orders_pb2.GetOrderRequest, context: Any) -> orders_pb2.GetOrderResponse:
        return orders_pb2.GetOrderResponse(
            order=orders_pb2.Order(
                id=request.order_id, user_id="usr_ada", total=money_pb2.Money(amount_minor=100, currency="USD")
            )
        )


def breaker_state(breakers: Mapping[str, CircuitBreaker]) -> str:
    return ", ".join(f"{method.rsplit('/', 1)[-1]} {breaker.state.value}" for method, breaker in breakers.items())


async def test_checkouts_failing_while_payments_is_away_do_not_cut_customers_off_their_orders() -> None:
    """Five checkouts during a payments outage, each answered by orders itself (UNAVAILABLE with its own
    ErrorInfo), opened the gateway's breaker of the orders channel: GetOrder, ListOrders and CancelOrder,
    which orders serves perfectly well, were then refused CIRCUIT_OPEN for every customer."""
    orders = OrdersWithPaymentsAway()
    async with shop_with_orders(orders) as (shop, channels, token):
        relayed: list[str | None] = []
        for _ in range(5):
            try:
                await shop.PlaceOrder(
                    shop_pb2.PlaceOrderRequest(currency="USD"),
                    metadata=bearer(token),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as error:
                # orders' own answer is relayed unchanged: the contract's "retry with the same key".
                relayed.append(details_of(error).reason)
        assert relayed == [errors.DEPENDENCY_UNAVAILABLE] * 5
        try:
            await shop.GetOrder(shop_pb2.GetOrderRequest(order_id="ord_1"), metadata=bearer(token), timeout=5)
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            metadata = dict(details.error_info.metadata) if details.error_info else {}
            raise AssertionError(
                f"GetOrder failed {details.code.name} {details.reason} {metadata} "
                f"(orders breakers {breaker_state(channels.orders.breakers)}, "
                f"{orders.place_attempts} PlaceOrder attempts "
                "for 5 checkouts)"
            ) from None


@dataclass
class OrdersAcceptingCancellations(OrdersWithPaymentsAway):
    """CancelOrder answers as orders does while inventory is away: the cancellation accepted, final for the
    call (UNAVAILABLE naming the order, with grpc-retry-pushback-ms -1)."""

    cancel_attempts: int = 0

    async def CancelOrder(self, request: orders_pb2.CancelOrderRequest, context: Any) -> orders_pb2.CancelOrderResponse:
        self.cancel_attempts += 1
        raise errors.Unavailable(
            f"the cancellation of order {request.order_id} is accepted and completes on its own",
            reason=errors.DEPENDENCY_UNAVAILABLE,
            retry_after_seconds=1.0,
            metadata={"order_id": request.order_id},
            final=True,
        )


async def test_an_answer_final_for_the_call_is_relayed_final_so_the_gateways_caller_does_not_retry_it() -> None:
    """orders' accepted cancellation went out with the pushback "do not retry", but the gateway relayed its
    status without it: a client retrying ShopService's idempotent methods on UNAVAILABLE (any chassis-based
    client, RETRYING_CLIENT) sent the cancellation three more times, each reaching orders."""
    orders = OrdersAcceptingCancellations()
    async with shop_with_orders(orders, RETRYING_CLIENT) as (shop, _, token):
        try:
            await shop.CancelOrder(
                shop_pb2.CancelOrderRequest(order_id="ord_1", reason="too slow"),
                metadata=(*bearer(token), ("idempotency-key", "cancel-1")),
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            # Marked final again, so a relay in front of the gateway relays it final too.
            final = answered_final(error)
        else:
            raise AssertionError("CancelOrder succeeded; orders answered UNAVAILABLE")
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        errors.DEPENDENCY_UNAVAILABLE,
        1.0,
    )
    assert details.error_info is not None
    assert details.error_info.metadata["order_id"] == "ord_1"
    assert (orders.cancel_attempts, final) == (1, True)
