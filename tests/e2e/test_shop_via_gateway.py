"""The shop as a client sees it: every call goes to the gateway only, in front of every real service, a
real nats-server and the SMTP sink, started by the same launcher as `make run`.

register → login → browse → product page → place order → get order → the confirmation e-mail arrives;
plus the gateway's authentication with tokens the real users service signed.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_inventory.seed import SEED_STOCK
from shopmesh_platform.smtp_sink import read_mail
from shopmesh_platform.stack import Stack

from .shop import (
    CHEAP_PASSWORD_HASHING,
    FAST_RECOVERY,
    NO_RATE_LIMITS,
    assert_answered_but_for_checkouts,
    assert_each_checkout_kept,
    eventually,
    order_for,
    scraped,
    shop_client,
    signed_up,
    stock_levels,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENV = {
    "orders": FAST_RECOVERY,
    "users": CHEAP_PASSWORD_HASHING,
    "notifications": {"SEND_BACKOFF_SECONDS": "0.1", "SEND_MAX_BACKOFF_SECONDS": "0.5"},
    # Room for a cold recommendations service on a busy machine: this module is about the happy path.
    "gateway": {"RECOMMENDATIONS_TIMEOUT_SECONDS": "2", **NO_RATE_LIMITS},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, env=ENV) as running:
        yield running


async def failure(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def confirmation_to(stack: Stack, order_id: str) -> EmailMessage | None:
    for message in read_mail(stack.smtp_dir):
        if str(message["X-Shopmesh-Order-Id"]) == order_id:
            return message
    return None


async def test_a_customer_registers_browses_orders_and_gets_the_confirmation_email(stack: Stack, gateway: Any) -> None:
    user_id, email, auth = await signed_up(gateway, "grace")

    kitchen = await gateway.ListProducts(shop_pb2.ListProductsRequest(category="kitchen", page_size=5))
    assert kitchen.products
    assert {p.category for p in kitchen.products} == {"kitchen"}
    found = await gateway.SearchProducts(shop_pb2.SearchProductsRequest(query="french press"))
    product = found.products[0]
    assert product.id == "prod_french_press"

    async def ranked_page() -> Any:
        # A freshly started recommendations service may miss its first budgets (cold caches).
        page = await gateway.GetProductPage(
            shop_pb2.GetProductPageRequest(product_id=product.id, max_recommendations=3)
        )
        return None if page.recommendations_degraded else page

    page = await eventually(ranked_page, "a product page with ranked recommendations", timeout=10)
    assert page.product.id == product.id
    assert page.availability.in_stock
    assert page.availability.available_quantity > 0
    assert product.id not in [r.product_id for r in page.recommendations]
    assert len(page.recommendations) <= 3

    key = str(uuid.uuid4())
    call = gateway.PlaceOrder(order_for(product.id), metadata=(*auth, ("idempotency-key", key)), timeout=30)
    placed = (await call).order
    assert placed.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert (placed.user_id, placed.email) == (user_id, email), "the account's address when none is given"
    assert ("idempotency-key", key) in list(await call.trailing_metadata())
    assert ("idempotency-key", key) in list(await call.initial_metadata()), "where an HTTP/JSON client reads it"

    fetched = await gateway.GetOrder(shop_pb2.GetOrderRequest(order_id=placed.id), metadata=auth)
    assert fetched.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    listed = await gateway.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth)
    assert [o.id for o in listed.orders] == [placed.id]

    async def mail() -> EmailMessage | None:
        return await asyncio.to_thread(confirmation_to, stack, placed.id)

    message = await eventually(mail, f"a confirmation e-mail for {placed.id}")
    assert email in str(message["To"])
    assert placed.id in str(message["Subject"])

    async def notified() -> list[Any] | None:
        page = await gateway.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=auth)
        return [n for n in page.notifications if n.order_id == placed.id] or None

    (notification,) = await eventually(notified, f"the notification of {placed.id} listed")
    assert notification.recipient == email


async def test_a_declined_card_reaches_the_client_with_the_orders_error(gateway: Any) -> None:
    _, email, auth = await signed_up(gateway, "declined")
    request = order_for("prod_chef_knife", email=email)
    request.card.number = "4000000000000002"
    details = await failure(gateway.PlaceOrder(request, metadata=auth, timeout=30))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED")
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.orders"


async def test_protected_methods_need_a_token(gateway: Any) -> None:
    details = await failure(gateway.ListOrders(shop_pb2.ListOrdersRequest()))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


async def test_a_users_token_with_a_tampered_payload_is_token_invalid(gateway: Any) -> None:
    _, _, auth = await signed_up(gateway, "mallory")
    genuine = auth[0][1].removeprefix("Bearer ")
    header, _payload, signature = genuine.split(".")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    claims["sub"] = "usr_someone_else"
    forged_payload = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")[1]
    forged = f"{header}.{forged_payload}.{signature}"
    details = await failure(
        gateway.ListOrders(shop_pb2.ListOrdersRequest(), metadata=(("authorization", f"Bearer {forged}"),))
    )
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_token_signed_by_another_key_under_the_users_kid_is_token_invalid(gateway: Any) -> None:
    user_id, _, auth = await signed_up(gateway, "eve")
    genuine = auth[0][1].removeprefix("Bearer ")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    forged = jwt.encode(
        claims,
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt.get_unverified_header(genuine)["kid"]},
    )
    assert jwt.decode(forged, options={"verify_signature": False})["sub"] == user_id
    details = await failure(
        gateway.ListOrders(shop_pb2.ListOrdersRequest(), metadata=(("authorization", f"Bearer {forged}"),))
    )
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_client_claiming_another_user_id_still_acts_only_as_its_token_says(gateway: Any) -> None:
    victim_id, _, victim = await signed_up(gateway, "victim")
    _, _, attacker = await signed_up(gateway, "attacker")
    victims_order = (await gateway.PlaceOrder(order_for("prod_soy_candle"), metadata=victim, timeout=30)).order
    spoofed = (*attacker, ("x-user-id", victim_id))

    missing = await failure(gateway.GetOrder(shop_pb2.GetOrderRequest(order_id=victims_order.id), metadata=spoofed))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    assert list((await gateway.ListOrders(shop_pb2.ListOrdersRequest(), metadata=spoofed)).orders) == []
    cancel = await failure(
        gateway.CancelOrder(shop_pb2.CancelOrderRequest(order_id=victims_order.id), metadata=spoofed)
    )
    assert cancel.code == grpc.StatusCode.NOT_FOUND
    own = (await gateway.PlaceOrder(order_for("prod_soy_candle"), metadata=spoofed, timeout=30)).order
    assert own.user_id != victim_id

    # Notifications come from events, after the order: until the victim's exists, the spoofed list could not
    # show it even were the spoof honoured, and the check below would prove nothing.
    async def victims_notifications() -> list[str] | None:
        page = await gateway.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=victim)
        return [n.id for n in page.notifications if n.order_id == victims_order.id] or None

    victims = await eventually(victims_notifications, f"the notification of the victim's {victims_order.id}")
    notifications = await gateway.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=spoofed)
    assert not {n.id for n in notifications.notifications} & set(victims)
    assert all(n.user_id != victim_id for n in notifications.notifications)


async def test_a_page_token_of_list_orders_is_an_invalid_page_token_for_list_notifications(gateway: Any) -> None:
    # The conventions (common/v1): a page token is the next_page_token of the previous response of the same
    # request, else INVALID_ARGUMENT, reason INVALID_PAGE_TOKEN. Orders and notifications both bind their
    # tokens to the user alone, so one list's token pages the other list silently from a foreign position.
    _, _, auth = await signed_up(gateway, "pager")
    for _ in range(2):
        call = gateway.PlaceOrder(
            order_for("prod_soy_candle"), metadata=(*auth, ("idempotency-key", str(uuid.uuid4())))
        )
        assert (await call).order.state == orders_pb2.ORDER_STATE_CONFIRMED
    orders_page = await gateway.ListOrders(shop_pb2.ListOrdersRequest(page_size=1), metadata=auth)
    assert orders_page.next_page_token
    foreign = shop_pb2.ListNotificationsRequest(page_size=1, page_token=orders_page.next_page_token)
    details = await failure(gateway.ListNotifications(foreign, metadata=auth))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert [v.field for v in details.field_violations] == ["page_token"]


async def test_every_service_on_the_event_path_shows_it_in_its_metrics(stack: Stack, gateway: Any) -> None:
    _, _, auth = await signed_up(gateway, "ada")
    call = gateway.PlaceOrder(order_for("prod_chef_knife"), metadata=(*auth, ("idempotency-key", str(uuid.uuid4()))))
    assert (await call).order.state == orders_pb2.ORDER_STATE_CONFIRMED
    confirmed = "orders.v1.order_confirmed"
    expectations = [
        ("orders", "shopmesh_outbox_events_published_total", {"subject": confirmed}),
        ("orders", "shopmesh_orders_finished_total", {"state": "CONFIRMED", "reason": ""}),
        ("payments", "shopmesh_outbox_events_published_total", {"subject": "payments.v1.payment_captured"}),
        ("notifications", "shopmesh_events_consumed_total", {"subject": confirmed, "outcome": "applied"}),
        ("notifications", "shopmesh_notifications_delivery_attempts_total", {"outcome": "sent"}),
        ("recommendations", "shopmesh_events_consumed_total", {"subject": confirmed, "outcome": "applied"}),
    ]
    for service, name, labels in expectations:
        probe = functools.partial(asyncio.to_thread, scraped, stack, service, name, labels)
        await eventually(probe, f"{service} reporting {name}{labels}")
    # The relays have caught up: nothing waits in an outbox.
    waiting = "shopmesh_outbox_oldest_unpublished_age_seconds"
    for service in ("orders", "payments"):
        assert await asyncio.to_thread(scraped, stack, service, waiting, {}) == 0


async def test_services_report_the_circuit_breaker_in_front_of_each_dependency(stack: Stack) -> None:
    callers = {
        "gateway": ("users", "catalog", "inventory", "orders", "notifications", "recommendations"),
        "orders": ("catalog", "inventory", "payments"),
        "recommendations": ("catalog",),
    }
    for caller, dependencies in callers.items():
        for dependency in dependencies:
            labels = {"dependency": dependency, "state": "closed"}
            closed = await asyncio.to_thread(scraped, stack, caller, "shopmesh_client_breaker_state", labels)
            assert closed == 1, f"{caller} reports its breaker to {dependency} closed"


# Room for the shoppers' runs (the fixture's bound) besides the stack's start on a loaded machine.
@pytest.mark.timeout(300)
async def test_simulated_shoppers_get_answers_and_never_a_server_fault(
    stack: Stack, shoppers: Callable[..., Awaitable[Any]]
) -> None:
    # `make shoppers` against this stack, fast: every step of every shopper through the public API.
    async with shop_client(stack) as shop:
        before = await stock_levels(shop, SEED_STOCK)
        shopping = await shoppers(stack.address("gateway"), "--shoppers", "4", "--duration", "6", seed=7)
        assert_answered_but_for_checkouts(shopping)
        await assert_each_checkout_kept(shop, before, shopping.checkouts)
