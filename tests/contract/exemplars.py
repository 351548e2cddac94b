"""A valid request for every RPC, in protobuf text format, with the ids of the running stack filled in.

The contract test mutates these one or two fields at a time, so that generated requests also get past
the first check and reach the domain rules, the database and the calls to other services. A test fails
when an RPC of the contracts has no exemplar here, so a new RPC cannot slip past the test.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

_ADDRESS = 'shipping_address { full_name: "Grace Hopper" street: "1 Compiler Road" city: "Arlington" '
_ADDRESS += 'postal_code: "22201" country: "US" }'
_CARD = 'card { number: "4242424242424242" exp_month: 12 exp_year: 2031 cvv: "123" }'
_SIGN_UP = 'password: "{password}" display_name: "Ada"'
_CART = 'items { product_id: "{product}" quantity: 1 }'
# The total a client showed for _CART and the customer confirmed ({product_price}: the product's price in minor
# units, as the catalog lists it), as every client we ship sends it: the request is placed at that total, and a
# mutation of its items or of the total is refused PRICE_CHANGED (or a violation) before anything is reserved.
_CONFIRMED = 'expected_total { amount_minor: {product_price} currency: "USD" }'

TEMPLATES: dict[str, str] = {
    "shopmesh.gateway.v1.ShopService.Register": 'email: "new-{run}@example.com" ' + _SIGN_UP,
    "shopmesh.gateway.v1.ShopService.Login": 'email: "{email}" password: "{password}"',
    # Signs the caller out: the test gives these calls a user of their own (`signing_out` in
    # test_wire_conventions.py), whose tokens it may revoke.
    "shopmesh.gateway.v1.ShopService.SignOut": "",
    "shopmesh.gateway.v1.ShopService.ListProducts": 'page_size: 5 category: "{category}"',
    "shopmesh.gateway.v1.ShopService.SearchProducts": 'query: "coffee" page_size: 5',
    "shopmesh.gateway.v1.ShopService.GetProductPage": 'product_id: "{product}" max_recommendations: 3',
    "shopmesh.gateway.v1.ShopService.PlaceOrder": f'{_CART} currency: "USD" {_ADDRESS} {_CARD} {_CONFIRMED}',
    "shopmesh.gateway.v1.ShopService.GetOrder": 'order_id: "{order}"',
    "shopmesh.gateway.v1.ShopService.ListOrders": "page_size: 5",
    "shopmesh.gateway.v1.ShopService.CancelOrder": 'order_id: "{order}" reason: "changed my mind"',
    "shopmesh.gateway.v1.ShopService.ListNotifications": "page_size: 5",
    "shopmesh.users.v1.UsersService.Register": 'email: "other-{run}@example.com" ' + _SIGN_UP,
    "shopmesh.users.v1.UsersService.Login": 'email: "{email}" password: "{password}"',
    "shopmesh.users.v1.UsersService.GetUser": 'user_id: "{user}"',
    "shopmesh.users.v1.UsersService.GetJwks": "",
    "shopmesh.users.v1.UsersService.SignOut": 'user_id: "{user}"',
    "shopmesh.users.v1.UsersService.GetTokenCutoff": 'user_id: "{user}"',
    "shopmesh.catalog.v1.CatalogService.ListProducts": 'page_size: 3 page_token: "{page_token}"',
    "shopmesh.catalog.v1.CatalogService.GetProduct": 'product_id: "{product}"',
    "shopmesh.catalog.v1.CatalogService.BatchGetProducts": 'product_ids: ["{product}", "{other_product}"]',
    "shopmesh.catalog.v1.CatalogService.SearchProducts": 'query: "coffee" category: "{category}" page_size: 5',
    "shopmesh.catalog.v1.CatalogService.ListCategories": "",
    "shopmesh.inventory.v1.InventoryService.GetStock": 'product_ids: ["{product}", "{other_product}"]',
    "shopmesh.inventory.v1.InventoryService.Reserve": (
        'order_id: "ord_contract_{run}" items { product_id: "{other_product}" quantity: 1 } ttl { seconds: 60 }'
    ),
    "shopmesh.inventory.v1.InventoryService.CommitReservation": 'reservation_id: "{reservation}"',
    "shopmesh.inventory.v1.InventoryService.ReleaseReservation": 'reservation_id: "{reservation}"',
    "shopmesh.inventory.v1.InventoryService.GetReservation": 'reservation_id: "{reservation}"',
    "shopmesh.inventory.v1.InventoryService.SetStock": 'product_id: "{other_product}" on_hand: 1000',
    "shopmesh.orders.v1.OrdersService.PlaceOrder": (
        f'user_id: "{{user}}" email: "{{email}}" {_CART} currency: "USD" {_ADDRESS} {_CARD} {_CONFIRMED}'
    ),
    "shopmesh.orders.v1.OrdersService.GetOrder": 'order_id: "{order}"',
    "shopmesh.orders.v1.OrdersService.ListOrders": 'user_id: "{user}" page_size: 5',
    "shopmesh.orders.v1.OrdersService.CancelOrder": 'order_id: "{order}" reason: "changed my mind"',
    "shopmesh.payments.v1.PaymentsService.Charge": (
        f'order_id: "ord_contract_{{run}}" amount {{ amount_minor: 1299 currency: "USD" }} {_CARD}'
    ),
    "shopmesh.payments.v1.PaymentsService.Refund": 'payment_id: "{payment}" reason: "returned"',
    "shopmesh.payments.v1.PaymentsService.GetPayment": 'payment_id: "{payment}"',
    # {charged_order}: an order with two payments (a declined card's, then a capture), so the list has pages.
    "shopmesh.payments.v1.PaymentsService.ListPayments": 'order_id: "{charged_order}" page_size: 5',
    "shopmesh.notifications.v1.NotificationsService.ListNotifications": 'user_id: "{user}" page_size: 5',
    "shopmesh.recommendations.v1.RecommendationsService.ListRecommendations": 'product_id: "{product}" max_results: 3',
}


class MissingExemplar(LookupError):
    """An RPC with no valid request in TEMPLATES: says where to add one, as a KeyError of its name would not."""

    def __init__(self, method: MethodDescriptor) -> None:
        super().__init__(f"add an exemplar for {method.full_name} to tests/contract/exemplars.py TEMPLATES")


def exemplar(method: MethodDescriptor, values: Mapping[str, str]) -> Message:
    """The valid request for `method`, with `values` ({product}, {order}, ...) filled in."""
    # A test run for one RPC (-k) reaches here without the check that every RPC has an exemplar.
    if (text := TEMPLATES.get(method.full_name)) is None:
        raise MissingExemplar(method)
    # Placeholders are replaced by name: text format's own braces ("items { ... }") stay as they are.
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text_format.Parse(text, message_factory.GetMessageClass(method.input_type)())
