"""The real Envoy of `bootstrap()` in front of a gateway that only records the calls it gets (RecordingShop):
the edge's own routing, without the rest of the stack."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.grpc_errors import FINAL_ANSWER, RETRIED_ANSWER, RETRY_PUSHBACK, SHED_ANSWER
from shopmesh_chassis.testing import accepts_connections, free_ports
from shopmesh_platform.http_api import HttpApi, bootstrap, descriptor_set
from shopmesh_platform.stack import envoy_binary

# GetOrder of an id with this prefix answers NOT_FOUND.
MISSING = "ord_missing"
# GetOrder of an id with this prefix answers the order with INTERNAL_TRAILERS in its trailers.
MARKED = "ord_marked"
# GetOrder of an id with this prefix answers the order with PROXY_HEADERS among its headers, as a proxy in front of
# the gateway (its sidecar in the mesh) would add them.
PROXIED = "ord_proxied"
PROXY_HEADERS = (("server", "envoy"), ("x-envoy-upstream-service-time", "7"))
# SearchProducts for a query of these answers the gateway's own error, whose Status (with a RetryInfo) the
# edge must pass on as it is: UNAVAILABLE (a dependency away, 503) and RESOURCE_EXHAUSTED (rate limited, 429).
COME_BACK_LATER = {
    "dependency away": (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
    "rate limited": (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
}
# SearchProducts for this query answers a final, shed UNAVAILABLE with the trailers the chassis sends with one
# (the services' markers, gRPC's "do not retry" pushback), as the gateway relays a dependency's such answer.
MARKED_FINAL_AND_SHED = "marked final and shed"
# ListProducts of this category answers products whose descriptions are as long as the catalog takes
# (shopmesh_catalog's MAX_DESCRIPTION_LENGTH): a page of them is the largest answer the API gives.
LONG_DESCRIPTIONS = "long-descriptions"
LONGEST_DESCRIPTION = 5000
INTERNAL_TRAILERS = ((RETRY_PUSHBACK, "-1"), (FINAL_ANSWER, "1"), (SHED_ANSWER, "1"), (RETRIED_ANSWER, "1"))
# The RetryInfo of those answers: not the edge's own delay, so that the test tells them apart.
GATEWAY_RETRY_DELAY = duration_pb2.Duration(seconds=7)


def gateway_error(code: grpc.StatusCode, reason: str) -> status_pb2.Status:
    """The gateway's own error of this code, with an ErrorInfo of this reason and a RetryInfo, as its services
    answer a client that should come back later."""
    details = []
    for detail in (
        error_details_pb2.ErrorInfo(reason=reason, domain="shopmesh.gateway"),
        error_details_pb2.RetryInfo(retry_delay=GATEWAY_RETRY_DELAY),
    ):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=f"the gateway's own {code.name}", details=details)


# ListOrders answers UNAUTHENTICATED with the reason the gateway gives for its `authorization` header: none,
# TOKEN_MISSING; `Bearer <EXPIRED>`, TOKEN_EXPIRED; any other, TOKEN_INVALID. Login answers it with
# INVALID_CREDENTIALS, a password refused.
EXPIRED = "expired-token"


def unauthenticated(reason: str) -> status_pb2.Status:
    """The gateway's UNAUTHENTICATED of this reason: an ErrorInfo, and nothing else."""
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="shopmesh.gateway"))
    return status_pb2.Status(code=grpc.StatusCode.UNAUTHENTICATED.value[0], message=reason.lower(), details=[packed])


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RecordingShop(shop_pb2_grpc.ShopServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def CancelOrder(
        self, request: shop_pb2.CancelOrderRequest, context: grpc.ServicerContext
    ) -> shop_pb2.CancelOrderResponse:
        self.calls.append(("CancelOrder", request.order_id))
        return shop_pb2.CancelOrderResponse()

    def PlaceOrder(
        self, request: shop_pb2.PlaceOrderRequest, context: grpc.ServicerContext
    ) -> shop_pb2.PlaceOrderResponse:
        # The expected total's amount, an int64 (a JSON string): what the body's integer string was read as.
        self.calls.append(("PlaceOrder", str(request.expected_total.amount_minor)))
        return shop_pb2.PlaceOrderResponse()

    def GetOrder(self, request: shop_pb2.GetOrderRequest, context: grpc.ServicerContext) -> shop_pb2.GetOrderResponse:
        self.calls.append(("GetOrder", request.order_id))
        if request.order_id.startswith(MISSING):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no order {request.order_id}")
        if request.order_id.startswith(MARKED):
            # An answer with a body: its metadata goes in trailers, not in the headers of a trailers-only error.
            context.set_trailing_metadata(INTERNAL_TRAILERS)
        if request.order_id.startswith(PROXIED):
            context.send_initial_metadata(PROXY_HEADERS)
        return shop_pb2.GetOrderResponse()

    def ListOrders(
        self, request: shop_pb2.ListOrdersRequest, context: grpc.ServicerContext
    ) -> shop_pb2.ListOrdersResponse:
        self.calls.append(("ListOrders", ""))
        token = dict(context.invocation_metadata()).get("authorization")
        if token is None:
            reason = "TOKEN_MISSING"
        elif token == f"Bearer {EXPIRED}":
            reason = "TOKEN_EXPIRED"
        else:
            reason = "TOKEN_INVALID"
        context.abort_with_status(rpc_status.to_status(unauthenticated(reason)))

    def Login(self, request: shop_pb2.LoginRequest, context: grpc.ServicerContext) -> shop_pb2.LoginResponse:
        self.calls.append(("Login", request.email))
        context.abort_with_status(rpc_status.to_status(unauthenticated("INVALID_CREDENTIALS")))

    def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: grpc.ServicerContext
    ) -> shop_pb2.ListProductsResponse:
        self.calls.append(("ListProducts", str(request.page_size)))
        # Long enough from a few products on for the edge to gzip a GET's answer (COMPRESS_FROM_BYTES).
        description = "A thing to buy. " * 10
        if request.category == LONG_DESCRIPTIONS:
            description = "d" * LONGEST_DESCRIPTION
        products = [
            catalog_pb2.Product(id=f"prod_{n}", name=f"Product {n}", description=description)
            for n in range(request.page_size)
        ]
        return shop_pb2.ListProductsResponse(products=products)

    def SearchProducts(
        self, request: shop_pb2.SearchProductsRequest, context: grpc.ServicerContext
    ) -> shop_pb2.SearchProductsResponse:
        self.calls.append(("SearchProducts", request.query))
        if request.query in COME_BACK_LATER:
            context.abort_with_status(rpc_status.to_status(gateway_error(*COME_BACK_LATER[request.query])))
        if request.query == MARKED_FINAL_AND_SHED:
            status = rpc_status.to_status(gateway_error(*COME_BACK_LATER["dependency away"]))
            # abort_with_status sends the status' trailing metadata as the answer's: the markers go there.
            context.abort_with_status(
                _Status(status.code, status.details, (*status.trailing_metadata, *INTERNAL_TRAILERS))
            )
        return shop_pb2.SearchProductsResponse()


