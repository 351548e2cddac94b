"""The gateway's composed use cases: the product page (parallel, with a fallback) and checkout.

Every other method is a plain delegation and goes from the transport to its client directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh.recommendations.v1 import recommendations_pb2
from shopmesh_chassis import call_context, errors
from shopmesh_chassis.client import new_idempotency_key
from shopmesh_chassis.email_addresses import canonical_email, is_email_address
from shopmesh_chassis.idempotency import KEY_RULE, key_invalid, validate_key
from shopmesh_gateway.domain.product_page import recommendation_limit, shown
from shopmesh_gateway.metrics import Cause, Fallback

# The product page's degradation warnings, a logger of their own: while recommendations are slow or down every
# page would write one (a few a second under load, for as long as the outage lasts), so the composition root holds
# it to one line per message a minute (`limit_repeats`); shopmesh_gateway_degraded_product_pages_total counts them all.
DEGRADED_PAGE_LOGGER = "shopmesh.gateway.product_page"
log = logging.getLogger(DEGRADED_PAGE_LOGGER)

RecommendedProduct = recommendations_pb2.RecommendedProduct


class ProductSource(Protocol):
    async def get_product(self, product_id: str) -> catalog_pb2.Product: ...

    async def products_in_category(self, category: str, limit: int) -> list[catalog_pb2.Product]: ...


class StockSource(Protocol):
    async def available(self, product_id: str) -> int: ...


class RecommendationSource(Protocol):
    async def for_product(self, product_id: str, limit: int, timeout: float) -> list[RecommendedProduct]: ...


class AccountSource(Protocol):
    async def email_of(self, user_id: str) -> str: ...


class OrderPlacer(Protocol):
    async def place(self, request: orders_pb2.PlaceOrderRequest, idempotency_key: str) -> orders_pb2.Order: ...


@dataclass(frozen=True)
class ProductPage:
    product: catalog_pb2.Product
    available: int
    recommendations: list[RecommendedProduct]
    degraded: bool


def _as_recommendation(product: catalog_pb2.Product) -> RecommendedProduct:
    # Score 0: the contract's mark of a fallback entry, which nothing ranked.
    return RecommendedProduct(
        product_id=product.id, score=0.0, name=product.name, price=product.price, image_url=product.image_url
    )


# How long past the recommendations' budget the page stops waiting if gRPC's deadline has not ended the call.
_BUDGET_BACKSTOP_SECONDS = 0.05
# The share of the client's remaining time the page may spend on the optional part (recommendations, and the
# fallback when they fail): the rest is for the answer. Waited for up to the client's whole deadline, a hanging
# recommendations service failed the page (DEADLINE_EXCEEDED) though product and stock were there.
_RECOMMENDATIONS_SHARE_OF_DEADLINE = 0.5
# The optional part ends within this many recommendations' budgets: one for the ranked call, the rest for the
# fallback's listing. With no end of its own the fallback had catalog's whole timeout (2 s) after the ranked
# call's budget, and a page whose product and stock were there ended DEADLINE_EXCEEDED.
_OPTIONAL_PART_BUDGETS = 2


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    failures = [e for e in group.exceptions if not isinstance(e, asyncio.CancelledError)]
    return failures[0] if failures else group


class ProductPages:
    """Product, stock and recommendations fetched at once. Product and stock are required: the first of
    them to fail fails the page and cancels the rest, so a dead catalog answers at once instead of after
    the recommendations' budget. Recommendations are optional: past their budget, or failed, the page
    shows other products of the same category instead and says so; with no time left for those either
    (the optional part has one window: `_OPTIONAL_PART_BUDGETS`), it shows none and says so."""

    def __init__(
        self,
        catalog: ProductSource,
        inventory: StockSource,
        recommendations: RecommendationSource,
        recommendations_budget_seconds: float,
        on_degraded: Callable[[Cause, Fallback], None] = lambda cause, fallback: None,
    ) -> None:
        self._catalog = catalog
        self._inventory = inventory
        self._recommendations = recommendations
        self._budget = recommendations_budget_seconds
        self._on_degraded = on_degraded

    async def page(self, product_id: str, max_recommendations: int) -> ProductPage:
        limit = recommendation_limit(product_id, max_recommendations)
        try:
            async with asyncio.TaskGroup() as group:
                product = group.create_task(self._catalog.get_product(product_id))
                available = group.create_task(self._inventory.available(product_id))
                recommended = group.create_task(self._recommended(product_id, limit, product))
        except BaseExceptionGroup as failed:
            raise _first_failure(failed) from None
        picks, degraded = recommended.result()
        return ProductPage(product.result(), available.result(), picks, degraded)

    async def _recommended(
        self, product_id: str, limit: int, product: asyncio.Task[catalog_pb2.Product]
    ) -> tuple[list[RecommendedProduct], bool]:
        # The backstop too, so that a ranked call the backstop ends still leaves the fallback its budget.
        window = self._budget * _OPTIONAL_PART_BUDGETS + _BUDGET_BACKSTOP_SECONDS
        remaining = call_context.inbound_time_remaining()
        if remaining is not None:
            window = min(window, remaining * _RECOMMENDATIONS_SHARE_OF_DEADLINE)
        ends = time.monotonic() + window
        cause: Cause
        budget = min(self._budget, window)
        try:
            # gRPC's deadline ends the call at the budget, as DEADLINE_EXCEEDED, which the client's circuit
            # breaker counts (a hung service then fails fast); cut short here instead, the call would end
            # cancelled, which the breaker takes for the caller's choice and never opens. This is a backstop.
            # The client's deadline may leave less than the budget: then the call gets its share of it as its
            # deadline (deadline_within), not a timer of the page's only, which would end it cancelled before
            # gRPC's deadline and never count a hung service: the breaker judges whether the share was ample.
            with call_context.deadline_within(window):
                async with asyncio.timeout(budget + _BUDGET_BACKSTOP_SECONDS):
                    ranked = await self._recommendations.for_product(product_id, limit, self._budget)
            return shown(ranked, product_id, limit, lambda r: r.product_id), False
        except errors.DomainError as exc:
            cause = "recommendations_failed"
            log.warning("recommendations failed, showing the fallback: %s", exc, extra={"product_id": product_id})
        except TimeoutError:
            # The backstop's: a TimeoutError says nothing of its own, so the line says what ran out.
            cause = "recommendations_timed_out"
            log.warning(
                "recommendations did not answer within their budget of %d ms, showing the fallback",
                round(budget * 1000),
                extra={"product_id": product_id},
            )
        picks = await self._fallback(product_id, limit, product, ends)
        self._on_degraded(cause, "shown" if picks else "empty")
        return picks, True

    async def _fallback(
        self, product_id: str, limit: int, product: asyncio.Task[catalog_pb2.Product], ends: float
    ) -> list[RecommendedProduct]:
        """Other products of the same category, or none when the optional part's time ends first."""
        category = (await product).category
        left = ends - time.monotonic()
        if left <= 0:
            log.warning("no time left for the fallback recommendations", extra={"product_id": product_id})
            return []
        try:
            # As for the ranked call: gRPC's deadline ends the listing (which the breaker judges), the timer is
            # a backstop.
            with call_context.deadline_within(left):
                async with asyncio.timeout(left + _BUDGET_BACKSTOP_SECONDS):
                    # One more than shown: the product itself is usually among its category's first page.
                    candidates = await self._catalog.products_in_category(category, limit + 1)
        except (errors.DomainError, TimeoutError) as exc:
            log.warning("fallback recommendations failed: %r", exc, extra={"product_id": product_id})
            return []
        return [_as_recommendation(p) for p in shown(candidates, product_id, limit, lambda p: p.id)]


