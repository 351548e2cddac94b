"""The adapters to other services, against a stand-in server: what orders relays of their answers."""

from __future__ import annotations

from typing import Any

import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_orders.clients import CatalogClient
from shopmesh_orders.settings import OrdersSettings

CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class MissingProducts(catalog_pb2_grpc.CatalogServiceServicer):
    """Answers BatchGetProducts as catalog does when ids are missing: the first ones listed, all counted."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = metadata

    async def BatchGetProducts(self, request: catalog_pb2.BatchGetProductsRequest, context: Any) -> Any:
        raise errors.NotFound("not found", reason="PRODUCT_NOT_FOUND", metadata=self._metadata)


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        (
            {"product_ids": "prod_a,prod_b", "missing_count": "40"},
            {"product_ids": "prod_a,prod_b", "missing_count": "40"},
        ),
        # A catalog from before missing_count listed every missing id.
        ({"product_ids": "prod_a,prod_b"}, {"product_ids": "prod_a,prod_b", "missing_count": "2"}),
    ],
)
async def test_unknown_products_relay_the_ids_catalog_listed_and_how_many_are_missing(
    settings: OrdersSettings, sent: dict[str, str], relayed: dict[str, str]
) -> None:
    binding = ServiceBinding(CATALOG, MissingProducts(sent), catalog_pb2_grpc.add_CatalogServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [CATALOG], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(errors.NotFound) as caught:
            await CatalogClient(channel.channel, timeout=5).price(["prod_a", "prod_b", "prod_c"])
    assert (caught.value.reason, caught.value.metadata) == ("PRODUCT_NOT_FOUND", relayed)