@dataclass(frozen=True)
class Edge:
    url: str
    shop: RecordingShop
    admin_url: str
    log: Path
    # Envoy's stdout: its access log, a JSON line per request.
    access_log: Path
    # The metrics listener, as on Kubernetes: Envoy's metrics and the kubelet's probes, outside the cap on connections.
    metrics_url: str


@pytest.fixture(scope="module")
def edge(edge_process: Edge) -> tuple[str, RecordingShop]:
    return edge_process.url, edge_process.shop


@pytest.fixture(scope="module")
def edge_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with running_edge(tmp_path_factory.mktemp("edge")) as edge:
        yield edge


@contextmanager
def running_edge(
    folder: Path,
    configure: Callable[[dict[str, Any]], None] | None = None,
    *,
    gateway_away: bool = False,
    gateway_port: int | None = None,
    max_heap_bytes: int | None = None,
    max_connections: int | None = None,
) -> Iterator[Edge]:
    """Envoy of `bootstrap()` in front of a RecordingShop, its files in `folder`; `configure` may change the
    edge's connection manager first (a test's own setting, such as a shorter timeout than the edge's);
    `gateway_away`: nothing listens where the edge calls the gateway (the RecordingShop gets no call);
    `gateway_port`: the edge calls a test's own server on this port of 127.0.0.1 instead; `max_heap_bytes`: a
    bound on Envoy's heap of the test's own in place of the edge's; `max_connections`: a cap on its connections of the
    test's own in place of the edge's."""
    shop = RecordingShop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop, server)
    if gateway_port is not None:
        gateway = gateway_port
    elif gateway_away:
        # A port free_ports handed out: not one a server of another test, asking for any port, gets meanwhile.
        [gateway] = free_ports(1)
    else:
        gateway = server.add_insecure_port("127.0.0.1:0")
        server.start()
    port, admin, metrics = free_ports(3)
    api = HttpApi(
        host="127.0.0.1",
        port=port,
        admin_host="127.0.0.1",
        admin_port=admin,
        gateway=f"127.0.0.1:{gateway}",
        descriptor=descriptor_set(),
        metrics_port=metrics,
    )
    if max_heap_bytes is not None:
        api = dataclasses.replace(api, max_heap_bytes=max_heap_bytes)
    if max_connections is not None:
        api = dataclasses.replace(api, max_connections=max_connections)
    config = bootstrap(api)
    if configure is not None:
        [public] = [item for item in config["static_resources"]["listeners"] if item["name"] == "http-api"]
        [chain] = public["filter_chains"]
        configure(chain["filters"][0]["typed_config"])
    path = folder / "envoy.json"
    path.write_text(json.dumps(config))
    argv = [str(envoy_binary()), "--config-path", str(path), "--disable-hot-restart", "--concurrency", "1"]
    # Files, not pipes: nobody reads Envoy's output while the tests run, and a full pipe would block Envoy.
    log = folder / "envoy.log"
    access_log = folder / "access.log"
    with (
        log.open("wb") as output,
        access_log.open("wb") as lines,
        subprocess.Popen([*argv, "--log-level", "warn"], stdout=lines, stderr=output) as envoy,
    ):
        try:
            deadline = time.monotonic() + 30
            while True:
                assert envoy.poll() is None, f"envoy exited {envoy.returncode}: {log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"envoy was not ready within 30 s: {log.read_text()[-4000:]}"
                # No request before Envoy listens: its connect could take the admin port (accepts_connections).
                if not accepts_connections("127.0.0.1", admin):
                    time.sleep(0.1)
                    continue
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as ready:
                        if ready.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            yield Edge(
                f"http://127.0.0.1:{port}",
                shop,
                f"http://127.0.0.1:{admin}",
                log,
                access_log,
                f"http://127.0.0.1:{metrics}",
            )
        finally:
            envoy.terminate()
            envoy.wait(10)
            server.stop(0)
