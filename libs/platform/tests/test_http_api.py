"""The HTTP/JSON edge's configuration as the stack writes it (its behaviour with a real Envoy in front of
the real services: tests/e2e/test_http_api.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_platform.http_api import GRPC_CONTENT_TYPE, PUBLIC_SERVICE, descriptor_set
from shopmesh_platform.http_api.grpc_messages import ONE_MESSAGE_FILTER
from shopmesh_platform.mesh.envoy import EDGE_LISTENER
from shopmesh_platform.ports import PortPlan
from shopmesh_platform.processes import StackError
from shopmesh_platform.stack import HTTP_API, Stack


def gateway_endpoint(config: dict[str, Any]) -> str:
    """The edge's gateway cluster's endpoint: host:port, or `unix:<path>` for a Unix socket."""
    [gateway] = [c for c in config["static_resources"]["clusters"] if c["name"] == "gateway"]
    address = gateway["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    if "pipe" in address:
        return f"unix:{address['pipe']['path']}"
    return f"{address['socket_address']['address']}:{address['socket_address']['port_value']}"


def test_in_the_mesh_the_edge_calls_the_gateways_sidecar_on_a_socket_of_its_own_that_appends_no_address(
    tmp_path: Path,
) -> None:
    """Through the sidecar's published listener, which appends its peer to x-forwarded-for, the edge (a loopback
    peer, written as the machine's own address by Envoy) made every HTTP client one address to the gateway."""
    plan = PortPlan.free(mesh=True, http=True)
    stack = Stack(tmp_path, ports=plan, services=["gateway"])
    sidecar = json.loads(stack.write_mesh()["gateway"].read_text())
    config = json.loads(stack.write_http_api().read_text())
    assert gateway_endpoint(config) == f"unix:{stack.edge_socket}"
    listeners = {listener["name"]: listener for listener in sidecar["static_resources"]["listeners"]}
    assert listeners[EDGE_LISTENER]["address"] == {"pipe": {"path": str(stack.edge_socket)}}
    managers = {name: entry["filter_chains"][0]["filters"][0]["typed_config"] for name, entry in listeners.items()}
    assert managers[EDGE_LISTENER]["use_remote_address"] is False, "the edge's x-forwarded-for goes on as it wrote it"
    assert managers["inbound"]["use_remote_address"] is True, "a direct client's peer address is appended"
    assert stack.app_address("gateway").startswith("unix:"), "the gateway itself is on its socket, behind"
    assert stack.http_url == f"http://{plan.host}:{plan.http}"


def test_only_the_public_service_is_routed_to_the_gateway(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=PortPlan.free(http=True), services=["gateway"])
    config = json.loads(stack.write_http_api().read_text())
    # Beside it, the metrics listener (its admin interface's `/stats/prometheus`, `/healthz`).
    [listener] = [item for item in config["static_resources"]["listeners"] if item["name"] == "http-api"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [host] = manager["route_config"]["virtual_hosts"]
    # ShopService's methods each by its path, through the buffer filter.
    grpc_routes = [r for r in host["routes"] if "route" in r and "path" in r["match"]]
    assert sorted(r["match"]["path"] for r in grpc_routes) == [
        f"/{PUBLIC_SERVICE}/{method}"
        for method in sorted(shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods_by_name)
    ]
    assert all("headers" not in r["match"] for r in grpc_routes)
    # Each with its one request message checked whole (every method of ShopService's is unary).
    assert all(ONE_MESSAGE_FILTER in r["typed_per_filter_config"] for r in grpc_routes)
    prefixed = [r for r in host["routes"] if "route" in r and "prefix" in r["match"]]
    # Any other method of ShopService's, over gRPC only, goes to the gateway unbuffered: answered on its headers.
    [unknown] = [r for r in prefixed if r["match"]["prefix"] == f"/{PUBLIC_SERVICE}/"]
    assert unknown["match"]["headers"][0]["string_match"] == {"safe_regex": {"regex": GRPC_CONTENT_TYPE}}
    assert unknown["match"]["headers"][0]["invert_match"] is False
    assert unknown["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    # The other route takes no gRPC at all (health, reflection): only what the transcoder rewrote, or a preflight.
    [other] = [r for r in prefixed if r is not unknown]
    assert other["match"]["headers"][0]["string_match"] == {"safe_regex": {"regex": GRPC_CONTENT_TYPE}}
    assert other["match"]["headers"][0]["invert_match"] is True
    transcoder = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["typed_config"]["services"] == [PUBLIC_SERVICE]
    assert transcoder["typed_config"]["proto_descriptor"] == str(descriptor_set())


def test_a_stack_without_the_gateway_runs_no_edge(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=PortPlan.free(http=True), services=["catalog"])
    assert stack.http_url is None
    with pytest.raises(StackError, match="not part of this stack"):
        stack.pid(HTTP_API)


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("application/grpc-web", True),
        ("application/grpc-web+proto", True),
        ("application/grpc-web-text", True),
        ("application/grpc-web-text+proto", True),
        ("application/grpc+proto; charset=utf-8", True),
        ("application/grpc+json", True),
        ("application/grpc;x=y", False),
        ("application/grpc-web+json", False),
        ("application/grpc-web+proto; charset=utf-8", False),
        ("application/grpc-web;x=y", False),
        ("application/grpc-web-text+json", False),
        ("Application/grpc-web", False),
        ("application/grpc-json", False),
        ("application/grpcfoo", False),
        ("application/json", False),
        ("", False),
    ],
)
def test_the_edge_takes_for_grpc_exactly_what_envoy_does(content_type: str, grpc: bool) -> None:
    """What the routes and local replies call gRPC is what Envoy's gRPC filters do: a type that only looks like
    it (`application/grpc-json`) is an HTTP/JSON request, whose gRPC headers the edge drops."""
    assert (re.fullmatch(GRPC_CONTENT_TYPE, content_type) is not None) == grpc
