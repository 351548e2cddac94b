"""The OrdersService servicer: protobuf in, domain commands out, and back. No rules here."""

from __future__ import annotations

from typing import Any

from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh_chassis.client import idempotency_key_of
from shopmesh_chassis.idempotency import RequestFingerprint
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.codec import order_to_proto
from shopmesh_orders.domain.model import Address
from shopmesh_orders.domain.validation import Card, CartLine, ExpectedTotal, PlaceOrder

DESCRIPTOR = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]


def _command(request: orders_pb2.PlaceOrderRequest) -> PlaceOrder:
    address = request.shipping_address
    card = request.card if request.HasField("card") else None
    return PlaceOrder(
        user_id=request.user_id,
        items=tuple(CartLine(item.product_id, item.quantity) for item in request.items),
        currency=request.currency,
        address=Address(address.full_name, address.street, address.city, address.postal_code, address.country),
        email=request.email,
        card=Card(card.number, card.exp_month, card.exp_year, card.cvv) if card is not None else None,
        expected_total=(
            ExpectedTotal(request.expected_total.amount_minor, request.expected_total.currency)
            if request.HasField("expected_total")
            else None
        ),
    )


class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    def __init__(self, application: OrdersApplication, fingerprint: RequestFingerprint) -> None:
        self._app = application
        self._fingerprint = fingerprint

    async def PlaceOrder(self, request: orders_pb2.PlaceOrderRequest, context: Any) -> orders_pb2.PlaceOrderResponse:
        order = await self._app.place_order(
            _command(request),
            idempotency_key_of(context),
            # Scoped to the user placing the order, as the contract says, whoever relays the call.
            scope=f"{request.user_id}|PlaceOrder",
            fingerprint=self._fingerprint(request),
        )
        return orders_pb2.PlaceOrderResponse(order=order_to_proto(order))

    async def GetOrder(self, request: orders_pb2.GetOrderRequest, context: Any) -> orders_pb2.GetOrderResponse:
        return orders_pb2.GetOrderResponse(order=order_to_proto(await self._app.get_order(request.order_id)))

    async def ListOrders(self, request: orders_pb2.ListOrdersRequest, context: Any) -> orders_pb2.ListOrdersResponse:
        orders, token = await self._app.list_orders(request.user_id, request.page_size, request.page_token)
        return orders_pb2.ListOrdersResponse(orders=[order_to_proto(o) for o in orders], next_page_token=token)

    async def CancelOrder(self, request: orders_pb2.CancelOrderRequest, context: Any) -> orders_pb2.CancelOrderResponse:
        order = await self._app.cancel_order(
            request.order_id, request.reason, idempotency_key_of(context), self._fingerprint(request)
        )
        return orders_pb2.CancelOrderResponse(order=order_to_proto(order))
