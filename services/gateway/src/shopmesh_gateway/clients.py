"""gRPC adapters for the internal services: deadlines, the caller's identity, and failed calls relayed
(the chassis' `grpc_errors.relaying`).

What the gateway answers when an internal service's call fails: its error reaches the client with its status
code and details unchanged (its ErrorInfo domain says where it comes from). A failure that no internal service
reported — the connection failed, the deadline passed, or the gateway's own circuit breaker refused the call —
is the gateway's: UNAVAILABLE, reason DEPENDENCY_UNAVAILABLE, domain "shopmesh.gateway", with RetryInfo.

The identity is always given explicitly (`x-user-id` = the verified token subject): the chassis' client
interceptor would otherwise take it from the inbound call, whose metadata the client wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import timestamp_pb2

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis import call_context, errors
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.grpc_errors import dependency_unavailable, details_of, relaying

log = logging.getLogger("shopmesh.gateway")
Metadata = tuple[tuple[str, str], ...]


def user_metadata(user_id: str) -> Metadata:
    """The outgoing call's metadata naming the user it is made for (the guard has verified them), which
    per-user services check the request against."""
    return ((call_context.USER_ID, user_id),)


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


class UsersClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = users_pb2_grpc.UsersServiceStub(channel)
        self._timeout = timeout

    async def register(self, request: users_pb2.RegisterRequest) -> users_pb2.User:
        with relaying("users"):
            response = await self._stub.Register(request, timeout=self._timeout)
        return response.user

    async def login(self, request: users_pb2.LoginRequest) -> users_pb2.LoginResponse:
        with relaying("users"):
            return await self._stub.Login(request, timeout=self._timeout)

    async def email_of(self, user_id: str) -> str:
        with relaying("users"):
            response = await self._stub.GetUser(
                users_pb2.GetUserRequest(user_id=user_id), timeout=self._timeout, metadata=user_metadata(user_id)
            )
        return response.user.email

    async def sign_out(self, user_id: str) -> float:
        """Revoke the user's tokens issued so far; the new cutoff (seconds since the epoch). UNAVAILABLE when
        users' pod is of a release before SignOut (users_0004's), as when users does not answer: nothing is
        revoked, and another pod, or the rollout's end, takes it."""
        with relaying("users", method_is_new=True):
            response = await self._stub.SignOut(
                users_pb2.SignOutRequest(user_id=user_id), timeout=self._timeout, metadata=user_metadata(user_id)
            )
        return _seconds(response.tokens_valid_after)

    async def token_cutoff(self, user_id: str) -> float | None:
        """The user's sign-out cutoff (None: never signed out); UNAVAILABLE for any failure, as for the key set:
        whatever went wrong, the gateway has no cutoff now (sign_outs.TokenCutoffs decides what that means)."""
        try:
            response = await self._stub.GetTokenCutoff(
                users_pb2.GetTokenCutoffRequest(user_id=user_id), timeout=self._timeout, metadata=user_metadata(user_id)
            )
        except grpc.aio.AioRpcError as error:
            raise dependency_unavailable("users", error) from None
        if not response.HasField("tokens_valid_after"):
            return None
        return _seconds(response.tokens_valid_after)

    async def jwks(self) -> Sequence[Mapping[str, str]]:
        try:
            response = await self._stub.GetJwks(users_pb2.GetJwksRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError:
            # The contract's only error is UNAVAILABLE; whatever went wrong, there is no key set now.
            raise dependency_unavailable("users") from None
        # Proto3 sends absent members as "": leave them out, as a JWK would.
        members = ("kid", "kty", "crv", "alg", "x", "use")
        return [{m: getattr(k, m) for m in members if getattr(k, m)} for k in response.keys]


class CatalogClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout

    async def get_product(self, product_id: str) -> catalog_pb2.Product:
        with relaying("catalog"):
            response = await self._stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id), timeout=self._timeout
            )
        return response.product

    async def products_in_category(self, category: str, limit: int) -> list[catalog_pb2.Product]:
        """For the product page's fallback recommendations, which are optional: every failure is a domain
        error (as with RecommendationsClient), a status without details too."""
        try:
            with relaying("catalog"):
                response = await self._stub.ListProducts(
                    catalog_pb2.ListProductsRequest(category=category, page_size=limit), timeout=self._timeout
                )
        except grpc.aio.AioRpcError as error:
            raise dependency_unavailable("catalog", error) from error
        return list(response.products)

    async def list_products(self, request: catalog_pb2.ListProductsRequest) -> catalog_pb2.ListProductsResponse:
        with relaying("catalog"):
            return await self._stub.ListProducts(request, timeout=self._timeout)

    async def search_products(self, request: catalog_pb2.SearchProductsRequest) -> catalog_pb2.SearchProductsResponse:
        with relaying("catalog"):
            return await self._stub.SearchProducts(request, timeout=self._timeout)


class InventoryClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        self._timeout = timeout

    async def available(self, product_id: str) -> int:
        with relaying("inventory"):
            response = await self._stub.GetStock(
                inventory_pb2.GetStockRequest(product_ids=[product_id]), timeout=self._timeout
            )
        # inventory.proto: one level per requested id. A level for another product (or none) is a broken answer:
        # shown, it would be another product's stock as this one's, so the page treats it as inventory trouble.
        for level in response.stock_levels:
            if level.product_id == product_id:
                return max(0, level.available)
        log.warning(
            "inventory answered no stock level for the product asked for",
            extra={"product_id": product_id, "answered_for": [level.product_id for level in response.stock_levels]},
        )
        raise dependency_unavailable("inventory")


class RecommendationsClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = recommendations_pb2_grpc.RecommendationsServiceStub(channel)

    async def for_product(
        self, product_id: str, limit: int, timeout: float
    ) -> list[recommendations_pb2.RecommendedProduct]:
        """Raises TimeoutError past `timeout` (or the share of the inbound deadline the caller gave), a domain
        error for any other failure."""
        try:
            response = await self._stub.ListRecommendations(
                recommendations_pb2.ListRecommendationsRequest(product_id=product_id, max_results=limit),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                # Its deadline was the budget or the page's share of the client's deadline, whichever came first.
                raise TimeoutError("recommendations did not answer within their deadline") from error
            # Optional, so every failure means the fallback, a status without details too (an Envoy fault
            # abort, a mesh's RBAC denial, a peer without the method), which `relaying` leaves as it is for
            # the services a page cannot do without. Never sent to the client: its message is for the log,
            # so it names the status and reason recommendations (or the channel's breaker) answered.
            details = details_of(error)
            answered = " ".join(filter(None, (error.code().name, details.reason)))
            raise errors.Unavailable(
                f"recommendations answered {answered}: {error.details() or ''}",
                reason=errors.DEPENDENCY_UNAVAILABLE,
                metadata={"dependency": "recommendations"},
            ) from error
        return list(response.recommendations)


class OrdersClient:
    """Each method under its own budget (settings.py says why): a checkout's, a read's, a cancellation's."""

    def __init__(
        self, channel: grpc.aio.Channel, *, place_timeout: float, read_timeout: float, cancel_timeout: float
    ) -> None:
        self._stub = orders_pb2_grpc.OrdersServiceStub(channel)
        self._place_timeout = place_timeout
        self._read_timeout = read_timeout
        self._cancel_timeout = cancel_timeout

    async def place(self, request: orders_pb2.PlaceOrderRequest, idempotency_key: str) -> orders_pb2.Order:
        with relaying("orders"):
            response = await self._stub.PlaceOrder(
                request,
                timeout=self._place_timeout,
                metadata=idempotency_metadata(idempotency_key, user_metadata(request.user_id)),
            )
        return response.order

    async def get(self, user_id: str, order_id: str) -> orders_pb2.Order:
        with relaying("orders"):
            response = await self._stub.GetOrder(
                orders_pb2.GetOrderRequest(order_id=order_id),
                timeout=self._read_timeout,
                metadata=user_metadata(user_id),
            )
        return response.order

    async def list(self, request: orders_pb2.ListOrdersRequest) -> orders_pb2.ListOrdersResponse:
        with relaying("orders"):
            return await self._stub.ListOrders(
                request, timeout=self._read_timeout, metadata=user_metadata(request.user_id)
            )

    async def cancel(
        self, user_id: str, request: orders_pb2.CancelOrderRequest, idempotency_key: str
    ) -> orders_pb2.Order:
        with relaying("orders"):
            response = await self._stub.CancelOrder(
                request,
                timeout=self._cancel_timeout,
                metadata=idempotency_metadata(idempotency_key, user_metadata(user_id)),
            )
        return response.order


class NotificationsClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = notifications_pb2_grpc.NotificationsServiceStub(channel)
        self._timeout = timeout

    async def list(
        self, request: notifications_pb2.ListNotificationsRequest
    ) -> notifications_pb2.ListNotificationsResponse:
        with relaying("notifications"):
            return await self._stub.ListNotifications(
                request, timeout=self._timeout, metadata=user_metadata(request.user_id)
            )
