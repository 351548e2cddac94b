"""The catalog adapter's cache, over real gRPC against a stand-in catalog that counts what it is asked:
answers are remembered for their time to live, absences too, and a category listing fills the product
cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_recommendations.clients import CatalogClient


def _product(product_id: str, category: str = "kitchen") -> catalog_pb2.Product:
    return catalog_pb2.Product(
        id=product_id,
        name=product_id.title(),
        category=category,
        price=money_pb2.Money(amount_minor=1000, currency="USD"),
    )


@dataclass
class CountingCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    products: dict[str, catalog_pb2.Product] = field(
        default_factory=lambda: {p: _product(p) for p in ("knife", "board", "apron")}
    )
    asked: Counter[str] = field(default_factory=Counter)

    async def GetProduct(self, request: catalog_pb2.GetProductRequest, context: Any) -> catalog_pb2.GetProductResponse:
        self.asked["GetProduct"] += 1
        if request.product_id not in self.products:
            raise errors.NotFound("no such product", reason="PRODUCT_NOT_FOUND")
        return catalog_pb2.GetProductResponse(product=self.products[request.product_id])

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        self.asked["ListProducts"] += 1
        return catalog_pb2.ListProductsResponse(
            products=[p for p in self.products.values() if p.category == request.category]
        )

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        self.asked["BatchGetProducts"] += 1
        return catalog_pb2.BatchGetProductsResponse(products=[self.products[p] for p in request.product_ids])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    catalog: CountingCatalog
    channel: grpc.aio.Channel
    clock: Clock

    def client(self, cache_seconds: float = 30, cache_entries: int = 100) -> CatalogClient:
        return CatalogClient(self.channel, 5.0, cache_seconds, cache_entries, timer=self.clock)


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    catalog = CountingCatalog()
    settings = ServiceSettings(service_name="catalog", grpc_port=0, metrics_port=-1)
    binding = ServiceBinding(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        catalog,
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
    )
    async with serve_in_process(settings, [binding]) as server, grpc.aio.insecure_channel(server.address) as channel:
        yield Setup(catalog, channel, Clock())


async def test_a_product_is_asked_for_once_while_it_is_fresh_and_again_once_it_expired(setup: Setup) -> None:
    client = setup.client(cache_seconds=30)
    first = await client.product("knife")
    setup.clock.now += 29.9
    assert await client.product("knife") == first
    assert setup.catalog.asked["GetProduct"] == 1
    setup.clock.now += 0.1
    await client.product("knife")
    assert setup.catalog.asked["GetProduct"] == 2


async def test_a_product_the_catalog_does_not_know_is_remembered_as_unknown(setup: Setup) -> None:
    client = setup.client()
    assert await client.product("made-up") is None
    assert await client.product("made-up") is None
    assert await client.products(["made-up", "knife"]) == {"knife": await client.product("knife")}
    assert setup.catalog.asked == Counter({"GetProduct": 1, "BatchGetProducts": 1})


async def test_a_category_listing_fills_the_product_cache(setup: Setup) -> None:
    client = setup.client()
    listed = await client.products_in_category("kitchen")
    assert await client.products_in_category("kitchen") == listed
    assert set(await client.products(["knife", "board", "apron"])) == {"knife", "board", "apron"}
    assert await client.product("board") is not None
    assert setup.catalog.asked == Counter({"ListProducts": 1})


async def test_beyond_the_size_bound_the_least_recently_used_product_is_asked_for_again(setup: Setup) -> None:
    client = setup.client(cache_entries=2)
    await client.product("knife")
    await client.product("board")
    await client.product("knife")  # "board" is now the least recently used
    await client.product("apron")
    await client.product("knife")
    assert setup.catalog.asked["GetProduct"] == 3
    await client.product("board")
    assert setup.catalog.asked["GetProduct"] == 4


async def test_a_zero_time_to_live_remembers_nothing(setup: Setup) -> None:
    client = setup.client(cache_seconds=0)
    await client.product("knife")
    await client.product("knife")
    await client.products_in_category("kitchen")
    await client.products_in_category("kitchen")
    assert setup.catalog.asked == Counter({"GetProduct": 2, "ListProducts": 2})


class RateLimitedCatalog(CountingCatalog):
    async def GetProduct(self, request: catalog_pb2.GetProductRequest, context: Any) -> catalog_pb2.GetProductResponse:
        self.asked["GetProduct"] += 1
        raise errors.ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=20)


async def test_a_catalog_asking_to_wait_is_unavailable_for_as_long_as_it_asked() -> None:
    """Catalog's own RetryInfo (20 s while it rate-limits) is the wait recommendations asks of its caller; it
    said 1 s whatever catalog asked."""
    settings = ServiceSettings(service_name="catalog", grpc_port=0, metrics_port=-1)
    binding = ServiceBinding(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        RateLimitedCatalog(),
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
    )
    async with serve_in_process(settings, [binding]) as server, grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(errors.Unavailable) as caught:
            await CatalogClient(channel, 5.0, 30, 100).product("knife")
    assert (caught.value.reason, caught.value.retry_after_seconds) == ("DEPENDENCY_UNAVAILABLE", 20)
