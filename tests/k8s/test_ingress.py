"""Ingress from the cluster's Gateway (Gateway API) to the edge, as the charts render it: an HTTPRoute to the
HTTP/JSON port and a GRPCRoute to the public gRPC service only, each when it names the listener it attaches
to; checked against Gateway API's own CRD schemas. (Not run against a Gateway here: no cluster.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shopmesh_platform.http_api import PUBLIC_SERVICE, ROUTE_TIMEOUT
from shopmesh_platform.mesh.envoy import CONNECT_TIMEOUT
from shopmesh_platform.topology import SERVICES, is_edge, service_callers

from .k8skit import KUBERNETES_VERSION, ROOT, Docs, find, objects_of, render, validate_custom_resources

EDGE = next(name for name in SERVICES if is_edge(name))
EXAMPLE = ROOT / "k8s" / "ingress"
GATEWAY_API = "gateway.networking.k8s.io"
HTTP = {
    "parentRefs": [{"name": "shop", "namespace": "ingress", "sectionName": "https"}],
    "hostnames": ["shop.example.com"],
}
GRPC = {
    "parentRefs": [{"name": "shop", "namespace": "ingress", "sectionName": "grpc"}],
    "hostnames": ["grpc.shop.example.com"],
}


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def routes(docs: Docs) -> Docs:
    return [
        d for d in docs if d["apiVersion"].startswith(f"{GATEWAY_API}/") and d["kind"] in ("HTTPRoute", "GRPCRoute")
    ]


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_no_value_set_exposes_the_edge_by_itself(rendered: dict[tuple[str, str], Docs], value_set: str) -> None:
    assert routes(rendered[value_set, EDGE]) == [], "a route needs the platform's Gateway: the user names it"


def test_the_http_route_takes_everything_to_the_edges_http_port(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, EDGE, {"ingress": {"http": HTTP}})
    route = find(docs, "HTTPRoute", f"{EDGE}-http")
    assert (route["spec"]["parentRefs"], route["spec"]["hostnames"]) == (HTTP["parentRefs"], HTTP["hostnames"])
    [rule] = route["spec"]["rules"]
    assert "matches" not in rule, "the edge's Envoy refuses what the API does not have"
    # Above the edge's own bound, so that a slow checkout ends in the edge's answer, a Status in JSON.
    assert _seconds(rule["timeouts"]["request"]) > _seconds(ROUTE_TIMEOUT)
    [backend] = rule["backendRefs"]
    ports = {p["port"]: p["name"] for p in find(docs, "Service", EDGE)["spec"]["ports"]}
    assert (backend["name"], ports[backend["port"]]) == (EDGE, "http")
    assert [r["kind"] for r in routes(docs)] == ["HTTPRoute"], "no GRPCRoute unless ingress.grpc names a Gateway"
    assert validate_custom_resources(routes(docs)) == []


def test_the_grpc_route_takes_the_public_service_alone_to_the_grpc_port(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, EDGE, {"ingress": {"grpc": GRPC}})
    route = find(docs, "GRPCRoute", f"{EDGE}-grpc")
    assert (route["spec"]["parentRefs"], route["spec"]["hostnames"]) == (GRPC["parentRefs"], GRPC["hostnames"])
    [rule] = route["spec"]["rules"]
    # Health and reflection stay inside the cluster, as on the HTTP/JSON port.
    assert rule["matches"] == [{"method": {"type": "Exact", "service": PUBLIC_SERVICE}}]
    [backend] = rule["backendRefs"]
    ports = {p["port"]: p["name"] for p in find(docs, "Service", EDGE)["spec"]["ports"]}
    assert (backend["name"], ports[backend["port"]]) == (EDGE, "grpc")
    assert [r["kind"] for r in routes(docs)] == ["GRPCRoute"]
    assert validate_custom_resources(routes(docs)) == []


def test_the_umbrella_passes_the_routes_on_and_the_schemas_see_a_bad_one(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, render.UMBRELLA, {EDGE: {"ingress": {"http": HTTP, "grpc": GRPC}}})
    found = routes(docs)
    assert sorted(r["metadata"]["name"] for r in found) == [f"{EDGE}-grpc", f"{EDGE}-http"]
    assert validate_custom_resources(found) == []
    broken = [{**r, "spec": {**r["spec"], "hostnames": ["not a host name"]}} for r in found]
    assert len(validate_custom_resources(broken)) == 2


@pytest.mark.parametrize(
    ("chart", "values", "problem"),
    [
        ("catalog", {"ingress": {"grpc": GRPC}}, "ingress for catalog: only the edge"),
        (EDGE, {"ingress": {"http": HTTP}, "httpApi": {"enabled": False}}, "needs httpApi.enabled"),
        (EDGE, {"ingress": {"grpc": GRPC}, "service": {"grpcServices": []}}, "names no service to route"),
        (EDGE, {"ingress": {"grpc": {"hostnames": ["grpc.shop.example.com"]}}}, "hostnames without parentRefs"),
    ],
)
def test_a_route_that_cannot_lead_anywhere_fails_the_render(
    helm_dir: Path, chart: str, values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(Exception, match=problem):
        render.render(helm_dir, chart, "default", values=values)


def test_the_example_gateway_and_values_meet(helm_dir: Path) -> None:
    """k8s/ingress: the example Gateway and the values that attach the routes to it, as docs/kubernetes.md
    has a user apply them: every route names a listener of the Gateway that takes its kind, its namespace and
    its host name."""
    namespace, gateway = yaml.safe_load_all((EXAMPLE / "gateway.yaml").read_text())
    assert gateway["metadata"]["namespace"] == namespace["metadata"]["name"]
    kubernetes_validate.validate(namespace, KUBERNETES_VERSION, strict=True)
    values = yaml.safe_load((EXAMPLE / "values.yaml").read_text())
    found = routes(objects_of(helm_dir, render.UMBRELLA, values))
    assert validate_custom_resources([gateway, *found]) == []
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    assert sorted(r["kind"] for r in found) == ["GRPCRoute", "HTTPRoute"]
    for route in found:
        [parent] = route["spec"]["parentRefs"]
        assert (parent["name"], parent["namespace"]) == (gateway["metadata"]["name"], gateway["metadata"]["namespace"])
        listener = listeners[parent["sectionName"]]
        allowed = listener["allowedRoutes"]
        assert [k["kind"] for k in allowed["kinds"]] == [route["kind"]]
        selector = allowed["namespaces"]["selector"]["matchLabels"]
        assert selector == {"kubernetes.io/metadata.name": route["metadata"]["namespace"]}
        assert route["spec"]["hostnames"] == [listener["hostname"]]
        # Cleartext, as `grpcurl -plaintext` and curl speak it (a GRPCRoute's listener takes h2c then).
        assert listener["protocol"] == "HTTP"
    # An HTTPRoute and a GRPCRoute are not both accepted with overlapping host names on one listener.
    attached = {(r["spec"]["parentRefs"][0]["sectionName"], h) for r in found for h in r["spec"]["hostnames"]}
    assert len(attached) == len(found)


# Envoy retry conditions under which the request never reached the edge: safe for every method.
NEVER_REACHED = {"connect-failure", "refused-stream", "reset-before-request"}


def test_istio_retries_the_gateways_calls_to_the_edge_only_where_they_never_reached_it(
    helm_dir: Path, rendered: dict[tuple[str, str], Docs]
) -> None:
    """The routes can set no retry policy (Gateway API v1.2's standard channel has none), so Istio gives them its
    mesh-wide default; unset, that is Istio's own, which retries UNAVAILABLE and CANCELLED twice: a checkout sent
    without an idempotency key (the gateway mints one per call) would place three orders. mesh-istio.sh installs
    the mesh config `k8s/render.py istio-tracing` prints (tests/mesh/test_ingress_retries.py runs the route
    Istio builds from it in a real Envoy)."""
    policy = render.istio_tracing(helm_dir)["spec"]["meshConfig"]["defaultHttpRetryPolicy"]
    conditions = set(policy["retryOn"].split(","))
    assert conditions <= NEVER_REACHED, conditions - NEVER_REACHED
    assert 1 <= policy["attempts"] <= 3
    assert set(policy) == {"attempts", "retryOn"}, "no perTryTimeout: the edge's own bound and the deadline decide"
    # The policy calls between the services get, where the charts' VirtualServices set it.
    callee = next(name for name in SERVICES if service_callers(name))
    assert find(rendered["istio", callee], "VirtualService", callee)["spec"]["http"][0]["retries"] == policy


def test_istio_gives_up_a_connect_to_the_edge_within_the_local_meshs_connect_timeout(helm_dir: Path) -> None:
    """The ingress gateway's routes to the edge have no DestinationRule (the edge gets none), so the mesh's
    default decides: Istio's own is 10 s, past every deadline a client gives the edge, and a connect to a
    silent gateway pod was never retried on another. The services' DestinationRules set the same."""
    assert render.istio_tracing(helm_dir)["spec"]["meshConfig"]["connectTimeout"] == CONNECT_TIMEOUT


def test_the_mesh_default_retry_policy_comes_without_the_sidecars_spans_too(helm_dir: Path) -> None:
    values = {"global": {"mesh": "istio", "otel": {"endpoint": ""}}}
    mesh_config = render.istio_tracing(helm_dir, values)["spec"]["meshConfig"]
    assert "extensionProviders" not in mesh_config
    assert (
        mesh_config["defaultHttpRetryPolicy"]
        == render.istio_tracing(helm_dir)["spec"]["meshConfig"]["defaultHttpRetryPolicy"]
    )
