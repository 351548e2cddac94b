"""What every answer of the edge leaves out (docs/http-api.md): Envoy's name and its timing of the gateway, which
tell a client nothing it needs and a prober which proxy it faces. At the real Envoy of `bootstrap()`."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame

from .conftest import PROXIED, RecordingShop

GET_ORDER = "/shopmesh.gateway.v1.ShopService/GetOrder"


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
