"""The edge's HTTP/JSON API on Kubernetes: an Envoy container (`http-api`) in the gateway's pods, configured by
the same code as `make run`'s (shopmesh_platform.http_api, through k8s/http_api.py), running the Envoy release
the tests run, with the API's descriptor set from `make proto`. The real Envoy accepts the rendered
configuration; the Service, probes and drain fit the pod."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import math
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import refused_with_the_stream_held_open
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame
from shopmesh_gateway.guard import client_address
from shopmesh_platform.http_api import (
    DESCRIPTOR_FILE,
    EDGE_MEMORY_LIMIT_MIB,
    HEALTH_PATH,
    MAX_HEAP_BYTES,
    METRICS_PATH,
    OPENAPI_FILE,
    OPENAPI_PATH,
    PUBLIC_SERVICE,
    ROUTE_TIMEOUT,
    STOREFRONT_CSP,
    STOREFRONT_FILES,
    bootstrap,
    descriptor_set,
    max_heap_bytes,
    openapi_document,
    storefront_folder,
)
from shopmesh_platform.mesh.envoy import CONNECTIONS_MONITOR, TRACES_CLUSTER, cluster, heap_monitor_of
from shopmesh_platform.stack import envoy_binary
from shopmesh_platform.topology import SERVICES, is_edge
from shopmesh_platform.traces import load

from .k8skit import (
    ENVOY_LOG,
    ROOT,
    Docs,
    find,
    http_api,
    objects_of,
    render,
    running_http_api,
    storefront_countries,
    trace_sink,
)

EDGE = next(name for name in SERVICES if is_edge(name))
PORT = 8080
METRICS_PORT = 9465
MOUNT = "/etc/shopmesh/http-api"
BOUND = float(ROUTE_TIMEOUT.removesuffix("s"))
SHORT_BOUND = 6.0


def pod_of(docs: Docs, name: str = EDGE) -> dict[str, Any]:
    return find(docs, "Deployment", name)["spec"]["template"]


def container(docs: Docs) -> dict[str, Any]:
    [found] = [c for c in pod_of(docs)["spec"]["containers"] if c["name"] == "http-api"]
    return found


def files_of(docs: Docs) -> dict[str, bytes]:
    """The files the container reads from its ConfigMap: name → contents."""
    config_map = find(docs, "ConfigMap", f"{EDGE}-http-api")
    text = {name: content.encode() for name, content in config_map["data"].items()}
    return text | {name: base64.b64decode(content) for name, content in config_map["binaryData"].items()}


def config_of(docs: Docs) -> dict[str, Any]:
    """The Envoy configuration of the container."""
    return json.loads(files_of(docs)[http_api.CONFIG])


def test_the_committed_chart_files_are_what_k8s_http_api_writes() -> None:
    assert http_api.main(["--check"]) == 0, "run `make http-api` (make lint checks this too)"


def test_the_storefronts_countries_are_what_k8s_storefront_countries_writes() -> None:
    """The checkout's country picker offers orders' own COUNTRIES, through a file a pycountry release can stale."""
    assert storefront_countries.main(["--check"]) == 0, "run `make storefront-countries` (make lint checks this too)"


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_the_pod_runs_the_configuration_and_descriptor_make_run_uses(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    for docs in (rendered[value_set, EDGE], rendered[value_set, render.UMBRELLA]):
        files = files_of(docs)
        config = json.loads(files[http_api.CONFIG])
        assert files[DESCRIPTOR_FILE] == descriptor_set().read_bytes(), "the descriptor set `make proto` generates"
        assert files[OPENAPI_FILE] == openapi_document().read_bytes(), "the OpenAPI document `make proto` writes"
        for name in STOREFRONT_FILES:
            assert files[name] == (storefront_folder() / name).read_bytes(), f"the storefront's {name}"
        assert set(files) == {http_api.CONFIG, http_api.TRACED_CONFIG, DESCRIPTOR_FILE, OPENAPI_FILE, *STOREFRONT_FILES}
        assert config == bootstrap(http_api.kubernetes_api())
        assert json.loads(files[http_api.TRACED_CONFIG]) == bootstrap(http_api.kubernetes_api(traced=True))
        listeners = {x["name"]: x["address"]["socket_address"] for x in config["static_resources"]["listeners"]}
        assert listeners == {
            "http-api": {"address": "0.0.0.0", "port_value": PORT},
            "metrics": {"address": "0.0.0.0", "port_value": METRICS_PORT},
        }
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "admin never off the pod"
        [gateway] = [c for c in config["static_resources"]["clusters"] if c["name"] == "gateway"]
        endpoint = gateway["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert endpoint["socket_address"] == {"address": "127.0.0.1", "port_value": 50051}, "the gateway in the pod"
        mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "http-api")
        assert mount == {"name": "http-api", "mountPath": MOUNT, "readOnly": True}
        volume = next(v for v in pod_of(docs)["spec"]["volumes"] if v["name"] == "http-api")
        assert volume == {"name": "http-api", "configMap": {"name": f"{EDGE}-http-api"}}
        # Traced when the services are (the value sets leave global.otel at the dev Jaeger).
        assert container(docs)["args"][:2] == ["--config-path", f"{MOUNT}/{http_api.TRACED_CONFIG}"]


def test_the_image_is_the_envoy_release_the_tests_run(rendered: dict[tuple[str, str], Docs]) -> None:
    version = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", version)
    assert found, version
    assert container(rendered["default", EDGE])["image"] == f"envoyproxy/envoy-distroless:v{found.group(1)}"


@pytest.mark.parametrize("otel", [{}, {"endpoint": ""}], ids=["traced", "untraced"])
def test_envoy_accepts_the_rendered_configuration(helm_dir: Path, tmp_path: Path, otel: dict[str, Any]) -> None:
    docs = objects_of(helm_dir, EDGE, {"global": {"otel": otel}})
    unpack(files_of(docs), tmp_path)
    args = [arg.replace(f"{MOUNT}/", f"{tmp_path}/") for arg in container(docs)["args"]]
    assert str(tmp_path) in (tmp_path / http_api.CONFIG).read_text()
    checked = envoy_validates(args)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # And refuses one whose descriptor set is not the API's (the check is real).
    (tmp_path / DESCRIPTOR_FILE).write_bytes(b"not a descriptor set")
    assert envoy_validates(args).returncode != 0


def unpack(files: dict[str, bytes], folder: Path) -> None:
    """The ConfigMap's files into `folder`, the configurations naming them there rather than where the pod
    mounts them."""
    for name, content in files.items():
        if name in (http_api.CONFIG, http_api.TRACED_CONFIG):
            content = content.replace(f"{MOUNT}/".encode(), f"{folder}/".encode())
        (folder / name).write_bytes(content)


def envoy_validates(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The real Envoy's verdict on a container's arguments (`--mode validate`: loaded, never served)."""
    argv = [str(envoy_binary()), "--mode", "validate", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_service_probes_and_drain_fit_the_pod(rendered: dict[tuple[str, str], Docs], value_set: str) -> None:
    docs = rendered[value_set, EDGE]
    http = container(docs)
    assert http["ports"] == [
        {"name": "http", "containerPort": PORT, "protocol": "TCP"},
        {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
    ]
    service_ports = {p["name"]: p for p in find(docs, "Service", EDGE)["spec"]["ports"]}
    for name, port in (("http", PORT), ("http-metrics", METRICS_PORT)):
        expected = {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": "http"}
        assert service_ports[name] == expected
    for probe in ("readinessProbe", "livenessProbe"):
        # Envoy answers it itself, on the listener outside the cap on the public port's connections.
        assert http[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "http-metrics"}, probe
    # Envoy stops at once on SIGTERM: it keeps relaying until the gateway has drained, and stops in time.
    env = find(docs, "ConfigMap", EDGE)["data"]
    drained = float(env["DRAIN_DELAY_SECONDS"]) + float(env["SHUTDOWN_GRACE_SECONDS"])
    assert http["lifecycle"]["preStop"]["sleep"]["seconds"] == math.ceil(drained)
    assert drained < pod_of(docs)["spec"]["terminationGracePeriodSeconds"]
    security = http["securityContext"]
    assert security["readOnlyRootFilesystem"]
    assert security["runAsNonRoot"]
    assert security["capabilities"]["drop"] == ["ALL"]
    annotations = pod_of(docs)["metadata"]["annotations"]
    assert "checksum/http-api" in annotations, "a new configuration rolls the pods"


def test_only_the_edge_runs_it(rendered: dict[tuple[str, str], Docs], helm_dir: Path) -> None:
    for name in SERVICES:
        containers = [c["name"] for c in pod_of(rendered["default", name], name)["spec"]["containers"]]
        assert ("http-api" in containers) == is_edge(name)
    with pytest.raises(Exception, match="only the edge"):
        render.render(helm_dir, "catalog", "default", values={"httpApi": {"enabled": True}})


def edge_with_drain(helm_dir: Path, delay: float, grace: float, readiness_period: int = 3) -> Docs:
    """The edge's chart rendered with these drain settings (and readiness period, which the delay must reach:
    one failed probe, so the period alone)."""
    drain = {"drainDelaySeconds": delay, "shutdownGraceSeconds": grace}
    probes = {"readinessPeriodSeconds": readiness_period, "readinessFailureThreshold": 1}
    return objects_of(helm_dir, EDGE, {"global": {"drain": drain}, "probes": probes})


def test_envoy_outlasts_a_fractional_drain_in_whole_seconds(helm_dir: Path) -> None:
    docs = edge_with_drain(helm_dir, 2.4, 2.4, readiness_period=2)
    assert container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"] == 5, "4.8 s rounded up, not down"


def test_a_port_the_configuration_does_not_listen_on_fails_the_render(helm_dir: Path) -> None:
    with pytest.raises(Exception, match=r"httpApi\.port is fixed at 8080"):
        render.render(helm_dir, EDGE, "default", values={"httpApi": {"port": 9090}})


def test_the_metrics_port_serves_envoys_metrics_and_nothing_else_of_its_admin_interface(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    with running_http_api(files_of(rendered["default", EDGE]), tmp_path) as ports:
        metrics = f"http://127.0.0.1:{ports[METRICS_PORT]}"
        with urllib.request.urlopen(f"{metrics}{METRICS_PATH}", timeout=10) as response:
            body = response.read().decode()
        series = 'envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="http_api"}'
        assert series in body
        refused = [("GET", "/config_dump"), ("POST", "/quitquitquit"), ("GET", "/stats"), ("POST", METRICS_PATH)]
        for method, path in refused:
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(urllib.request.Request(f"{metrics}{path}", method=method), timeout=10)
            assert caught.value.code == 404, (method, path)
        # While the admin interface itself, on loopback in the pod, has them all.
        admin = f"http://127.0.0.1:{ports[http_api.ADMIN_PORT]}"
        with urllib.request.urlopen(f"{admin}/config_dump", timeout=10) as response:
            assert response.status == 200


def test_the_probes_port_is_answered_by_envoy_outside_the_cap_on_the_public_ports_connections(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    docs = rendered["default", EDGE]
    http = container(docs)
    ports = {port["name"]: port["containerPort"] for port in http["ports"]}
    probed = {ports[http[probe]["httpGet"]["port"]] for probe in ("readinessProbe", "livenessProbe")}
    assert probed == {METRICS_PORT}
    [listener] = [
        x
        for x in config_of(docs)["static_resources"]["listeners"]
        if x["address"]["socket_address"]["port_value"] in probed
    ]
    assert listener["ignore_global_conn_limit"] is True, "a flood of the public port's connections reaches the probes"
    # (The flood itself, at the real Envoy of the same bootstrap(): libs/platform/tests/test_http_api_health.py.)
    with running_http_api(files_of(docs), tmp_path) as local, httpx.Client(timeout=10) as client:
        for method in ("GET", "HEAD"):
            answer = client.request(method, f"http://127.0.0.1:{local[METRICS_PORT]}{HEALTH_PATH}")
            assert answer.status_code == 200, (method, answer.status_code, answer.text)
        answer = client.delete(f"http://127.0.0.1:{local[METRICS_PORT]}{HEALTH_PATH}")
        assert (answer.status_code, answer.headers["allow"]) == (405, "GET, HEAD")


# Linux's default pipe capacity: a writer whose output nobody reads blocks past it.
PIPE_BYTES = 64 * 1024
# Requests at Envoy's debug level that write several pipes' worth (each writes a few KiB).
VERBOSE_REQUESTS = 300


def test_the_rendered_edge_answers_on_after_writing_more_output_than_a_pipe_holds(tmp_path: Path) -> None:
    """running_http_api runs Envoy as long as a test needs it, however much it writes: output held in a pipe
    nobody reads blocks Envoy on its next write once the pipe is full, and every call after it hangs."""
    files = {path.name: path.read_bytes() for path in http_api.FILES.iterdir()}
    with running_http_api(files, tmp_path) as ports, httpx.Client(timeout=10) as client:
        admin = f"http://127.0.0.1:{ports[http_api.ADMIN_PORT]}"
        client.post(f"{admin}/logging?level=debug").raise_for_status()
        for _ in range(VERBOSE_REQUESTS):
            assert client.get(f"http://127.0.0.1:{ports[PORT]}{HEALTH_PATH}").status_code == 200
    # What the requests wrote did not fit a pipe several times over: the test proved what it claims.
    assert (tmp_path / ENVOY_LOG).stat().st_size > 4 * PIPE_BYTES


def test_prometheus_scrapes_the_edges_envoy_beside_the_service(rendered: dict[tuple[str, str], Docs]) -> None:
    docs = rendered["monitoring", EDGE]
    endpoints = {e["port"]: e["path"] for e in find(docs, "ServiceMonitor", EDGE)["spec"]["endpoints"]}
    assert endpoints == {"metrics": "/metrics", "http-metrics": METRICS_PATH}


def test_there_is_never_a_zero_second_sleep(helm_dir: Path) -> None:
    # A sleep of 0 s needs a feature gate some clusters lack. A drain delay below one readiness period (at
    # least 1 s) fails the render, so the shortest drain still sleeps a whole second.
    with pytest.raises(Exception, match="readinessPeriodSeconds"):
        edge_with_drain(helm_dir, 0, 0)
    docs = edge_with_drain(helm_dir, 1, 0, readiness_period=1)
    assert container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"] == 1


class RecordingShop(shop_pb2_grpc.ShopServiceServicer):
    """A gateway that keeps, of each ListProducts, the peer it came from and its x-forwarded-for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: grpc.ServicerContext
    ) -> shop_pb2.ListProductsResponse:
        forwarded = [value for key, value in context.invocation_metadata() if key == "x-forwarded-for"]
        self.calls.append((context.peer(), forwarded))
        return shop_pb2.ListProductsResponse()


# A method of ShopService's that a gateway newer than the chart's descriptor set serves (a canary's image).
NEWER_METHOD = f"/{PUBLIC_SERVICE}/ANewerMethod"
# What the gateway's gRPC server answers for a method it does not have.
GATEWAYS_UNKNOWN_METHOD = "Method not found!"


@contextlib.contextmanager
def recording_gateway(*, newer: bool = False) -> Iterator[tuple[RecordingShop, int]]:
    """A RecordingShop on a free loopback port, and with `newer` NEWER_METHOD too (bytes in, b"newer" back);
    yields it and the port."""
    shop = RecordingShop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop, server)
    if newer:
        service, method = NEWER_METHOD.strip("/").split("/")
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"newer")
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield shop, port
    finally:
        server.stop(0)


def test_behind_a_sidecar_the_gateway_limits_the_client_the_ingress_named_not_the_pod(
    helm_dir: Path, tmp_path: Path
) -> None:
    """Under a mesh the sidecar hands the edge every request on loopback, with the X-Forwarded-For an ingress
    appended the client to (docs/kubernetes.md, "Rate limits behind proxies"): the gateway, trusting
    loopback (the chart's TRUSTED_PROXIES), must find that client. Envoy, seeing a loopback peer, appends
    not the peer but the pod's own address; the gateway stops at it, and every HTTP client of the pod
    shares one rate-limit bucket."""
    docs = objects_of(helm_dir, EDGE, {})
    trusted = [
        ipaddress.ip_network(entry)
        for entry in find(docs, "ConfigMap", EDGE)["data"]["TRUSTED_PROXIES"].split(",")
        if entry.strip()
    ]
    with recording_gateway() as (shop, gateway), running_http_api(files_of(docs), tmp_path, gateway=gateway) as ports:
        for client in ("203.0.113.7", "198.51.100.9"):
            # What the sidecar relays from loopback: the ingress's header, the client appended.
            response = httpx.get(
                f"http://127.0.0.1:{ports[PORT]}/v1/products", headers={"x-forwarded-for": client}, timeout=10
            )
            assert response.status_code == 200, response.text
    seen = [client_address(peer, forwarded, trusted) for peer, forwarded in shop.calls]
    assert seen == ["203.0.113.7", "198.51.100.9"], shop.calls


def test_the_pod_serves_the_openapi_document_make_proto_writes(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    with running_http_api(files_of(rendered["default", EDGE]), tmp_path) as ports:
        url = f"http://127.0.0.1:{ports[PORT]}{OPENAPI_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["content-type"] == "application/json"
            assert response.read() == openapi_document().read_bytes()


def test_the_pod_serves_the_storefront_make_run_serves(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    with running_http_api(files_of(rendered["default", EDGE]), tmp_path) as ports:
        for name, (path, content_type) in STOREFRONT_FILES.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[PORT]}{path}", timeout=10) as response:
                assert response.headers["content-type"] == content_type
                assert response.headers["content-security-policy"] == STOREFRONT_CSP
                assert response.read() == (storefront_folder() / name).read_bytes()


async def test_the_pod_refuses_a_held_open_stream_to_a_method_the_api_lacks_at_once(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """The chart's edge as make run's (libs/platform/tests/test_http_api_grpc_refused.py): a streaming call of a
    ShopService method that does not exist, its client's side held open, is the gateway's UNIMPLEMENTED on its
    headers, not held by the buffer filter until the client's deadline; the methods the API has still reach
    the gateway."""
    with (
        recording_gateway() as (shop, gateway),
        running_http_api(files_of(rendered["default", EDGE]), tmp_path, gateway=gateway) as ports,
    ):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[PORT]}") as channel:
            refused = await refused_with_the_stream_held_open(channel, f"/{PUBLIC_SERVICE}/NoSuchMethod")
            await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(), timeout=10)
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED, refused
    assert refused.details() == GATEWAYS_UNKNOWN_METHOD
    assert len(shop.calls) == 1


async def test_a_gateway_newer_than_the_charts_descriptor_set_is_reached_over_grpc_for_its_new_methods(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A canary of the gateway with a newer image under the same chart: the edge's routes come from the chart's
    descriptor set, yet a gRPC client reaches the method the canary added (HTTP/JSON needs the descriptor set
    that maps it: a new chart)."""
    with (
        recording_gateway(newer=True) as (_, gateway),
        running_http_api(files_of(rendered["default", EDGE]), tmp_path, gateway=gateway) as ports,
    ):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[PORT]}") as channel:
            answer = await channel.unary_unary(NEWER_METHOD)(b"", timeout=10)
    assert answer == b"newer"


# What Envoy says when a stream outlives its bound (max_stream_duration, or a client's shorter grpc-timeout).
ENVOYS_BOUND = "downstream duration timeout"
# What a gRPC server says when a call outlives the deadline it was given (grpc-timeout).
GATEWAYS_DEADLINE = "Deadline Exceeded"


class StuckShop(shop_pb2_grpc.ShopServiceServicer):
    """A gateway whose ListProducts never answers (until released): only the edge's bound can end the call."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: grpc.ServicerContext
    ) -> shop_pb2.ListProductsResponse:
        self.released.wait(120)
        return shop_pb2.ListProductsResponse()


@contextlib.contextmanager
def stuck_gateway() -> Iterator[int]:
    """A StuckShop on a free loopback port; yields the port."""
    shop = StuckShop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        shop.released.set()
        server.stop(0)


def grpc_web_list_products(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    message = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    return httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts",
        content=frame(message),
        headers={**GRPC_WEB_HEADERS, **(headers or {})},
        timeout=BOUND + 10,
    )


def test_a_call_the_gateway_never_answers_ends_at_the_edges_bound_or_the_clients_shorter_deadline(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """An HTTP/JSON or gRPC-Web client sends no deadline: ROUTE_TIMEOUT bounds its call (a stalled gateway
    held it for ever when the route's max_stream_duration had Envoy ignore the route's timeout)."""
    # The chart's configuration with its bound shortened (ROUTE_TIMEOUT's 30 s, wherever the route states it) to
    # SHORT_BOUND: the same routes and filters, proved in a fifth of the time.
    files = files_of(rendered["default", EDGE])
    stated = files[http_api.CONFIG].count(f'"{ROUTE_TIMEOUT}"'.encode())
    assert stated >= 3, "the route's timeout and its stream bounds"
    files[http_api.CONFIG] = files[http_api.CONFIG].replace(
        f'"{ROUTE_TIMEOUT}"'.encode(), f'"{SHORT_BOUND:g}s"'.encode()
    )
    with stuck_gateway() as gateway, running_http_api(files, tmp_path, gateway=gateway) as ports:
        url = f"http://127.0.0.1:{ports[PORT]}"

        def timed(call: Callable[[], Any]) -> tuple[float, Any]:
            started = time.monotonic()
            try:
                outcome = call()
            except (httpx.TimeoutException, grpc.RpcError) as failed:
                outcome = failed
            return time.monotonic() - started, outcome

        def grpc_call(timeout: float) -> Any:
            with grpc.insecure_channel(f"127.0.0.1:{ports[PORT]}") as channel:
                return shop_pb2_grpc.ShopServiceStub(channel).ListProducts(
                    shop_pb2.ListProductsRequest(), timeout=timeout
                )

        calls: dict[str, Callable[[], Any]] = {
            "http-json": lambda: httpx.get(f"{url}/v1/products", timeout=SHORT_BOUND + 10),
            "grpc-web": lambda: grpc_web_list_products(url),
            # A client's shorter deadline still wins; a longer one is cut to the edge's bound.
            "grpc-web 2 s": lambda: grpc_web_list_products(url, {"grpc-timeout": "2S"}),
            "grpc 60 s": lambda: grpc_call(60),
        }
        ended = "http.http_api.downstream_rq_max_duration_reached"
        with futures.ThreadPoolExecutor(len(calls)) as pool:
            running = {name: pool.submit(timed, call) for name, call in calls.items()}
            # The client's 2 s deadline is the shortest: when its answer is in, Envoy has ended at most that
            # call (counted when Envoy, not the gateway, was first to act on the deadline) and none at the
            # edge's bound, 4 s further off: the client's deadline ended it.
            running["grpc-web 2 s"].result()
            ended_first = envoy_counter(ports, ended)
            answered = {name: outcome.result() for name, outcome in running.items()}
        # Then the edge's own stream bound ended the calls that sent no deadline, as Envoy counts it (an HTTP
        # client giving up instead would raise): the gRPC-Web call, and the HTTP/JSON one when Envoy's message
        # says so. The transcoder gave the gateway the bound as grpc-timeout, so its gRPC server may end the
        # HTTP/JSON call in the same instant (its message then the gateway's, checked below), as it may the
        # gRPC call's capped 60 s: those are not counted here.
        ended_last = envoy_counter(ports, ended)
        http_json = answered["http-json"][1]
        by_envoy = 1 + (isinstance(http_json, httpx.Response) and http_json.json().get("message") == ENVOYS_BOUND)
        assert ended_first <= 1, (ended_first, answered)
        assert ended_last - ended_first >= by_envoy, (ended_first, ended_last, answered)
    # What each client was answered, and that no bound came early: lower bounds on the time taken, which a
    # loaded machine cannot break (it makes calls slower, never faster). What upper bounds with a guessed
    # slack proved, Envoy's count and message show.
    took, response = answered["http-json"]
    assert isinstance(response, httpx.Response), f"no answer after {took:.0f} s"
    assert (response.status_code, response.json()["code"]) == (504, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    # Envoy's own message, or the gateway's: Envoy gave it the bound as grpc-timeout, and its gRPC server may act
    # on it in the same instant (the client sent no deadline: either way the edge's bound ended it).
    assert response.json()["message"] in {ENVOYS_BOUND, GATEWAYS_DEADLINE}, "the edge's bound ended it"
    assert took > SHORT_BOUND - 1
    # Envoy's gRPC-Web answer to its own 504 is UNAVAILABLE, which a client may retry. At a client's own
    # deadline the gateway's gRPC server, which got it as grpc-timeout, may end the call first, in the same
    # instant: DEADLINE_EXCEEDED.
    unavailable, deadline_exceeded = (
        str(code.value[0]) for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    )
    for name, bound, statuses in [
        ("grpc-web", SHORT_BOUND, {unavailable}),
        ("grpc-web 2 s", 2, {unavailable, deadline_exceeded}),
    ]:
        took, response = answered[name]
        assert isinstance(response, httpx.Response), f"{name}: no answer after {took:.0f} s"
        assert response.headers["grpc-status"] in statuses, (name, response.headers)
        assert took > bound - 1, (name, took)
    assert answered["grpc-web"][1].headers["grpc-message"] == ENVOYS_BOUND
    took, failed = answered["grpc 60 s"]
    assert isinstance(failed, grpc.RpcError), failed
    assert failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Whether Envoy or the gateway (given the capped deadline) ended it, it says DEADLINE_EXCEEDED, as the
    # client's own 60 s would: the time taken is the only witness. Measured against that deadline, not the
    # edge's bound plus a guessed slack: a loaded machine does not add 50 s.
    assert SHORT_BOUND - 1 < took < 60 - 10, "the edge's bound, not the client's 60 s"


# The edge's memory: its heap bounded under the container's limit.


def heap_bound_of(docs: Docs) -> int:
    """The bound on Envoy's heap the container merges into its configuration at start."""
    [monitor] = overlay_of(docs)["overload_manager"]["resource_monitors"]
    assert monitor == heap_monitor_of(monitor["typed_config"]["max_heap_size_bytes"])
    bound: int = monitor["typed_config"]["max_heap_size_bytes"]
    return bound


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_the_edges_heap_is_bounded_under_its_containers_memory_limit_as_make_run_bounds_it(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    docs = rendered[value_set, EDGE]
    assert container(docs)["resources"]["limits"]["memory"] == f"{EDGE_MEMORY_LIMIT_MIB}Mi"
    assert heap_bound_of(docs) == MAX_HEAP_BYTES == max_heap_bytes(EDGE_MEMORY_LIMIT_MIB * 2**20)
    # The overload actions the configuration names act on that monitor, which the file leaves to the start, and
    # on the connections' monitor (idle connections shed near the cap), which the file has.
    config = config_of(docs)["overload_manager"]
    assert [monitor["name"] for monitor in config["resource_monitors"]] == [CONNECTIONS_MONITOR]
    assert {trigger["name"] for action in config["actions"] for trigger in action["triggers"]} == {
        "envoy.resource_monitors.fixed_heap",
        CONNECTIONS_MONITOR,
    }


# docs/kubernetes.md#sizing's row for the edge: its Envoy's resident memory at rest, as measured (not here: memory
# is measured by k8s/measure_rss.py and recorded in the doc, never asserted from a run in a test).
EDGE_SIZING_ROW = re.compile(r"^\| gateway's edge \(`http-api`, Envoy\) \| (\d+) \|", re.MULTILINE)


def test_the_edges_memory_request_is_its_measured_rest_with_headroom(rendered: dict[tuple[str, str], Docs]) -> None:
    """docs/kubernetes.md#sizing's rule, request = idle RSS + headroom (~30 %), for the edge's Envoy: a request of
    32Mi, under half of what it holds at rest, let the scheduler place a gateway pod on a node without room for
    it."""
    [idle] = EDGE_SIZING_ROW.findall((ROOT / "docs" / "kubernetes.md").read_text())
    resources = container(rendered["default", EDGE])["resources"]
    request, limit = (int(resources[kind]["memory"].removesuffix("Mi")) for kind in ("requests", "limits"))
    assert request >= 1.25 * int(idle), f"a request of {request}Mi for an Envoy holding {idle} MiB at rest"
    assert limit >= 1.25 * request, "the limit leaves room above the request (the heap grows under load)"


@pytest.mark.parametrize(
    ("limit", "limit_bytes"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("300M", 300 * 10**6), (200_000_000, 200_000_000)],
)
def test_a_memory_limit_the_values_give_the_edge_bounds_its_heap_under_it(
    helm_dir: Path, limit: str | int, limit_bytes: int
) -> None:
    docs = objects_of(helm_dir, EDGE, {"httpApi": {"resources": {"limits": {"memory": limit}}}})
    assert container(docs)["resources"]["limits"]["memory"] == limit
    assert heap_bound_of(docs) == max_heap_bytes(limit_bytes)


@pytest.mark.parametrize("limit", ["0.5Gi", "1e9", None])
def test_a_memory_limit_the_edge_cannot_bound_its_heap_under_fails_the_render(
    helm_dir: Path, limit: str | None
) -> None:
    with pytest.raises(Exception, match=r"httpApi\.resources\.limits\.memory.*the edge's Envoy bounds its heap"):
        objects_of(helm_dir, EDGE, {"httpApi": {"resources": {"limits": {"memory": limit}}}})


# The edge's spans: where the services' go (global.otel), with their sampling.


def overlay_of(docs: Docs) -> dict[str, Any]:
    """What the container merges into its configuration file at start (--config-yaml)."""
    args = container(docs)["args"]
    merged: dict[str, Any] = json.loads(args[args.index("--config-yaml") + 1])
    return merged


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_the_edge_sends_its_spans_where_the_services_send_theirs(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    docs = rendered[value_set, EDGE]
    env = find(docs, "ConfigMap", EDGE)["data"]
    collector = urllib.parse.urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert collector.hostname is not None
    assert collector.port is not None
    overlay = overlay_of(docs)
    assert overlay["static_resources"]["clusters"] == [
        cluster(TRACES_CLUSTER, collector.hostname, collector.port, dns=True)
    ]
    [layer] = overlay["layered_runtime"]["layers"]
    sampling = layer["static_layer"]["tracing.random_sampling"]
    assert sampling["numerator"] / 10_000 == float(env["OTEL_TRACES_SAMPLER_RATIO"])
    # Whatever the denominator says, Envoy draws out of 10,000 (a MILLION made every ratio ≥ 0.01 trace all).
    assert sampling["denominator"] == "TEN_THOUSAND"


@pytest.mark.parametrize(
    ("endpoint", "host", "port"),
    [
        ("http://collector.observability:4319/", "collector.observability", 4319),
        ("otel:4320", "otel", 4320),
        ("http://[fd00::1]:4317", "fd00::1", 4317),
    ],
)
def test_another_collector_and_ratio_reach_the_edges_configuration(
    helm_dir: Path, endpoint: str, host: str, port: int
) -> None:
    otel = {"endpoint": endpoint, "port": port, "samplerRatio": 0.125, "peers": [{"podSelector": {}}]}
    overlay = overlay_of(objects_of(helm_dir, EDGE, {"global": {"otel": otel}}))
    assert overlay["static_resources"]["clusters"] == [cluster(TRACES_CLUSTER, host, port, dns=True)]
    assert overlay["layered_runtime"]["layers"][0]["static_layer"]["tracing.random_sampling"]["numerator"] == 1250


def test_without_an_endpoint_the_edge_makes_no_spans(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, EDGE, {"global": {"otel": {"endpoint": ""}}})
    assert container(docs)["args"][:2] == ["--config-path", f"{MOUNT}/{http_api.CONFIG}"]
    assert set(overlay_of(docs)) == {"overload_manager"}, "no traces cluster, no sampling"
    assert "tracing" not in json.dumps(config_of(docs)), "the untraced configuration"


@pytest.mark.parametrize(
    ("otel", "problem"),
    [
        ({"endpoint": "https://collector.example.com:4317"}, "the edge's Envoy (httpApi) sends its spans without TLS"),
        ({"endpoint": "HTTPS://collector.example.com:4317"}, "the edge's Envoy (httpApi) sends its spans without TLS"),
        ({"samplerRatio": 0.00004}, "the edge's Envoy (httpApi) samples in steps of 0.0001, so it would trace nothing"),
    ],
)
def test_spans_the_edge_could_not_send_as_the_services_do_fail_the_render(
    helm_dir: Path, otel: dict[str, Any], problem: str
) -> None:
    otel = {"endpoint": "http://collector.example.com:4317", "peers": [{"podSelector": {}}], **otel}
    with pytest.raises(Exception, match=re.escape(problem)):
        objects_of(helm_dir, EDGE, {"global": {"otel": otel}})


def edge_spans(folder: Path, wanted: int, wait: float = 60) -> list[dict[str, Any]]:
    """The spans the edge exported into the trace sink's `folder`, once there are `wanted` (Envoy sends them
    in batches, at least every 5 s), or all there are after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        spans = [span for trace in load(folder) for span in trace.spans if span["service"] == "http-api"]
        if len(spans) >= wanted or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def wait_for(condition: Callable[[], bool], what: str, bound: float = 60) -> None:
    """Until `condition()` holds; the bound only stops a hang."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound:g} s: {what}"
        time.sleep(0.2)


def envoy_counter(ports: dict[int, int], name: str) -> int:
    """A counter of the running edge's Envoy, from its admin interface."""
    url = f"http://127.0.0.1:{ports[http_api.ADMIN_PORT]}/stats?filter=^{re.escape(name)}$"
    with urllib.request.urlopen(url, timeout=10) as response:
        [line] = response.read().decode().splitlines()
    return int(line.removeprefix(f"{name}: "))


# A collector's full Service name, which the chart requires with Istio (its provider finds the collector by it).
MESH_COLLECTOR = "collector.observability.svc.cluster.local"


def run_traced_edge(helm_dir: Path, scratch: Path, sink_port: int, ratio: float, mesh: str = "") -> Any:
    """The edge's Envoy as the chart renders it with a collector at `sink_port` on loopback. With Istio the chart
    takes only a Service's full name: rendered with one, which the edge's `traces` cluster then reaches on
    loopback instead (no cluster DNS here)."""
    host = MESH_COLLECTOR if mesh == "istio" else "127.0.0.1"
    otel = {"endpoint": f"http://{host}:{sink_port}", "port": sink_port, "samplerRatio": ratio}
    otel["peers"] = [{"podSelector": {}}]
    docs = objects_of(helm_dir, EDGE, {"global": {"otel": otel, "mesh": mesh}})
    args = [arg.replace(f'"{MESH_COLLECTOR}"', '"127.0.0.1"') for arg in container(docs)["args"]]
    return running_http_api(files_of(docs), scratch, args)


def test_the_rendered_edge_exports_a_span_per_request_to_the_collector(helm_dir: Path, tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    with trace_sink(spans_dir) as sink_port, run_traced_edge(helm_dir, tmp_path, sink_port, 1.0) as ports:
        url = f"http://127.0.0.1:{ports[PORT]}{OPENAPI_PATH}"
        for _ in range(5):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        # The gateway is not there: the call fails, and its span says so.
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{ports[PORT]}/v1/products", timeout=10)
        assert failed.value.code == 503
        # A client's trace goes on through the edge; one it did not sample is not sampled here either.
        for flags in ("01", "00"):
            parent = {"traceparent": f"00-{client_trace}-b7ad6b7169203331-{flags}"}
            urllib.request.urlopen(urllib.request.Request(url, headers=parent), timeout=10).close()
        spans = edge_spans(spans_dir, 7)
    assert len(spans) == 7, spans
    assert all(span["kind"] == "server" for span in spans)
    [continued] = [span for span in spans if span["trace_id"] == client_trace]
    assert continued["parent_span_id"] == "b7ad6b7169203331"
    started = [span for span in spans if span is not continued]
    assert all(span["parent_span_id"] == "" for span in started), "each other request starts a trace"
    assert len({span["trace_id"] for span in started}) == 6
    assert [span["status"] for span in started].count("error") == 1


def test_at_a_ratio_of_zero_the_edge_traces_nothing_whatever_the_client_asks(helm_dir: Path, tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    with trace_sink(spans_dir) as sink_port, run_traced_edge(helm_dir, tmp_path, sink_port, 0.0) as ports:
        url = f"http://127.0.0.1:{ports[PORT]}{OPENAPI_PATH}"
        for _ in range(10):
            urllib.request.urlopen(url, timeout=10).close()
        # A sampled traceparent, and Envoy's own ways of asking for a trace.
        asking = [
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            {"x-client-trace-id": "look-at-me"},
            {"x-envoy-force-trace": "true"},
        ]
        for headers in asking * 3:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).close()
        # Not a quiet window of a guessed length: Envoy's own counters say when a span would have gone. Each
        # request is done (its span, had it one, ended), then every worker's tracer flushes what it holds (on
        # its 5 s timer; twice as many flushes as workers since then, so a starved worker's first one is not
        # mistaken for all of them). What the edge sent by then is all it would ever send of these requests.
        wait_for(lambda: envoy_counter(ports, "http.http_api.downstream_rq_completed") >= 19, "the 19 requests done")
        workers = envoy_counter(ports, "server.concurrency")
        flushed = envoy_counter(ports, "tracing.opentelemetry.timer_flushed")
        wait_for(
            lambda: envoy_counter(ports, "tracing.opentelemetry.timer_flushed") >= flushed + 2 * workers,
            "every worker's tracer flushed since",
        )
        sent = envoy_counter(ports, "tracing.opentelemetry.spans_sent")
        stored = edge_spans(spans_dir, 1, wait=0)
    assert (sent, stored) == (0, [])


def test_at_a_ratio_of_one_half_the_edge_traces_about_half_the_requests(helm_dir: Path, tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    requests = 200
    with trace_sink(spans_dir) as sink_port, run_traced_edge(helm_dir, tmp_path, sink_port, 0.5) as ports:
        url = f"http://127.0.0.1:{ports[PORT]}{STOREFRONT_FILES['app.css'][0]}"
        for _ in range(requests):
            urllib.request.urlopen(url, timeout=10).close()
        # All the spans the edge drew, however slowly a busy machine exports them: counting those come within a
        # fixed window counted too few.
        sampled = envoy_counter(ports, "http.http_api.tracing.random_sampling")
        traced = len(edge_spans(spans_dir, sampled, wait=60))
    # Binomial(200, 0.5): outside 60-140 once in ~10^8 runs; a ratio off by 100x (all) or 0 (none) is not.
    assert 60 <= traced <= 140, traced


def test_behind_istios_sidecar_the_edge_records_what_the_sidecar_decided(helm_dir: Path, tmp_path: Path) -> None:
    """The sidecar in front has drawn at the ratio (tests/k8s/test_mesh_traces.py); drawing again here would
    record ratio² of the HTTP calls."""
    spans_dir = tmp_path / "spans"
    sampled, unsampled = "0af7651916cd43dd8448eb211c80319c", "1bf7651916cd43dd8448eb211c80319c"
    with trace_sink(spans_dir) as sink_port, run_traced_edge(helm_dir, tmp_path, sink_port, 0.1, "istio") as ports:
        url = f"http://127.0.0.1:{ports[PORT]}{STOREFRONT_FILES['app.css'][0]}"
        for trace_id, flags in [(sampled, "01"), (unsampled, "00")] * 20:
            parent = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-{flags}"}
            urllib.request.urlopen(urllib.request.Request(url, headers=parent), timeout=10).close()
        # The 20 the client sampled: were the unsampled ones recorded too, they would be among them, as the
        # requests alternate.
        spans = edge_spans(spans_dir, 20, wait=60)
    assert [span["trace_id"] for span in spans] == [sampled] * 20