def idempotency_key(sent: str | None) -> str:
    """The client's idempotency key when it sent the header (INVALID_ARGUMENT if unusable), else a new UUIDv4.

    An empty header is unusable, not absent: generating a key for it would make each retry of a client whose
    key went missing (an unset variable, a proxy that blanks the value) a new order and a new charge.
    """
    if sent is None:
        return new_idempotency_key()
    if not sent:
        raise key_invalid(f"the idempotency-key header is empty: send {KEY_RULE}, or no header")
    return validate_key(sent)


# PlaceOrder's `email` names another address than the caller's account's (ErrorInfo and field violation).
EMAIL_NOT_ACCOUNTS = "EMAIL_NOT_ACCOUNTS"


def is_accounts_address(sent: str, account: str) -> bool:
    """Whether a PlaceOrder `email` is the account's address: an address by the shop's one rule
    (`email_addresses`, ASCII only), the same letters in any case (mail servers match host names in any case,
    and users' own sign-up address in the case they typed it at sign-up is no other mailbox). The rule first:
    Unicode's lower case maps some non-ASCII letters to ASCII ones (U+212A KELVIN SIGN to "k"), so a look-alike
    compared equal, and orders refused it as malformed instead of the contract's EMAIL_NOT_ACCOUNTS."""
    return is_email_address(sent) and canonical_email(sent) == canonical_email(account)


class Checkout:
    def __init__(self, accounts: AccountSource, orders: OrderPlacer) -> None:
        self._accounts = accounts
        self._orders = orders

    async def place(self, user_id: str, request: shop_pb2.PlaceOrderRequest, key: str) -> orders_pb2.Order:
        # The order's e-mails go to the caller's own account address, whatever the request says: any address
        # let a signed-in user have the shop mail anyone (a cancellation costs nothing once refunded). Empty
        # means the account's; the account's in other letter case is it (`is_accounts_address`).
        account = await self._accounts.email_of(user_id)
        if request.email and not is_accounts_address(request.email, account):
            raise errors.InvalidArgument(
                "email must be your account's e-mail address, or empty",
                [errors.FieldViolation("email", "must be your account's e-mail address, or empty", EMAIL_NOT_ACCOUNTS)],
                reason=EMAIL_NOT_ACCOUNTS,
            )
        order_request = orders_pb2.PlaceOrderRequest(
            user_id=user_id,
            items=request.items,
            currency=request.currency,
            # As the client typed it: orders fingerprints the whole request for its idempotency key, and
            # gateways before EMAIL_NOT_ACCOUNTS sent it so, so a retry through this one of an order placed
            # through one of those (a rolling upgrade) must send the same letters to find that order.
            email=request.email or account,
        )
        if request.HasField("shipping_address"):
            order_request.shipping_address.CopyFrom(request.shipping_address)
        if request.HasField("card"):
            order_request.card.CopyFrom(request.card)
        if request.HasField("expected_total"):
            # Absent and present mean different things to orders (current price vs the customer's consent).
            order_request.expected_total.CopyFrom(request.expected_total)
        order = await self._orders.place(order_request, key)
        # As orders' own span does: from an order id to the checkout's trace, at the edge too.
        trace.get_current_span().set_attribute("shopmesh.order_id", order.id)
        return order
