"""The edge's refusals (path variable in the query, 405) on the paths of a custom verb, with the real Envoy of
`bootstrap()` in front of a gateway that only records the calls it gets."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import free_ports
from shopmesh_platform.http_api import PATH_VARIABLE_IN_QUERY, HttpApi, bootstrap, descriptor_set
from shopmesh_platform.stack import envoy_binary


class RecordingShop(shop_pb2_grpc.ShopServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def CancelOrder(
        self, request: shop_pb2.CancelOrderRequest, context: grpc.ServicerContext
    ) -> shop_pb2.CancelOrderResponse:
        self.calls.append(("CancelOrder", request.order_id))
        return shop_pb2.CancelOrderResponse()

    def GetOrder(self, request: shop_pb2.GetOrderRequest, context: grpc.ServicerContext) -> shop_pb2.GetOrderResponse:
        self.calls.append(("GetOrder", request.order_id))
        return shop_pb2.GetOrderResponse()

    def SearchProducts(
        self, request: shop_pb2.SearchProductsRequest, context: grpc.ServicerContext
    ) -> shop_pb2.SearchProductsResponse:
        self.calls.append(("SearchProducts", request.query))
        return shop_pb2.SearchProductsResponse()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RecordingShop]]:
    shop = RecordingShop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop, server)
    gateway = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port, admin = free_ports(2)
    api = HttpApi(
        host="127.0.0.1",
        port=port,
        admin_host="127.0.0.1",
        admin_port=admin,
        gateway=f"127.0.0.1:{gateway}",
        descriptor=descriptor_set(),
    )
    config = tmp_path_factory.mktemp("edge") / "envoy.json"
    config.write_text(json.dumps(bootstrap(api)))
    argv = [str(envoy_binary()), "--config-path", str(config), "--disable-hot-restart", "--concurrency", "1"]
    with subprocess.Popen([*argv, "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as envoy:
        try:
            deadline = time.monotonic() + 30
            while True:
                assert envoy.poll() is None, envoy.stderr.read().decode() if envoy.stderr else "envoy exited"
                assert time.monotonic() < deadline, "envoy was not ready within 30 s"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as ready:
                        if ready.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", shop
        finally:
            envoy.terminate()
            envoy.wait(10)
            server.stop(0)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/orders/ord_from_the_path/:cancel?orderId=ord_from_the_query",
        "/v1/orders/ord_from_the_path//:cancel?order_id=ord_from_the_query",
        "/v1/orders/ord_from_the_path/:cancel?order%5Fid=ord_from_the_query",
    ],
)
def test_a_path_variable_in_the_query_is_refused_with_a_slash_before_the_custom_verb(
    edge: tuple[str, RecordingShop], path: str
) -> None:
    # The transcoder takes `/v1/orders/A/:cancel` for `/v1/orders/{order_id}:cancel` (order A); the edge's
    # regex `/v1/orders/[^/]+:cancel/*` does not, so the query's order is the one cancelled.
    url, shop = edge
    shop.calls.clear()
    response = httpx.post(url + path, json={}, timeout=10)
    assert ("CancelOrder", "ord_from_the_query") not in shop.calls
    assert response.status_code == 400, (response.status_code, response.text)
    assert PATH_VARIABLE_IN_QUERY in response.text


@pytest.mark.parametrize(
    "path",
    ["/v1/orders/ord_1:cancel/", "/v1/products:search/"],
)
def test_a_405_names_only_methods_the_path_takes(edge: tuple[str, RecordingShop], path: str) -> None:
    # docs/http-api.md: the transcoder takes a path with trailing slashes for the path without them, "and so
    # do this refusal and the 405s". For a custom verb it does not (404, "Could not resolve"), yet the edge
    # answers the other methods 405 with an Allow whose method then gets that 404.
    # A path no method takes is a 404 for every method, as the transcoder answers it.
    url, _ = edge
    refused = httpx.request("DELETE", url + path, timeout=10)
    assert refused.status_code in (404, 405), (refused.status_code, refused.text)
    if refused.status_code == 404:
        return
    for method in refused.headers["allow"].split(", "):
        allowed = httpx.request(method, url + path, json={} if method == "POST" else None, timeout=10)
        assert allowed.status_code != 404, (method, path, refused.headers["allow"], allowed.text)


def test_a_slash_after_a_custom_verb_makes_the_verb_part_of_the_order_id_and_never_cancels(
    edge: tuple[str, RecordingShop],
) -> None:
    # docs/http-api.md ("Errors"): `/v1/orders/ord_1:cancel/` is the order `ord_1:cancel`: a GET asks for
    # it, a POST is the 405 of `/v1/orders/{order_id}`; neither cancels `ord_1`.
    url, shop = edge
    shop.calls.clear()
    posted = httpx.post(url + "/v1/orders/ord_1:cancel/", json={}, timeout=10)
    assert (posted.status_code, posted.headers.get("allow")) == (405, "GET"), posted.text
    assert shop.calls == []
    httpx.get(url + "/v1/orders/ord_1:cancel/", timeout=10)
    assert shop.calls == [("GetOrder", "ord_1:cancel")]
