"""What the sidecars take and how much they retry at once, against real Envoys: a call with more headers than
Envoy's default count (100), which the services take, gets through every sidecar, and the HTTP edge refuses
more than it takes itself (431), before anything past it; with a callee's sidecar gone, every one of many
concurrent calls gets its retries, not just the first three (Envoy's default circuit breaker). The edge's own count
is Envoy's default less the headers it adds (MAX_REQUEST_HEADERS_COUNT), so what it forwards passes a default
Envoy (Istio's sidecar): libs/platform's test_http_api_header_count proves that one."""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import eventually
from shopmesh_platform.http_api import MAX_REQUEST_HEADERS_COUNT
from shopmesh_platform.mesh.envoy import OUTBOUND_RETRIES
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.mesh.layout import sidecar_name
from shopmesh_platform.stack import Stack

from .envoykit import handled, sidecar_stats

pytestmark = pytest.mark.asyncio(loop_scope="module")

# More than Envoy's default max_headers_count (100), far within what the services take (256 KiB of metadata).
MANY = 150
# No rate limit: every call of the module comes from one address.
ENV = {"gateway": {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000"}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    services = ["gateway", "catalog", "recommendations"]
    async with Stack.for_tests(module_dir, services=services, env=ENV, mesh=True, http=True) as running:
        yield running


def many_headers(count: int) -> list[tuple[str, str]]:
    return [(f"x-extra-{i}", "v") for i in range(count)]


def outbound_of(stack: Stack, caller: str, callee: str) -> str:
    """The caller's sidecar's outbound listener for `callee`: where the caller's own calls to it go."""
    return f"{stack.ports.host}:{stack.ports.sidecar_of(caller).outbound[callee]}"


async def test_a_call_with_more_headers_than_envoys_default_count_gets_through_every_sidecar(stack: Stack) -> None:
    """Each hop a call may take: the edge's sidecar (plaintext in), a caller's outbound listener and cluster,
    a callee's inbound listener (mutual TLS) and its app cluster. Envoy's default count of 100 reset each
    such call: INTERNAL "RST_STREAM with error code 2" at the client."""
    metadata = many_headers(MANY)
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        page = await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(
            shop_pb2.ListProductsRequest(page_size=2), metadata=metadata, timeout=10
        )
    assert len(page.products) == 2
    async with grpc.aio.insecure_channel(outbound_of(stack, "recommendations", "catalog")) as channel:
        products = await catalog_pb2_grpc.CatalogServiceStub(channel).BatchGetProducts(
            catalog_pb2.BatchGetProductsRequest(product_ids=["prod_chef_knife"]), metadata=metadata, timeout=10
        )
    assert [p.id for p in products.products] == ["prod_chef_knife"]
    async with channel_as(stack.mesh_dir, "orders", "catalog", stack.address("catalog")) as channel:
        products = await catalog_pb2_grpc.CatalogServiceStub(channel).BatchGetProducts(
            catalog_pb2.BatchGetProductsRequest(product_ids=["prod_chef_knife"]), metadata=metadata, timeout=10
        )
    assert [p.id for p in products.products] == ["prod_chef_knife"]


def http_get(url: str, headers: list[tuple[str, str]]) -> int:
    """The status of an HTTP/1.1 GET (a browser's) with these headers besides Host."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.putrequest("GET", parts.path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


async def test_the_http_edge_forwards_as_many_headers_as_it_takes_and_refuses_more_itself_with_431(
    stack: Stack,
) -> None:
    """The edge adds headers of its own (x-forwarded-for, x-request-id, its copy of the path...) to what it
    forwards: it takes Envoy's default count less those (MAX_REQUEST_HEADERS_COUNT), so that a default Envoy in
    front of the gateway (Istio's sidecar) takes whatever it forwards. Past its count, the edge answers 431
    itself, as for headers too large, and the gateway never sees the request."""
    products = f"{stack.http_url}/v1/products?pageSize=1"
    # With Host, exactly the edge's count: forwarded, and the gateway answers it.
    before = handled(stack, "gateway", "ListProducts")
    assert await asyncio.to_thread(http_get, products, many_headers(MAX_REQUEST_HEADERS_COUNT - 1)) == 200
    # Counted as the answer goes out, which may be just after the client read it.
    await eventually(lambda: handled(stack, "gateway", "ListProducts") == before + 1, "the gateway's call counted")
    assert await asyncio.to_thread(http_get, products, many_headers(MAX_REQUEST_HEADERS_COUNT)) == 431
    # Refused at the edge: the gateway handled no second call (its sidecar takes 8192 headers, so its resets
    # said nothing about whether the request got past the edge).
    assert handled(stack, "gateway", "ListProducts") == before + 1


async def test_every_one_of_many_concurrent_calls_to_a_gone_callee_gets_the_outbound_retries(stack: Stack) -> None:
    """Envoy's default circuit breaker lets a cluster have 3 retries under way: of 30 concurrent calls with the
    callee's sidecar gone, 27 failed without the retries the route promises (upstream_rq_retry_overflow),
    Register's and Login's only ones. (Last in the module: it stops catalog's sidecar, then starts it again.)"""
    calls = 30
    stats = "cluster.outbound-catalog."
    before = sidecar_stats(stack, "recommendations")
    await stack.stop_service(sidecar_name("catalog"))
    try:
        async with grpc.aio.insecure_channel(outbound_of(stack, "recommendations", "catalog")) as channel:
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
            request = catalog_pb2.BatchGetProductsRequest(product_ids=["prod_chef_knife"])
            answers = await asyncio.gather(
                *(catalog.BatchGetProducts(request, timeout=10) for _ in range(calls)), return_exceptions=True
            )
    finally:
        await stack.start_service(sidecar_name("catalog"))
    codes = [a.code() if isinstance(a, grpc.aio.AioRpcError) else a for a in answers]
    assert codes == [grpc.StatusCode.UNAVAILABLE] * calls
    after = sidecar_stats(stack, "recommendations")

    def grew(name: str) -> int:
        return after.get(stats + name, 0) - before.get(stats + name, 0)

    assert grew("upstream_rq_retry_overflow") == 0
    assert grew("upstream_rq_retry") == calls * OUTBOUND_RETRIES
