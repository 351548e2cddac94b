"""OrdersService over a real gRPC socket: statuses, details, metadata — the contract as clients see it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import unicodedata
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import grpc
import pytest

from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_metadata
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.idempotency import RequestFingerprint
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import CachedCatalog
from shopmesh_orders.domain.ports import Catalog, DependencyDown, PricedProduct
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.transport import DESCRIPTOR, OrdersServicer
from shopmesh_orders.wiring import VERSIONS

from .conftest import FakeCatalog, FakeInventory, FakePayments


@contextlib.asynccontextmanager
async def serving_orders(
    settings: OrdersSettings,
    database: Database,
    catalog: Catalog,
    inventory: FakeInventory,
    payments: FakePayments,
    servicer: type[OrdersServicer] = OrdersServicer,
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    """Orders' service over a real socket, on these ports to its neighbours."""
    app = OrdersApplication(database, catalog, SagaDriver(database, inventory, payments, settings))
    binding = ServiceBinding(
        DESCRIPTOR,
        servicer(app, RequestFingerprint(b"k" * 32)),
        orders_pb2_grpc.add_OrdersServiceServicer_to_server,
    )
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None, caller="gateway")) as channel,
    ):
        yield orders_pb2_grpc.OrdersServiceStub(channel.channel)


@pytest.fixture
async def stub(
    settings: OrdersSettings, database: Database, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    async with serving_orders(settings, database, catalog, inventory, payments) as served:
        yield served


def request(card: str = "4242424242424242", user_id: str = "usr_1") -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        user_id=user_id,
        items=[orders_pb2.CartItem(product_id="prod_a", quantity=1)],
        currency="USD",
        shipping_address=orders_pb2.ShippingAddress(
            full_name="Ada Lovelace", street="1 Analytical Way", city="London", postal_code="N1 7AA", country="GB"
        ),
        email="ada@example.com",
        card=payments_pb2.PaymentCard(number=card, exp_month=12, exp_year=2030, cvv="123"),
    )


async def test_place_and_get_order(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert placed.order.total.amount_minor == 1250
    got = await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.order.id))
    assert got.order == placed.order


