"""The ShopService servicer: shop requests to internal requests and back, behind the guard."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.notifications.v1 import notifications_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.client import IDEMPOTENCY_KEY, idempotency_key_of
from shopmesh_chassis.password_checks import login_password_hashes
from shopmesh_gateway.application import Checkout, ProductPages, idempotency_key
from shopmesh_gateway.clients import CatalogClient, NotificationsClient, OrdersClient, UsersClient
from shopmesh_gateway.guard import Context, Guard, hashes_password, protected, public

DESCRIPTOR = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]

T = TypeVar("T")


def _register_hashes(request: shop_pb2.RegisterRequest) -> int:
    """A new password is hashed once, normalized."""
    return 1


def _login_hashes(request: shop_pb2.LoginRequest) -> int:
    """Two when users checks the password as sent too (NFKC changes it), for a known e-mail or not."""
    return login_password_hashes(request.password)


class ShopServicer(shop_pb2_grpc.ShopServiceServicer):
    def __init__(
        self,
        guard: Guard,
        *,
        users: UsersClient,
        catalog: CatalogClient,
        orders: OrdersClient,
        notifications: NotificationsClient,
        product_pages: ProductPages,
        checkout: Checkout,
    ) -> None:
        self.guard = guard
        self._users = users
        self._catalog = catalog
        self._orders = orders
        self._notifications = notifications
        self._product_pages = product_pages
        self._checkout = checkout

    @hashes_password(_register_hashes)
    async def Register(self, request: shop_pb2.RegisterRequest, context: Context) -> shop_pb2.RegisterResponse:
        user = await self._users.register(
            users_pb2.RegisterRequest(email=request.email, password=request.password, display_name=request.display_name)
        )
        return shop_pb2.RegisterResponse(user=user)

    @hashes_password(_login_hashes)
    async def Login(self, request: shop_pb2.LoginRequest, context: Context) -> shop_pb2.LoginResponse:
        login = await self._users.login(users_pb2.LoginRequest(email=request.email, password=request.password))
        return shop_pb2.LoginResponse(
            access_token=login.access_token,
            token_type=login.token_type,
            expires_at=login.expires_at,
            user_id=login.user_id,
        )

    @protected
    async def SignOut(
        self, request: shop_pb2.SignOutRequest, context: Context, user_id: str
    ) -> shop_pb2.SignOutResponse:
        cutoff = await self._users.sign_out(user_id)
        # This replica refuses the user's older tokens from now on; the others once their cached cutoff ages out.
        if self.guard.cutoffs is not None:
            self.guard.cutoffs.record(user_id, cutoff)
        response = shop_pb2.SignOutResponse()
        response.tokens_valid_after.FromNanoseconds(round(cutoff * 1e6) * 1000)
        return response

    @public
    async def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: Context
    ) -> shop_pb2.ListProductsResponse:
        page = await self._catalog.list_products(
            catalog_pb2.ListProductsRequest(
                page_size=request.page_size, page_token=request.page_token, category=request.category
            )
        )
        return shop_pb2.ListProductsResponse(products=page.products, next_page_token=page.next_page_token)

    @public
    async def SearchProducts(
        self, request: shop_pb2.SearchProductsRequest, context: Context
    ) -> shop_pb2.SearchProductsResponse:
        page = await self._catalog.search_products(
            catalog_pb2.SearchProductsRequest(
                query=request.query,
                category=request.category,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return shop_pb2.SearchProductsResponse(products=page.products, next_page_token=page.next_page_token)

    @public
    async def GetProductPage(
        self, request: shop_pb2.GetProductPageRequest, context: Context
    ) -> shop_pb2.GetProductPageResponse:
        page = await self._product_pages.page(request.product_id, request.max_recommendations)
        return shop_pb2.GetProductPageResponse(
            product=page.product,
            availability=shop_pb2.ProductAvailability(in_stock=page.available > 0, available_quantity=page.available),
            recommendations=page.recommendations,
            recommendations_degraded=page.degraded,
        )

    @protected
    async def PlaceOrder(
        self, request: shop_pb2.PlaceOrderRequest, context: Context, user_id: str
    ) -> shop_pb2.PlaceOrderResponse:
        key = idempotency_key(idempotency_key_of(context))
        order = await self._returning_key(context, key, self._checkout.place(user_id, request, key))
        return shop_pb2.PlaceOrderResponse(order=order)

    @protected
    async def GetOrder(
        self, request: shop_pb2.GetOrderRequest, context: Context, user_id: str
    ) -> shop_pb2.GetOrderResponse:
        return shop_pb2.GetOrderResponse(order=await self._orders.get(user_id, request.order_id))

    @protected
    async def ListOrders(
        self, request: shop_pb2.ListOrdersRequest, context: Context, user_id: str
    ) -> shop_pb2.ListOrdersResponse:
        page = await self._orders.list(
            orders_pb2.ListOrdersRequest(user_id=user_id, page_size=request.page_size, page_token=request.page_token)
        )
        return shop_pb2.ListOrdersResponse(orders=page.orders, next_page_token=page.next_page_token)

    @protected
    async def CancelOrder(
        self, request: shop_pb2.CancelOrderRequest, context: Context, user_id: str
    ) -> shop_pb2.CancelOrderResponse:
        key = idempotency_key(idempotency_key_of(context))
        cancel = orders_pb2.CancelOrderRequest(order_id=request.order_id, reason=request.reason)
        order = await self._returning_key(context, key, self._orders.cancel(user_id, cancel, key))
        return shop_pb2.CancelOrderResponse(order=order)

    @protected
    async def ListNotifications(
        self, request: shop_pb2.ListNotificationsRequest, context: Context, user_id: str
    ) -> shop_pb2.ListNotificationsResponse:
        page = await self._notifications.list(
            notifications_pb2.ListNotificationsRequest(
                user_id=user_id, page_size=request.page_size, page_token=request.page_token
            )
        )
        return shop_pb2.ListNotificationsResponse(
            notifications=page.notifications, next_page_token=page.next_page_token
        )

    async def _returning_key(self, context: Context, key: str, operation: Awaitable[T]) -> T:
        """Runs `operation` and sends the idempotency key used in the response trailers, on success and on
        error, so that the client can retry the same operation after any failure; on success also in the
        response headers, the only place an HTTP/JSON client gets it (the transcoding edge turns no trailer
        of a successful call into a header)."""
        # Set first: the chassis sends handler-set trailers with an error status as well.
        context.set_trailing_metadata(((IDEMPOTENCY_KEY, key),))
        result = await operation
        # Only now: headers sent before an error would make it no longer trailers-only.
        await context.send_initial_metadata(((IDEMPOTENCY_KEY, key),))
        return result
