"""Ranked products that left the catalog, looked up over real gRPC against a stand-in catalog that answers
BatchGetProducts as the catalog does (all or nothing, NOT_FOUND naming the missing ids) and counts its calls."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest_asyncio

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.clients import CatalogClient
from shopmesh_recommendations.domain.copurchase import purchase_effects
from shopmesh_recommendations.domain.models import ConfirmedOrder
from shopmesh_recommendations.store.repository import RecommendationsRepository
from shopmesh_recommendations.store.tables import metadata
from shopmesh_recommendations.wiring import VERSIONS


def _product(product_id: str) -> catalog_pb2.Product:
    price = money_pb2.Money(amount_minor=1000, currency="USD")
    return catalog_pb2.Product(id=product_id, name=product_id, category="kitchen", price=price)


class SmallCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, *product_ids: str) -> None:
        self.products = {p: _product(p) for p in product_ids}
        self.asked: Counter[str] = Counter()

    async def GetProduct(self, request: catalog_pb2.GetProductRequest, context: Any) -> catalog_pb2.GetProductResponse:
        self.asked["GetProduct"] += 1
        if request.product_id not in self.products:
            raise errors.NotFound("no such product", reason="PRODUCT_NOT_FOUND")
        return catalog_pb2.GetProductResponse(product=self.products[request.product_id])

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        self.asked["ListProducts"] += 1
        listed = [p for p in self.products.values() if p.category == request.category]
        return catalog_pb2.ListProductsResponse(products=listed)

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        self.asked["BatchGetProducts"] += 1
        assert len(request.product_ids) <= 100  # the catalog's limit
        missing = [p for p in dict.fromkeys(request.product_ids) if p not in self.products]
        if missing:
            metadata = errors.listed_ids(missing, key="product_ids", count_key="missing_count")
            raise errors.NotFound("not found", reason="PRODUCT_NOT_FOUND", metadata=metadata)
        return catalog_pb2.BatchGetProductsResponse(products=[self.products[p] for p in request.product_ids])


@pytest_asyncio.fixture
async def database(blank_db: Database) -> Database:
    await migrate(blank_db, VERSIONS, metadata)
    return blank_db


async def test_a_thousand_gone_products_ranked_first_cost_a_handful_of_catalog_calls(database: Database) -> None:
    """The audit's shape: the knife was bought with 1,000 products that have all left the catalog since, and
    its one sibling in the catalog, the board, comes only after them. Looked up 5 at a time (the places left)
    a cold request made over 200 BatchGetProducts calls; a batch of up to 100 next ranked ids takes a few."""
    now = datetime.now(UTC)
    async with database.transaction() as session:
        repository = RecommendationsRepository(session)
        for n in range(1000):
            await repository.record(
                purchase_effects(ConfirmedOrder(f"ord_{n}", "usr_1", ("knife", f"gone_{n:04}"))), now
            )
    catalog = SmallCatalog("knife", "board")
    settings = ServiceSettings(service_name="catalog", grpc_port=0, metrics_port=-1)
    binding = ServiceBinding(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        catalog,
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
    )
    async with serve_in_process(settings, [binding]) as server, grpc.aio.insecure_channel(server.address) as channel:
        application = RecommendationsApplication(database, CatalogClient(channel, 5.0, 30, 10_000))
        recommended = await application.recommend("knife", None, 5)
    assert [r.product.id for r in recommended] == ["board"]
    # 1,000 ids are at least 10 batches; each deeper read may start a partly filled one.
    assert catalog.asked["BatchGetProducts"] <= 20