async def test_place_order_without_idempotency_key_is_invalid(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(request())
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_MISSING")


async def test_invalid_request_lists_field_violations(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    bad = request()
    bad.items[0].quantity = 0
    bad.currency = "dollars"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(bad, metadata=idempotency_metadata("k1"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in details.field_violations) == ["currency", "items[0].quantity"]


async def test_a_country_code_not_assigned_is_invalid_with_its_field_violation(
    stub: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    bad = request()
    bad.shipping_address.country = "ZZ"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(bad, metadata=idempotency_metadata("k1"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("shipping_address.country", "INVALID_FORMAT")]


async def test_a_bad_card_number_on_an_expired_card_names_both(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    """orders.proto, PlaceOrder: INVALID_CARD_NUMBER or CARD_EXPIRED "when that is all that is wrong", as
    payments' Charge answers it (else VALIDATION_FAILED), with a violation per invalid field."""
    bad = request("4242424242424241")
    bad.card.exp_month, bad.card.exp_year = 1, 2020
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(bad, metadata=idempotency_metadata("k1"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert {v.field: v.reason for v in details.field_violations} == {
        "card.number": "INVALID_CARD_NUMBER",
        "card.exp_year": "CARD_EXPIRED",
    }


async def test_a_retry_with_the_email_in_the_letter_case_first_sent_replays_the_order_and_another_case_is_refused(
    stub: orders_pb2_grpc.OrdersServiceStub, payments: FakePayments
) -> None:
    # Why the gateway passes on the account's address in the case the client typed it: the key's request is
    # compared as sent, letter case included, and gateways of earlier releases sent the client's `email`.
    typed = request()
    typed.email = "Ada@Example.com"
    placed = await stub.PlaceOrder(typed, metadata=idempotency_metadata("k1"))
    again = await stub.PlaceOrder(typed, metadata=idempotency_metadata("k1"))
    assert (again.order.id, again.order.email, payments.charge_calls) == (placed.order.id, "Ada@Example.com", 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    assert details_of(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


async def test_declined_card_is_failed_precondition_naming_the_order(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(request("4000000000000002"), metadata=idempotency_metadata("k1"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED")
    assert details.error_info is not None
    order = await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=details.error_info.metadata["order_id"]))
    assert order.order.state == orders_pb2.ORDER_STATE_CANCELLED
    assert order.order.cancel_reason.code == orders_pb2.CANCEL_REASON_CODE_CARD_DECLINED


async def test_a_user_cannot_order_for_someone_else(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(request(user_id="usr_2"), metadata=idempotency_metadata("k1", [("x-user-id", "usr_1")]))
    assert details_of(caught.value).reason == "USER_MISMATCH"


async def test_another_users_order_looks_missing(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1", [("x-user-id", "usr_1")]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.order.id), metadata=[("x-user-id", "usr_2")])
    assert details_of(caught.value).reason == "ORDER_NOT_FOUND"


async def test_a_customer_cancelling_a_confirmed_order_gets_it_cancelled_as_customer_requested(
    stub: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    cancelled = await stub.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id=placed.order.id, reason="too slow"), metadata=idempotency_metadata("c1")
    )
    assert cancelled.order.state == orders_pb2.ORDER_STATE_CANCELLED
    assert cancelled.order.cancel_reason.code == orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED


async def test_a_cancellation_accepted_while_inventory_is_down_shows_as_pending_until_it_completes(
    stub: orders_pb2_grpc.OrdersServiceStub, inventory: FakeInventory
) -> None:
    """CancelOrder answered that the cancellation is accepted (UNAVAILABLE naming the order): GetOrder and
    ListOrders still say CONFIRMED, and pending_cancellation says it is being cancelled and why, until it is."""
    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    order_id = placed.order.id
    assert not placed.order.HasField("pending_cancellation")
    inventory.down = True
    cancel = orders_pb2.CancelOrderRequest(order_id=order_id, reason="too slow")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelOrder(cancel, metadata=idempotency_metadata("c1"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    expected = orders_pb2.CancelReason(code=orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED, message="too slow")
    got = (await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=order_id))).order
    [listed] = (await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))).orders
    for order in (got, listed):
        assert order.state == orders_pb2.ORDER_STATE_CONFIRMED
        assert order.pending_cancellation == expected
        assert not order.HasField("cancel_reason")
    inventory.down = False
    cancelled = (await stub.CancelOrder(cancel, metadata=idempotency_metadata("c1"))).order
    assert cancelled.state == orders_pb2.ORDER_STATE_CANCELLED
    assert cancelled.cancel_reason == expected
    assert not cancelled.HasField("pending_cancellation")


async def test_a_place_order_retry_during_the_customers_cancellation_answers_the_confirmed_order_without_refunding(
    stub: orders_pb2_grpc.OrdersServiceStub, payments: FakePayments
) -> None:
    """A PlaceOrder retry (same key) while the customer's cancellation waited for payments drove the refund and
    answered UNAVAILABLE "waiting at step REFUND", which the caller's channel retried, each attempt calling
    payments' Refund again. The placement it retries is over: the order as stored, CONFIRMED with its pending
    cancellation; once cancelled, the order CANCELLED (CUSTOMER_REQUESTED), also OK."""
    placed = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    payments.down = True
    cancel = orders_pb2.CancelOrderRequest(order_id=placed.id, reason="too slow")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelOrder(cancel, metadata=idempotency_metadata("c1"))
    assert details_of(caught.value).reason == "DEPENDENCY_UNAVAILABLE"
    refunds_tried = payments.refund_calls

    again = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"), timeout=30)).order
    assert (again.id, again.state, again.pending_cancellation.message) == (
        placed.id,
        orders_pb2.ORDER_STATE_CONFIRMED,
        "too slow",
    )
    assert payments.refund_calls == refunds_tried
    payments.down = False
    await stub.CancelOrder(cancel, metadata=idempotency_metadata("c1"))
    again = (await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))).order
    assert (again.state, again.cancel_reason.code) == (
        orders_pb2.ORDER_STATE_CANCELLED,
        orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED,
    )


class _CountingCancels(OrdersServicer):
    """Orders' servicer noting each CancelOrder call that reaches it."""

    cancels: ClassVar[list[str]] = []

    async def CancelOrder(self, request: orders_pb2.CancelOrderRequest, context: Any) -> orders_pb2.CancelOrderResponse:
        _CountingCancels.cancels.append(request.order_id)
        return await super().CancelOrder(request, context)


async def test_a_cancellation_accepted_is_answered_once_not_retried_by_the_callers_channel(
    settings: OrdersSettings, database: Database, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments
) -> None:
    """The accepted answer (UNAVAILABLE naming the order) is final for the call: the gateway's channel, which
    retries CancelOrder's UNAVAILABLE, sent it three more times, each driving the cancellation again (or meeting
    the recovery loop's lease) and the customer's answer seconds later."""
    _CountingCancels.cancels = []
    async with serving_orders(settings, database, catalog, inventory, payments, _CountingCancels) as stub:
        placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
        order_id = placed.order.id
        inventory.down = True
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CancelOrder(
                orders_pb2.CancelOrderRequest(order_id=order_id, reason="too slow"),
                metadata=idempotency_metadata("c1"),
                timeout=30,
            )
    details = details_of(caught.value)
    assert details.error_info is not None
    assert (details.code, details.reason, details.error_info.metadata["order_id"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        order_id,
    )
    assert "is accepted" in details.message
    assert _CountingCancels.cancels == [order_id]


async def test_list_orders_rejects_a_negative_page_size(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1", page_size=-1))
    assert details_of(caught.value).field_violations[0].field == "page_size"


async def test_an_order_whose_total_exceeds_int64_is_refused_and_leaves_the_users_orders_readable(
    stub: orders_pb2_grpc.OrdersServiceStub, catalog: FakeCatalog, inventory: FakeInventory
) -> None:
    # A price orders did not check (catalog keeps to Money's bound): 100 units at 10^17 total 10^19, past int64.
    catalog.products["prod_big"] = PricedProduct("prod_big", "Big", 10**17, "USD")
    inventory.on_hand["prod_big"] = 100
    big = request()
    big.items[0].product_id, big.items[0].quantity = "prod_big", 100
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(big, metadata=idempotency_metadata("k1"))
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    listed = await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))
    assert all(o.state != orders_pb2.ORDER_STATE_PENDING for o in listed.orders)


async def test_an_order_whose_total_exceeds_moneys_bound_is_refused_before_anything_is_reserved_or_charged(
    stub: orders_pb2_grpc.OrdersServiceStub, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments
) -> None:
    """Orders took any total that fit int64, which payments now refuses to charge (Money's bound, 10^15 - 1):
    such an order would be recorded, reserved and then fail at its charge. 100 units at 10^13 total 10^15."""
    catalog.products["prod_big"] = PricedProduct("prod_big", "Big", 10**13, "USD")
    inventory.on_hand["prod_big"] = 100
    big = request()
    big.items[0].product_id, big.items[0].quantity = "prod_big", 100
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(big, metadata=idempotency_metadata("k1"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert [(v.field, v.reason) for v in details.field_violations] == [("items[0].quantity", "OUT_OF_RANGE")]
    assert (await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))).orders == []
    assert (inventory.reservations, payments.charge_calls) == ({}, 0)


async def test_list_orders_names_a_negative_page_size_and_a_malformed_page_token_together(
    stub: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    """Review finding: the sibling of the ListNotifications fix (85dd58e). The transport's page_size() raises
    before the application decodes the token, so page_size=-1 with a garbage token names page_size alone
    (VALIDATION_FAILED): a paging client is never told to start again from the first page."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1", page_size=-1, page_token="not-a-token!"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert sorted(v.field for v in details.field_violations) == ["page_size", "page_token"]


@pytest.mark.parametrize("method", ["GetOrder", "CancelOrder"])
async def test_an_order_id_too_long_is_named_too_long_not_missing(
    stub: orders_pb2_grpc.OrdersServiceStub, method: str
) -> None:
    """An order_id of 65 characters was sent: it is too long, not missing. Both methods answered "order_id is
    required" with a REQUIRED violation, which a client (the gateway relays it unchanged) shows as "enter an
    order id" for an id it did send."""
    too_long = "ord_" + "x" * 61
    make = orders_pb2.GetOrderRequest if method == "GetOrder" else orders_pb2.CancelOrderRequest
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(make(order_id=too_long), metadata=idempotency_metadata("too-long-1"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["order_id"]
    assert details.field_violations[0].reason != "REQUIRED"
    assert "required" not in details.message


@pytest.mark.parametrize("method", ["GetOrder", "CancelOrder"])
@pytest.mark.parametrize("order_id", [" ", "\n\r", "\u202e", "ord 1", "\x1b[2J"])
async def test_an_unprintable_order_id_is_invalid_format(
    stub: orders_pb2_grpc.OrdersServiceStub, method: str, order_id: str
) -> None:
    """No order has such an id: refused as every service refuses an id it is handed (the rule PlaceOrder holds
    user_id to), not looked up and answered ORDER_NOT_FOUND with the id quoted back in its metadata."""
    make = orders_pb2.GetOrderRequest if method == "GetOrder" else orders_pb2.CancelOrderRequest
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(make(order_id=order_id), metadata=idempotency_metadata("unprintable-1"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("order_id", "INVALID_FORMAT")]


@pytest.mark.parametrize("user_id", ["usr\n1", "\u202e", "usr 1", "\x1b[2J", " ", "\t\n"])
async def test_list_orders_of_an_unprintable_user_id_is_invalid_format(
    stub: orders_pb2_grpc.OrdersServiceStub, user_id: str
) -> None:
    """PlaceOrder refuses such a user_id, so no order has one: ListOrders refuses it too, not answering empty."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("user_id", "INVALID_FORMAT")]


@pytest.mark.parametrize("blank", [" ", "\t\n"])
async def test_a_blank_user_id_or_cart_product_id_is_invalid_format_not_required(
    stub: orders_pb2_grpc.OrdersServiceStub, blank: str
) -> None:
    """money.proto's Identifiers: an id a request names with whitespace is INVALID_FORMAT, as every other
    service answers it. Orders alone answered a blank user_id or product id REQUIRED, "required": a client
    showed "enter a user id" for one it had sent."""
    bad = request(user_id=blank)
    bad.items[0].product_id = blank
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(bad, metadata=idempotency_metadata("blank-ids"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [
        ("user_id", "INVALID_FORMAT"),
        ("items[0].product_id", "INVALID_FORMAT"),
    ]


async def test_an_empty_id_is_refused_in_every_services_wording(stub: orders_pb2_grpc.OrdersServiceStub) -> None:
    """An empty id's REQUIRED reads "must not be empty" in every service (contract_limits.id_violations), so a
    client shows it alike whoever refused it; orders answered "required"."""
    bad = request(user_id="")
    bad.items[0].product_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(bad, metadata=idempotency_metadata("empty-ids"))
    placing = details_of(caught.value).field_violations
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=""))
    getting = details_of(caught.value).field_violations
    assert [(v.field, v.reason, v.description) for v in [*placing, *getting]] == [
        ("user_id", "REQUIRED", "must not be empty"),
        ("items[0].product_id", "REQUIRED", "must not be empty"),
        ("order_id", "REQUIRED", "must not be empty"),
    ]


async def test_cancel_order_names_a_missing_order_id_and_an_over_long_reason_together(
    stub: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    """The conventions (common/v1/money.proto): one FieldViolation per invalid field. The application validates
    order_id and then reason, each raising on its own, so a request with both wrong names order_id alone and
    the client learns of the reason only after fixing the id."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id="", reason="r" * 501), metadata=idempotency_metadata("both-bad")
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in details.field_violations) == ["order_id", "reason"]


@pytest.mark.parametrize("unprintable", ["\a", "\x1b[2J", "\x7f", "\x9b", "\u2028", "\n"])
async def test_a_cancel_reason_with_a_control_character_or_a_line_break_is_invalid_argument_and_cancels_nothing(
    stub: orders_pb2_grpc.OrdersServiceStub, unprintable: str
) -> None:
    """The reason goes into the cancellation e-mail as its "Reason:" line and back on every read of the order:
    a line break would let the customer's text pass for the shop's own lines, a control character reaches
    every screen and log that shows it."""
    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=placed.order.id, reason=f"too slow{unprintable}Refund: $1000"),
            metadata=idempotency_metadata("c1"),
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("reason", "INVALID_CHARACTERS")]
    got = (await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.order.id))).order
    assert got.state == orders_pb2.ORDER_STATE_CONFIRMED


async def test_a_retry_of_a_cancellation_accepted_before_the_reason_rule_returns_the_cancelled_order(
    stub: orders_pb2_grpc.OrdersServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for PlaceOrder: the same key and request, retried after an upgrade (or on a new pod of a rolling
    update), is answered with what the first call did, not refused by a rule that came after it."""
    import shopmesh_orders.application as application

    placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k1"))
    sent = orders_pb2.CancelOrderRequest(order_id=placed.order.id, reason="too slow\tsorry")
    with monkeypatch.context() as earlier_release:
        earlier_release.setattr(application, "validate_cancel_reason", lambda reason: None)
        cancelled = await stub.CancelOrder(sent, metadata=idempotency_metadata("c1"))
    assert cancelled.order.state == orders_pb2.ORDER_STATE_CANCELLED
    retried = await stub.CancelOrder(sent, metadata=idempotency_metadata("c1"))
    assert (retried.order.id, retried.order.state) == (placed.order.id, orders_pb2.ORDER_STATE_CANCELLED)


async def test_a_shipping_address_is_stored_and_answered_composed_and_trimmed(
    stub: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    """docs/chassis.md: each line of a shipping address goes through text_lines, "kept composed (NFC) and
    trimmed". validate_place_order returns the normalized command, but place_order drops what it returns
    and stores the address as sent: decomposed, with its padding (beyond 100 characters for a full name
    that passed the length rule only once trimmed)."""
    sent = request()
    sent.shipping_address.full_name = "  " + unicodedata.normalize("NFD", "Nguyễn Thị Thảo") + " " * 100
    sent.shipping_address.city = unicodedata.normalize("NFD", "Zürich ")
    placed = await stub.PlaceOrder(sent, metadata=idempotency_metadata("k-nfc"))
    got = (await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.order.id))).order
    for order in (placed.order, got):
        assert (order.shipping_address.full_name, order.shipping_address.city) == ("Nguyễn Thị Thảo", "Zürich")


async def test_a_retry_of_an_order_placed_before_the_address_rules_tightened_replays_the_order(
    stub: orders_pb2_grpc.OrdersServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same key + same request replays the outcome (the card's expiry already waits for the lookup, so that
    a retry of a call accepted earlier is not refused). The text_lines rules run before the lookup: a retry,
    after the upgrade (or on a new pod of a rolling update), of an order the earlier release placed and
    charged with a tab in its street is refused INVALID_CHARACTERS, and the client is told its order is
    invalid while it stands confirmed and paid."""
    import shopmesh_orders.placement as placement

    sent = request()
    sent.shipping_address.street = "Flat 2\t1 Analytical Way"  # pasted from a spreadsheet
    with monkeypatch.context() as earlier_release:
        earlier_release.setattr(placement, "validate_place_order", lambda command, today: command)
        placed = await stub.PlaceOrder(sent, metadata=idempotency_metadata("k-before"))
    assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    retried = await stub.PlaceOrder(sent, metadata=idempotency_metadata("k-before"))
    assert retried.order.id == placed.order.id


def expecting(amount_minor: int, currency: str = "USD") -> orders_pb2.PlaceOrderRequest:
    sent = request()
    sent.expected_total.amount_minor, sent.expected_total.currency = amount_minor, currency
    return sent


async def price_changed_total(stub: orders_pb2_grpc.OrdersServiceStub, expected_minor: int, key: str) -> str:
    """The current total named by the PRICE_CHANGED that PlaceOrder at `expected_minor` is refused with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(expecting(expected_minor), metadata=idempotency_metadata(key))
    details = details_of(caught.value)
    assert details.reason == "PRICE_CHANGED"
    assert details.error_info is not None
    return details.error_info.metadata["current_total_minor"]


async def test_a_price_changed_since_the_customer_saw_the_total_is_refused_before_anything_is_reserved_or_charged(
    stub: orders_pb2_grpc.OrdersServiceStub, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments
) -> None:
    """The customer was shown 12.50 for prod_a; catalog now says 13.00. Charging 13.00 without asking is what
    expected_total exists to stop: PRICE_CHANGED with the new total, no order, no reservation, no charge. The
    customer confirms the new total and the order goes through at it."""
    catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1300, "USD")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-price"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRICE_CHANGED")
    assert details.error_info is not None
    assert dict(details.error_info.metadata) == {"current_total_minor": "1300", "currency": "USD"}
    assert (inventory.calls, payments.charge_calls) == ([], 0)
    assert not (await stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))).orders

    # No order was recorded under the key, so the confirmation may reuse it.
    placed = await stub.PlaceOrder(expecting(1300), metadata=idempotency_metadata("k-price"))
    assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert placed.order.total.amount_minor == 1300
    assert payments.charge_calls == 1


async def test_an_expected_total_in_another_currency_names_expected_total_currency(
    stub: orders_pb2_grpc.OrdersServiceStub, payments: FakePayments
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlaceOrder(expecting(1250, "EUR"), metadata=idempotency_metadata("k-eur"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("expected_total.currency", "CURRENCY_MISMATCH")]
    assert payments.charge_calls == 0


async def test_a_retry_of_an_order_accepted_at_its_expected_total_replays_it_after_the_price_changed(
    stub: orders_pb2_grpc.OrdersServiceStub, catalog: FakeCatalog, payments: FakePayments
) -> None:
    """The idempotency rule stands: the same key and request find the order accepted before, which the customer
    paid at the total they confirmed; the price changed since is not a reason to tell them it failed."""
    placed = await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-replay"))
    catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1300, "USD")
    retried = await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-replay"))
    assert (retried.order.id, retried.order.total.amount_minor) == (placed.order.id, 1250)
    assert payments.charge_calls == 1


async def test_a_customer_who_saw_catalogs_new_price_is_not_refused_for_the_price_orders_remembers(
    settings: OrdersSettings,
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
) -> None:
    """Orders remembers prices (CachedCatalog, 30 s by default; here a held clock, so never forgotten). The
    storefront reads catalog itself: after a price change its cart shows the new price while orders still holds
    the old one. Compared with the remembered price only, the customer was refused PRICE_CHANGED with the old
    total, and the cart, refreshed from catalog, sent the new one again: refused until the memory expired.
    A mismatch asks catalog itself before it refuses."""
    async with orders_remembering_prices(settings, database, catalog, inventory, payments) as stub:
        await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-warm"))  # 12.50 remembered
        catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1300, "USD")

        placed = await stub.PlaceOrder(expecting(1300), metadata=idempotency_metadata("k-new-price"))
        assert (placed.order.state, placed.order.total.amount_minor) == (orders_pb2.ORDER_STATE_CONFIRMED, 1300)

        # A refusal names catalog's total, not the remembered one (13.00 now): the one to confirm.
        catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1400, "USD")
        assert await price_changed_total(stub, 1250, "k-old-price") == "1400"


@contextlib.asynccontextmanager
async def orders_remembering_prices(
    settings: OrdersSettings,
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    """Orders with its price memory (CachedCatalog) on a held clock: a price, once asked, is never forgotten."""
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=lambda: 0.0)
    async with serving_orders(settings, database, cached, inventory, payments) as served:
        yield served


class CatalogAway(FakeCatalog):
    """Catalog restarting: every call UNAVAILABLE (the DependencyDown orders' client makes of it) while `away`."""

    away: bool = False

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        if self.away:
            raise DependencyDown("catalog away")
        return await super().price(product_ids, fresh=fresh)


CANNOT_CONFIRM = "catalog cannot confirm the prices: PlaceOrder is refused on the remembered ones"


def cannot_confirm_logged(caplog: pytest.LogCaptureFixture) -> int:
    """How many times orders said it refused on remembered prices, catalog being away (at INFO: no fault)."""
    return sum(
        (r.name, r.levelno, r.getMessage()) == ("shopmesh.orders", logging.INFO, CANNOT_CONFIRM) for r in caplog.records
    )


async def test_a_total_that_differs_while_catalog_is_away_is_refused_on_the_remembered_prices_not_unavailable(
    settings: OrdersSettings,
    database: Database,
    inventory: FakeInventory,
    payments: FakePayments,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checkouts go on while catalog restarts, on the prices orders remembers. A total that differs from them
    cannot be confirmed with catalog then: PRICE_CHANGED naming the remembered total (nothing is stored yet),
    which the customer can confirm and be charged; not UNAVAILABLE for the whole checkout."""
    catalog = CatalogAway({"prod_a": PricedProduct("prod_a", "Product A", 1250, "USD")})
    async with orders_remembering_prices(settings, database, catalog, inventory, payments) as stub:
        await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-warm"))  # 12.50 remembered
        catalog.away = True
        with caplog.at_level(logging.INFO, logger="shopmesh.orders"), pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PlaceOrder(expecting(1300), metadata=idempotency_metadata("k-away"))
        assert cannot_confirm_logged(caplog) == 1
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRICE_CHANGED")
        assert details.error_info is not None
        assert details.error_info.metadata["current_total_minor"] == "1250"
        assert payments.charge_calls == 1

        placed = await stub.PlaceOrder(expecting(1250), metadata=idempotency_metadata("k-away"))
        assert (placed.order.state, placed.order.total.amount_minor) == (orders_pb2.ORDER_STATE_CONFIRMED, 1250)


async def test_a_price_catalog_has_corrected_is_not_refused_for_the_invalid_one_orders_remembers(
    settings: OrdersSettings,
    database: Database,
    inventory: FakeInventory,
    payments: FakePayments,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A product catalog priced at 0 is refused PRODUCT_PRICE_INVALID; the price remembered (CachedCatalog, 30 s
    by default, up to an hour) kept refusing it after catalog corrected it. A remembered price that is no
    sellable one asks catalog itself before it refuses; while catalog is away the remembered one refuses."""
    catalog = CatalogAway({"prod_a": PricedProduct("prod_a", "Product A", 0, "USD")})
    async with orders_remembering_prices(settings, database, catalog, inventory, payments) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PlaceOrder(request(), metadata=idempotency_metadata("k-zero"))
        assert details_of(caught.value).reason == "PRODUCT_PRICE_INVALID"

        catalog.away = True
        with caplog.at_level(logging.INFO, logger="shopmesh.orders"), pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PlaceOrder(request(), metadata=idempotency_metadata("k-zero-away"))
        assert cannot_confirm_logged(caplog) == 1
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRODUCT_PRICE_INVALID")

        catalog.away = False
        catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1250, "USD")
        placed = await stub.PlaceOrder(request(), metadata=idempotency_metadata("k-corrected"))
        assert (placed.order.state, placed.order.total.amount_minor) == (orders_pb2.ORDER_STATE_CONFIRMED, 1250)


class CountingCatalog(FakeCatalog):
    """Catalog counting the price reads orders makes of it (past its price memory, CachedCatalog)."""

    reads: int = 0

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        self.reads += 1
        return await super().price(product_ids, fresh=fresh)


async def test_a_checkout_asks_catalog_for_its_own_prices_at_most_once(
    settings: OrdersSettings, database: Database, inventory: FakeInventory, payments: FakePayments
) -> None:
    """A remembered price that is no sellable one asks catalog for its own; when catalog's total then differs
    from the customer's, that same answer refuses the order PRICE_CHANGED. Catalog was asked a second time for
    the prices it had just given, one more call on the checkout path for nothing."""
    catalog = CountingCatalog({"prod_a": PricedProduct("prod_a", "Product A", 0, "USD")})
    async with orders_remembering_prices(settings, database, catalog, inventory, payments) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PlaceOrder(request(), metadata=idempotency_metadata("k-zero"))  # 0 remembered
        catalog.products["prod_a"] = PricedProduct("prod_a", "Product A", 1300, "USD")
        catalog.reads = 0
        assert await price_changed_total(stub, 1250, "k-corrected") == "1300"
        assert catalog.reads == 1


async def test_one_place_order_sent_at_once_to_two_replicas_on_one_postgresql_places_and_charges_once(
    settings: OrdersSettings,
    postgres: PostgresServer,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
) -> None:
    """A double-clicked checkout the load balancer spreads over two replicas: the replica whose insert loses
    on the key must answer with the other's order, not fail INTERNAL on the unique violation, and nothing is
    reserved or charged twice."""
    url = postgres.create_database()
    async with contextlib.AsyncExitStack() as stack:
        stubs: list[orders_pb2_grpc.OrdersServiceStub] = []
        for _ in range(2):
            replica = Database(url)
            stack.push_async_callback(replica.dispose)
            await migrate(replica, VERSIONS, metadata)
            stubs.append(
                await stack.enter_async_context(serving_orders(settings, replica, catalog, inventory, payments))
            )

        async def place(n: int) -> str:
            try:
                placed = await stubs[n % 2].PlaceOrder(request(), metadata=idempotency_metadata("k-double-click"))
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}:{details_of(error).reason}"
            assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED
            return placed.order.id

        answers = set(await asyncio.gather(*(place(n) for n in range(8))))
        listed = await stubs[0].ListOrders(orders_pb2.ListOrdersRequest(user_id="usr_1"))
    [order] = listed.orders
    # A call that outwaits the first one's saga is told to retry, as the contract says; none fails otherwise.
    assert answers - {"ABORTED:IDEMPOTENCY_KEY_IN_USE"} == {order.id}
    assert (payments.charge_calls, len(inventory.reservations)) == (1, 1)
