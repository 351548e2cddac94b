"""What every answer of the edge leaves out (docs/http-api.md): Envoy's name and its timing of the gateway, which
tell a client nothing it needs and a prober which proxy it faces. At the real Envoy of `bootstrap()`, and through
the local mesh (real Envoys, the launcher's Stack), where the gateway's sidecar stands between the edge and the
gateway and is itself the gateway's published gRPC port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
import pytest_asyncio

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame
from shopmesh_platform.stack import Stack

from .conftest import PROXIED, RecordingShop

LIST_PRODUCTS = "/shopmesh.gateway.v1.ShopService/ListProducts"
GET_ORDER = "/shopmesh.gateway.v1.ShopService/GetOrder"
# No rate limit: every call of the module comes from one address.
MESH_ENV = {"gateway": {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000"}}


def proxy_headers(names: Iterable[str]) -> list[str]:
    """The names among `names` that name a proxy or time what is behind it."""
    return [name for name in names if name == "server" or name.startswith("x-envoy-")]


@pytest.mark.parametrize(
    "path",
    ["/v1/products?pageSize=1", "/v1/nothing-here", "/healthz"],
    ids=["proxied", "edge-refusal", "health"],
)
def test_an_answer_names_neither_envoy_nor_its_timing_of_the_gateway(
    edge: tuple[str, RecordingShop], path: str
) -> None:
    url, _ = edge
    answer = httpx.get(f"{url}{path}")
    assert not proxy_headers(answer.headers), answer.headers


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", f"/v1/orders/{PROXIED}", {}, b""),
        ("POST", GET_ORDER, GRPC_WEB_HEADERS, frame(shop_pb2.GetOrderRequest(order_id=PROXIED).SerializeToString())),
    ],
    ids=["http-json", "grpc-web"],
)
def test_a_proxys_name_and_timing_from_behind_the_edge_reach_no_client(
    edge: tuple[str, RecordingShop], method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    """The gateway's sidecar adds neither, but a proxy in front of the gateway (another mesh's, an older
    sidecar) may: the edge drops them from whatever the gateway's side answers."""
    url, _ = edge
    answer = httpx.request(method, f"{url}{path}", headers=headers, content=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert not proxy_headers(answer.headers), answer.headers


def test_a_proxys_name_and_timing_from_behind_the_edge_reach_no_grpc_client(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    with grpc.insecure_channel(urlsplit(url).netloc) as channel:
        _, call = shop_pb2_grpc.ShopServiceStub(channel).GetOrder.with_call(
            shop_pb2.GetOrderRequest(order_id=PROXIED), timeout=10
        )
    answered = [*call.initial_metadata(), *call.trailing_metadata()]
    assert not proxy_headers(key for key, _ in answered), answered


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def meshed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    data = tmp_path_factory.mktemp("meshed") / "data"
    services = ["gateway", "catalog", "recommendations"]
    async with Stack.for_tests(data, services=services, env=MESH_ENV, mesh=True, http=True) as stack:
        yield stack


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", "/v1/products?pageSize=1", {}, b""),
        ("GET", "/v1/products/prod_none", {}, b""),
        ("POST", LIST_PRODUCTS, GRPC_WEB_HEADERS, frame(shop_pb2.ListProductsRequest(page_size=1).SerializeToString())),
    ],
    ids=["http-json", "http-json-error", "grpc-web"],
)
async def test_through_the_mesh_an_http_answer_names_neither_envoy_nor_its_timing_of_the_gateway(
    meshed: Stack, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    assert meshed.http_url is not None
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.request(method, f"{meshed.http_url}{path}", headers=headers, content=body)
    # Answered by the gateway (a product, its NOT_FOUND), not refused on the way.
    assert answer.status_code in (200, 404), answer.text
    assert answer.headers["content-type"] in ("application/json", "application/grpc-web+proto"), answer.headers
    assert not proxy_headers(answer.headers), answer.headers


def published_port(stack: Stack) -> str:
    return stack.address("gateway")


def edge_listener(stack: Stack) -> str:
    """The gateway's sidecar's listener for the HTTP edge alone, where the edge's calls go."""
    assert stack.edge_socket is not None
    return f"unix:{stack.edge_socket}"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("listener", [published_port, edge_listener], ids=["published-port", "edge-listener"])
async def test_through_the_mesh_a_grpc_answer_of_the_gateways_sidecar_names_neither_envoy_nor_its_timing(
    meshed: Stack, listener: Callable[[Stack], str]
) -> None:
    """Each listener of the gateway's sidecar on the public side, without the HTTP edge's hygiene: the
    published port is the gateway's gRPC API itself."""
    async with grpc.aio.insecure_channel(listener(meshed)) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        call = shop.ListProducts(shop_pb2.ListProductsRequest(page_size=1), timeout=10)
        await call
        answered = [*(await call.initial_metadata() or ()), *(await call.trailing_metadata() or ())]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_none"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    answered += [*(refused.value.initial_metadata() or ()), *(refused.value.trailing_metadata() or ())]
    assert not proxy_headers(key for key, _ in answered), answered
