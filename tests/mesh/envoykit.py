"""A real Envoy (the local mesh's binary) in front of chassis servers of the sample service, for tests of
what a mesh's proxy does with shopmesh's calls: a static bootstrap with one listener, one cluster of the
backends, the filters a test adds; the `mesh` fixture (tests/mesh/conftest.py) stops everything. Also what
the tests of a whole local mesh (a `Stack`) read off its processes: `handled`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shopmesh.sample.v1 import sample_pb2
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import SampleServicer, SampleSettings, binding
from shopmesh_platform.mesh.faults import admin_request
from shopmesh_platform.stack import Stack, envoy_binary

CLUSTER = "backends"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class Backend(SampleServicer):
    """The sample service's Echo, answered OK; counts the calls it got, and knows its address once served."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.address = ""

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        self.calls += 1
        return await self.answer(request, context)

    async def answer(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        return await super().Echo(request, context)


def bootstrap(
    backends: Sequence[str],
    *,
    retry_policy: dict[str, Any] | None = None,
    outlier_detection: dict[str, Any] | None = None,
    http_filters: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Envoy's static configuration: one listener sending every call to the cluster of `backends` (round robin,
    plaintext HTTP/2, as the local mesh's clusters in shopmesh_platform.mesh.envoy), on loopback; the listener
    and the admin interface on ports the OS picks (port 0)."""
    route: dict[str, Any] = {"cluster": CLUSTER, "timeout": "5s"}
    if retry_policy is not None:
        route["retry_policy"] = retry_policy
    cluster: dict[str, Any] = {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # No panic mode (Istio's default, minHealthPercent 0): an ejected host gets no calls at all, even with
        # half the cluster ejected.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(backend)}} for backend in backends]}],
        },
    }
    if outlier_detection is not None:
        cluster["outlier_detection"] = outlier_detection
    manager = {
        "@type": _HCM,
        "stat_prefix": "ingress",
        "codec_type": "HTTP2",
        "route_config": {
            "name": "all",
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}
            ],
        },
        "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    listener = {
        "name": "ingress",
        "address": _socket("127.0.0.1:0"),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    return {
        "admin": {"address": _socket("127.0.0.1:0")},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def _socket(address: str) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _address(socket_address: dict[str, Any]) -> str:
    return f"{socket_address['address']}:{socket_address['port_value']}"


@dataclass(frozen=True)
class Host:
    """One endpoint of the cluster as Envoy's admin /clusters tells it."""

    ejected: bool
    stats: dict[str, int]


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    log: Path
    admin_path: Path
    # host:port of the listener, once it is ready.
    address: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def admin(self) -> str:
        """host:port of the admin interface, once Envoy has written it; fails with Envoy's output if it exited."""
        assert self.process.poll() is None, f"envoy exited with {self.process.returncode}:\n{self.output()}"
        return self.admin_path.read_text().strip() if self.admin_path.exists() else ""

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin()}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def ready(self) -> bool:
        try:
            return bool(self.admin()) and self.get("/ready").strip() == "LIVE"
        except OSError:
            return False

    def stats(self) -> dict[str, int]:
        """The cluster's counters and gauges by name, less the `cluster.backends.` prefix (zeros included)."""
        items = json.loads(self.get(f"/stats?format=json&filter=^cluster\\.{CLUSTER}\\."))["stats"]
        return {
            item["name"].removeprefix(f"cluster.{CLUSTER}."): int(item["value"]) for item in items if "value" in item
        }

    def hosts(self) -> dict[str, Host]:
        """Each endpoint of the cluster by its address."""
        [cluster] = [
            c for c in json.loads(self.get("/clusters?format=json"))["cluster_statuses"] if c["name"] == CLUSTER
        ]
        return {
            _address(host["address"]["socket_address"]): Host(
                ejected=bool(host["health_status"].get("failed_outlier_check")),
                stats={stat["name"]: int(stat.get("value", 0)) for stat in host["stats"]},
            )
            for host in cluster["host_statuses"]
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_envoy(config: dict[str, Any], directory: Path) -> Envoy:
    config_path = directory / "envoy.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = directory / "envoy.log"
    admin_path = directory / "envoy-admin-address"
    argv = [
        str(envoy_binary()),
        *("--config-path", str(config_path)),
        # Where Envoy writes the admin address it bound (port 0 in the configuration).
        *("--admin-address-path", str(admin_path)),
        # As the local mesh's sidecars: no shared memory with any other Envoy on the machine (no base id to
        # collide on), and one worker, so that one round robin spreads the calls.
        "--disable-hot-restart",
        *("--concurrency", "1"),
        *("--log-level", "warn"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return Envoy(process, log, admin_path)


class Mesh:
    """Backends served by the chassis in this event loop behind an Envoy; the fixture stops everything."""

    def __init__(self, directory: Path, exits: contextlib.AsyncExitStack) -> None:
        self.directory = directory
        self.exits = exits

    async def serve(self, backend: Backend) -> None:
        """Serve `backend` with the chassis on a free loopback port (its address then in backend.address)."""
        settings = load_settings(SampleSettings, grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1)
        server = await self.exits.enter_async_context(serve_in_process(settings, [binding(backend)]))
        backend.address = server.address

    async def envoy_in_front_of(
        self,
        backends: Sequence[Backend],
        *,
        retry_policy: dict[str, Any] | None = None,
        outlier_detection: dict[str, Any] | None = None,
        http_filters: Sequence[dict[str, Any]] = (),
        gone: Sequence[str] = (),
    ) -> Envoy:
        """`gone`: addresses in the cluster with nothing listening (a pod that is gone: connections refused)."""
        for backend in backends:
            await self.serve(backend)
        config = bootstrap(
            [*(b.address for b in backends), *gone],
            retry_policy=retry_policy,
            outlier_detection=outlier_detection,
            http_filters=http_filters,
        )
        envoy = launch_envoy(config, self.directory)
        # Stopped before the backends drain (the exit stack unwinds last in, first out).
        self.exits.callback(envoy.stop)
        await eventually(envoy.ready, f"envoy's admin /ready answering LIVE (envoy's output: {envoy.log})", timeout=20)
        [listener] = json.loads(envoy.get("/listeners?format=json"))["listener_statuses"]
        envoy.address = _address(listener["local_address"]["socket_address"])
        return envoy


def sidecar_stats(stack: Stack, process: str) -> dict[str, int]:
    """The counters and gauges a sidecar of the stack has used (`process`: a service, or "catalog-canary"), by
    name, read on its admin interface's Unix socket."""
    admin = stack.sidecar_admin_socket(process)
    assert admin is not None, "no mesh"
    stats = json.loads(admin_request(admin, "/stats?usedonly&format=json"))["stats"]
    return {item["name"]: int(item["value"]) for item in stats if "value" in item}


def handled(stack: Stack, process: str, method: str) -> int:
    """Calls of `method` that `process` answered, from its own metrics (a canary's too: "catalog-canary")."""
    url = stack.metrics_url(process)
    assert url is not None
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_method") == method
        )
    )
