"""The gateway's graceful degradation with every real service running: recommendations stopped or slowed
past their budget still leave the product page answering in time with the fallback list; a stopped
catalog fails the page at once with UNAVAILABLE instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually
from shopmesh_platform.stack import Stack

from .shop import scraped

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The gateway's budget for recommendations, and the deadline a client gives the whole page: a page that
# waited for slow recommendations (FAULT_DELAY_SECONDS) would miss the client's deadline. Each a multiple
# of the one before, so that a loaded machine's slow answers stay well inside them (1 s and 4 s did not):
# only waiting for the hung dependency can cross them.
RECOMMENDATIONS_BUDGET = 5.0
PAGE_DEADLINE = 20.0
FAULT_DELAY_SECONDS = 60.0
SLOW = {"FAULT_MODE": "slow", "FAULT_DELAY_SECONDS": str(FAULT_DELAY_SECONDS)}
PRODUCT = "prod_trail_daypack"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    env = {"gateway": {"RECOMMENDATIONS_TIMEOUT_SECONDS": str(RECOMMENDATIONS_BUDGET)}}
    async with Stack.for_tests(module_dir, env=env) as running:
        yield running


async def product_page(gateway: Any) -> shop_pb2.GetProductPageResponse:
    page: shop_pb2.GetProductPageResponse = await gateway.GetProductPage(
        shop_pb2.GetProductPageRequest(product_id=PRODUCT, max_recommendations=3), timeout=PAGE_DEADLINE
    )
    return page


async def ranked_page(gateway: Any) -> shop_pb2.GetProductPageResponse:
    """Awaits a page with ranked recommendations: the gateway's breaker to recommendations closed and its
    channel connected. The previous test's outage can leave the breaker open, or the channel backing off its
    reconnects, and a page then falls back at once, never putting the budget or the fail-fast to the test."""

    async def ranked() -> shop_pb2.GetProductPageResponse | None:
        page = await product_page(gateway)
        return None if page.recommendations_degraded else page

    # A freshly started recommendations service may miss its first budgets (cold caches); bounded wait.
    page: shop_pb2.GetProductPageResponse = await eventually(
        ranked, "a product page with ranked recommendations", timeout=60
    )
    return page


async def recommendations_asked(stack: Stack) -> float:
    """ListRecommendations calls the running recommendations process has begun handling."""
    labels = {"grpc_method": "ListRecommendations"}
    return await asyncio.to_thread(scraped, stack, "recommendations", "grpc_server_started_total", labels)


async def recommendations_ended(stack: Stack, code: str) -> float:
    """ListRecommendations calls the running recommendations process has ended with `code`."""
    labels = {"grpc_method": "ListRecommendations", "grpc_code": code}
    return await asyncio.to_thread(scraped, stack, "recommendations", "grpc_server_handled_total", labels)


def assert_fallback(page: shop_pb2.GetProductPageResponse) -> None:
    assert page.product.id == PRODUCT
    assert page.recommendations_degraded
    assert page.recommendations, "other products of the category"
    assert PRODUCT not in [r.product_id for r in page.recommendations]
    assert {r.score for r in page.recommendations} == {0.0}


async def test_the_page_shows_ranked_recommendations_while_the_service_is_healthy(gateway: Any) -> None:
    page = await ranked_page(gateway)
    assert PRODUCT not in [r.product_id for r in page.recommendations]


async def test_with_recommendations_stopped_the_page_answers_with_the_fallback(stack: Stack, gateway: Any) -> None:
    await stack.stop_service("recommendations")
    try:
        for _ in range(3):
            assert_fallback(await product_page(gateway))
    finally:
        await stack.start_service("recommendations")


async def test_with_recommendations_slower_than_their_budget_the_page_answers_in_time(
    stack: Stack, gateway: Any
) -> None:
    await ranked_page(gateway)
    await stack.stop_service("recommendations")
    await stack.start_service("recommendations", env=SLOW)
    try:
        # Only a page whose call reached the slow service shows the budget: one refused at the gateway (by its
        # breaker, or its channel still reconnecting to the restarted service) falls back at once regardless.
        async def sat_out_by_the_slow_service() -> shop_pb2.GetProductPageResponse | None:
            asked = await recommendations_asked(stack)
            page = await product_page(gateway)
            return page if await recommendations_asked(stack) > asked else None

        page = await eventually(sat_out_by_the_slow_service, "a page that asked the slow service", timeout=60)
        assert_fallback(page)
    finally:
        await stack.stop_service("recommendations")
        await stack.start_service("recommendations", env={"FAULT_MODE": "none"})


async def test_with_the_catalog_stopped_the_page_fails_fast_with_unavailable(stack: Stack, gateway: Any) -> None:
    # Slow recommendations as well: the page must fail on the catalog without sitting out their budget.
    await ranked_page(gateway)
    await stack.stop_service("recommendations")
    await stack.start_service("recommendations", env=SLOW)
    await stack.stop_service("catalog")
    try:
        asked_before = await recommendations_asked(stack)
        cancelled_before = await recommendations_ended(stack, "CANCELLED")
        missed_before = await recommendations_ended(stack, "DEADLINE_EXCEEDED")
        for _ in range(7):  # the first failures, then through the gateway's open circuit breaker
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await product_page(gateway)
            details = details_of(caught.value)
            assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        # Each recommendations call that reached the slow service was cancelled by the gateway as the catalog
        # failed: one the page waited for would have ended at its budget, DEADLINE_EXCEEDED, or not at all.
        asked = await recommendations_asked(stack) - asked_before

        async def every_asked_call_ended_cancelled() -> bool:
            return await recommendations_ended(stack, "CANCELLED") - cancelled_before == asked

        await eventually(every_asked_call_ended_cancelled, f"the {asked:g} recommendations calls ended CANCELLED")
        assert await recommendations_ended(stack, "DEADLINE_EXCEEDED") == missed_before
    finally:
        await stack.start_service("catalog")
        await stack.stop_service("recommendations")
        await stack.start_service("recommendations", env={"FAULT_MODE": "none"})
