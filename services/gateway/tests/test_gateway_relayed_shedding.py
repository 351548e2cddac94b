"""A service behind the gateway that sheds a call (GRPC_MAX_CONCURRENT_RPCS, or users' full password-hashing
queue) fails the shopper as surely as the gateway shedding it: the gateway relays the RESOURCE_EXHAUSTED
unchanged (its contract for internal services' errors), and counts it as shed, as the availability SLO of its
public API reads it, by the service's shed marker (SHED_ANSWER), whatever the reason."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.grpc_errors import answered_shed, details_of
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.testing import eventually, serve_in_process

from .gateway_fakes import FakeUsers, fakes_serving
from .gateway_serving import served_gateway

HELD = "held"
LIST = {"grpc_type": "unary", "grpc_method": "ListProducts"}
CATALOG_LIST = {**LIST, "grpc_service": "shopmesh.catalog.v1.CatalogService"}
SHOP_LIST = {**LIST, "grpc_service": "shopmesh.gateway.v1.ShopService"}
SHOP_LOGIN = {"grpc_type": "unary", "grpc_service": "shopmesh.gateway.v1.ShopService", "grpc_method": "Login"}
PASSWORD_HASHING_BUSY = "PASSWORD_HASHING_BUSY"


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


class BusyUsers(FakeUsers):
    """Login refuses every call as users does when its password-hashing queue is full (shed, by its own reason)."""

    async def Login(self, request: users_pb2.LoginRequest, context: Any) -> users_pb2.LoginResponse:
        raise errors.Overloaded(
            "too many password checks at once; retry shortly", reason=PASSWORD_HASHING_BUSY, retry_after_seconds=1.0
        )


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
        assert answered_shed(refused.value), "marked shed for the gateway's own caller, as catalog marked it"

        def counts() -> tuple[float, float, float]:
            return (
                sample(catalog_server, "shopmesh_grpc_server_shed_total", CATALOG_LIST),
                sample(gateway.server, "grpc_server_handled_total", SHOP_LIST, grpc_code="RESOURCE_EXHAUSTED"),
                sample(gateway.server, "shopmesh_grpc_server_shed_total", SHOP_LIST),
            )

        await eventually(lambda: counts() == (1, 1, 1), "catalog's shed call counted by catalog and the gateway")


async def test_users_password_hashing_busy_is_relayed_unchanged_counted_shed_and_marked_shed_for_the_client() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = ServiceSettings(service_name="users", grpc_port=0, metrics_port=-1)
    users = BusyUsers()
    bound = ServiceBinding(
        users_pb2.DESCRIPTOR.services_by_name["UsersService"], users, users_pb2_grpc.add_UsersServiceServicer_to_server
    )
    login = shop_pb2.LoginRequest(email="alice@example.com", password="correct horse battery")
    try:
        async with (
            fakes_serving() as fakes,
            serve_in_process(settings, [bound]) as users_server,
            grpc.aio.insecure_channel(users_server.address) as direct,
            served_gateway({**fakes.addresses, "users": users_server.address}, tracer_provider=provider) as gateway,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as from_users:
                await users_pb2_grpc.UsersServiceStub(direct).Login(
                    users_pb2.LoginRequest(email=login.email, password=login.password), timeout=30
                )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway.shop.Login(login, timeout=30)

            def counts() -> tuple[float, float]:
                return (
                    sample(gateway.server, "grpc_server_handled_total", SHOP_LOGIN, grpc_code="RESOURCE_EXHAUSTED"),
                    sample(gateway.server, "shopmesh_grpc_server_shed_total", SHOP_LOGIN),
                )

            await eventually(lambda: counts() == (1, 1), "the relayed PASSWORD_HASHING_BUSY counted shed")

            def login_spans() -> list[tuple[trace.StatusCode, str | None]]:
                return [
                    (s.status.status_code, s.status.description)
                    for s in exporter.get_finished_spans()
                    if s.kind is trace.SpanKind.SERVER and s.name == "/shopmesh.gateway.v1.ShopService/Login"
                ]

            # The span ends a moment after the client has the answer, as the handler unwinds.
            spans = await eventually(login_spans, "the gateway's Login server span")
    finally:
        provider.shutdown()
    # Byte for byte what users answered (the status and its details, ErrorInfo's domain shopmesh.users), and
    # marked shed, so a relay of the gateway counts it too.
    relayed = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    sent = dict(from_users.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert (refused.value.code(), refused.value.details(), relayed) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        from_users.value.details(),
        sent,
    )
    assert details_of(refused.value).reason == PASSWORD_HASHING_BUSY
    assert answered_shed(refused.value)
    assert spans == [(trace.StatusCode.ERROR, PASSWORD_HASHING_BUSY)]
