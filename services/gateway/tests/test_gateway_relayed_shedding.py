"""A service behind the gateway that sheds a call (GRPC_MAX_CONCURRENT_RPCS) fails the shopper as surely as the
gateway shedding it: the gateway relays the RESOURCE_EXHAUSTED SERVER_OVERLOADED unchanged (its contract for
internal services' errors), and counts it as shed, as the availability SLO of its public API reads it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.testing import eventually, serve_in_process

from .gateway_fakes import fakes_serving
from .gateway_serving import served_gateway

HELD = "held"
LIST = {"grpc_type": "unary", "grpc_method": "ListProducts"}
CATALOG_LIST = {**LIST, "grpc_service": "shopmesh.catalog.v1.CatalogService"}
SHOP_LIST = {**LIST, "grpc_service": "shopmesh.gateway.v1.ShopService"}


@dataclass
class HoldingCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    """ListProducts of the category HELD waits until the test releases it: catalog stays at its limit."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        if request.category == HELD:
            await self.release.wait()
        return catalog_pb2.ListProductsResponse()


def sample(server: ChassisServer, name: str, method: dict[str, str], **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, {**method, **labels}) or 0.0


async def test_a_services_shedding_reaches_the_shopper_unchanged_and_the_gateway_counts_it_shed() -> None:
    catalog = HoldingCatalog()
    settings = ServiceSettings(service_name="catalog", grpc_port=0, metrics_port=-1, grpc_max_concurrent_rpcs=1)
    bound = ServiceBinding(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        catalog,
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
    )
    async with (
        fakes_serving() as fakes,
        serve_in_process(settings, [bound]) as catalog_server,
        grpc.aio.insecure_channel(catalog_server.address) as direct,
        served_gateway({**fakes.addresses, "catalog": catalog_server.address}) as gateway,
    ):
        # catalog's one place, taken by a call of the test's own.
        held = asyncio.ensure_future(
            catalog_pb2_grpc.CatalogServiceStub(direct).ListProducts(
                catalog_pb2.ListProductsRequest(category=HELD), timeout=30
            )
        )
        await eventually(
            lambda: held.done() or sample(catalog_server, "grpc_server_in_flight_requests", CATALOG_LIST) == 1,
            "catalog at its limit",
        )
        assert not held.done(), held
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway.shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=30)
        finally:
            catalog.release.set()
            await held
        details = details_of(refused.value)
        assert details.error_info is not None
        assert (details.code, details.reason, details.error_info.domain) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SERVER_OVERLOADED",
            "shopmesh.catalog",
        )

        def counts() -> tuple[float, float, float]:
            return (
                sample(catalog_server, "shopmesh_grpc_server_shed_total", CATALOG_LIST),
                sample(gateway.server, "grpc_server_handled_total", SHOP_LIST, grpc_code="RESOURCE_EXHAUSTED"),
                sample(gateway.server, "shopmesh_grpc_server_shed_total", SHOP_LIST),
            )

        await eventually(lambda: counts() == (1, 1, 1), "catalog's shed call counted by catalog and the gateway")
