"""How the product page degrades, with the gateway in this process in front of in-process catalog and inventory
stand-ins served over real gRPC (so a test can make one method hang or answer wrongly) and the recommendations
fake of gateway_fakes: the optional part never costs the page its deadline, a failing recommendations service
costs one call, an inventory answer about another product is no stock level, and each degraded page is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process

from .gateway_fakes import Fakes, fakes_serving
from .gateway_serving import ServedGateway, served_gateway

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

DEGRADED = "shopmesh_gateway_degraded_product_pages_total"


@dataclass
class Catalog(catalog_pb2_grpc.CatalogServiceServicer):
    """Answers GetProduct at once; ListProducts (the page's fallback) hangs while `listing_hangs`, answers
    UNAVAILABLE while `listing_fails`."""

    listing_hangs: bool = False
    listing_fails: bool = False

    async def GetProduct(self, request: catalog_pb2.GetProductRequest, context: Any) -> catalog_pb2.GetProductResponse:
        return catalog_pb2.GetProductResponse(product=product(request.product_id))

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        if self.listing_hangs:
            await asyncio.Event().wait()
        if self.listing_fails:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "catalog stand-in: listing fails")
        return catalog_pb2.ListProductsResponse(products=[product(f"prod_{i}") for i in range(request.page_size)])


@dataclass
class Inventory(inventory_pb2_grpc.InventoryServiceServicer):
    """7 available of the product asked for, or of the products `answers_for` names when set (a broken answer)."""

    answers_for: list[str] | None = None

    async def GetStock(self, request: inventory_pb2.GetStockRequest, context: Any) -> inventory_pb2.GetStockResponse:
        named = list(request.product_ids) if self.answers_for is None else self.answers_for
        return inventory_pb2.GetStockResponse(
            stock_levels=[inventory_pb2.StockLevel(product_id=p, available=7) for p in named]
        )


def product(product_id: str) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        id=product_id, name=product_id, category="kitchen", price=money_pb2.Money(amount_minor=100, currency="USD")
    )


@dataclass
class Page:
    gateway: ServedGateway
    fakes: Fakes
    catalog: Catalog
    inventory: Inventory

    async def get(self, timeout: float) -> shop_pb2.GetProductPageResponse:
        return await self.gateway.shop.GetProductPage(
            shop_pb2.GetProductPageRequest(product_id="prod_a", max_recommendations=3), timeout=timeout
        )

    @property
    def registry(self) -> CollectorRegistry:
        return self.gateway.server.metrics.registry

    def degraded(self, cause: str, fallback: str) -> float | None:
        return self.registry.get_sample_value(DEGRADED, {"cause": cause, "fallback": fallback})


# A budget an answer, failing or not, always comes within, on a loaded machine too: with the default 0.3 s an
# UNAVAILABLE that took longer (CI, two test workers on two cores) counted the page as recommendations_timed_out,
# and a healthy answer that did made the page degraded.
ANSWERS_IN_TIME = {"recommendations_timeout_seconds": 2.0}


@contextlib.asynccontextmanager
async def page_in_front_of_stand_ins(**overrides: Any) -> AsyncIterator[Page]:
    """`overrides`: the gateway's settings."""
    catalog, inventory = Catalog(), Inventory()
    stand_ins = [
        ("catalog", catalog, catalog_pb2, "CatalogService", catalog_pb2_grpc.add_CatalogServiceServicer_to_server),
        (
            "inventory",
            inventory,
            inventory_pb2,
            "InventoryService",
            inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
        ),
    ]
    async with contextlib.AsyncExitStack() as stack:
        fakes = await stack.enter_async_context(fakes_serving())
        addresses = dict(fakes.addresses)
        for name, servicer, module, service, register in stand_ins:
            settings = ServiceSettings(service_name=name, grpc_port=0, metrics_port=-1)
            binding = ServiceBinding(module.DESCRIPTOR.services_by_name[service], servicer, register)
            addresses[name] = (await stack.enter_async_context(serve_in_process(settings, [binding]))).address
        gateway = await stack.enter_async_context(served_gateway(addresses, **overrides))
        yield Page(gateway, fakes, catalog, inventory)


async def test_hanging_recommendations_and_a_hanging_fallback_still_answer_the_page_degraded_within_its_deadline() -> (
    None
):
    """Recommendations and their fallback share one budget: past it the page answers without recommendations.
    The fallback's listing had catalog's whole 2 s after recommendations missed their 0.3 s, so a 1 s client
    got DEADLINE_EXCEEDED (a server error against the availability SLO) though product and stock were there."""
    async with page_in_front_of_stand_ins() as page:
        page.fakes.recommendations.mode = "hang"
        page.catalog.listing_hangs = True
        answer = await page.get(timeout=1.0)
        assert answer.product.id == "prod_a"
        assert answer.availability.available_quantity == 7
        assert answer.recommendations_degraded
        assert list(answer.recommendations) == []
        assert page.degraded("recommendations_timed_out", "empty") == 1


async def test_failing_recommendations_cost_one_call_per_page_and_the_log_names_their_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The optional call is made once: the channel retried an UNAVAILABLE inside the 0.3 s budget, three calls
    per page, each page waited out the budget and the log blamed DEADLINE_EXCEEDED instead of the real status."""
    caplog.set_level(logging.WARNING, logger="shopmesh.gateway")
    async with page_in_front_of_stand_ins(**ANSWERS_IN_TIME) as page:
        page.fakes.recommendations.mode = "fail"
        for pages in (1, 2, 3):
            answer = await page.get(timeout=5.0)
            assert answer.recommendations_degraded
            assert [r.product_id for r in answer.recommendations] == ["prod_0", "prod_1", "prod_2"]
            assert page.fakes.recommendations.calls == pages
        assert page.degraded("recommendations_failed", "shown") == 3
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("shopmesh.gateway")]
    said = [m for m in logged if "recommendations" in m]
    assert said
    assert all("UNAVAILABLE" in m and "FAULT_INJECTED" in m and "DEADLINE_EXCEEDED" not in m for m in said), said


async def test_an_outage_of_recommendations_logs_one_warning_per_message_a_minute_and_counts_every_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every page degraded by the outage wrote a WARNING (about 3 lines a second at 20 shoppers, for as long as it
    lasted): now one line per message in the window, while the counter still counts each page."""
    caplog.set_level(logging.WARNING, logger="shopmesh.gateway")
    pages = 4
    async with page_in_front_of_stand_ins(**ANSWERS_IN_TIME) as page:
        page.fakes.recommendations.mode = "fail"
        page.catalog.listing_fails = True  # the fallback fails too: its own message
        for _ in range(pages):
            answer = await page.get(timeout=5.0)
            assert answer.recommendations_degraded
        assert page.degraded("recommendations_failed", "empty") == pages
    templates = [str(r.msg) for r in caplog.records if r.name.startswith("shopmesh.gateway")]
    assert sorted(templates) == [
        "fallback recommendations failed: %r",
        "recommendations failed, showing the fallback: %s",
    ], templates


@pytest.mark.parametrize("answers_for", [["prod_other"], []], ids=["another-product", "no-level"])
async def test_a_stock_level_for_another_product_is_no_stock_of_this_one_and_the_page_is_unavailable(
    answers_for: list[str],
) -> None:
    """inventory.proto: one stock level per requested id. A level naming another product (or none) is a broken
    answer, as much inventory trouble as its being away: the page answers UNAVAILABLE naming inventory (it
    showed the other product's stock as this one's, and no level as none in stock)."""
    async with page_in_front_of_stand_ins() as page:
        page.inventory.answers_for = answers_for
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await page.get(timeout=5.0)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert details.error_info is not None
    assert dict(details.error_info.metadata) == {"dependency": "inventory"}


async def test_every_degraded_page_series_starts_at_zero_and_a_healthy_page_counts_none() -> None:
    """Made at 0 up front: a series created by its first degraded page starts at 1, and increase() over it
    reads 0, so a pod's first degraded page would count for nothing."""
    async with page_in_front_of_stand_ins(**ANSWERS_IN_TIME) as page:
        answer = await page.get(timeout=5.0)
        assert not answer.recommendations_degraded
        for cause in ("recommendations_failed", "recommendations_timed_out"):
            for fallback in ("shown", "empty"):
                assert page.degraded(cause, fallback) == 0
