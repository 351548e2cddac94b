"""The mesh's policy on Kubernetes (values-istio.yaml, values-linkerd.yaml) is the call graph of
libs/platform/src/shopmesh_platform/topology.py, as the local mesh's is (docs/mesh.md): mutual TLS
everywhere but the metrics port and the edge, health open, every other method only to a service's
callers, mesh retries only of requests that never reached the service, ejection of failing pods but
never of the last one; `helm test` goes through the mesh under an identity of its own. Istio's objects
validate against Istio's CRD schemas; Linkerd's (no schema package exists offline) against the fields
of Linkerd's CRDs listed below, and every reference between them resolves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shopmesh_platform.mesh.envoy import CONNECT_TIMEOUT
from shopmesh_platform.topology import SERVICES, is_edge, methods_called, service_callers

from .k8skit import (
    KUBERNETES_VERSION,
    ROOT,
    Docs,
    find,
    objects_of,
    render,
    run_deploy_staging,
    validate_custom_resources,
)

# Linkerd's injector reads the proxy's CPU request from this pod annotation.
PROXY_CPU = "config.linkerd.io/proxy-cpu-request"

NAMES = list(SERVICES)
NS = render.NAMESPACE
GRPC_PORT = 50051
METRICS_PORT = 9464
# The edge's HTTP/JSON API (its http-api container): open like the edge's gRPC port.
HTTP_PORT = 8080
HTTP_METRICS_PORT = 9465
HEALTH = "/grpc.health.v1.Health/"
TRUST_DOMAIN = "cluster.local"
ISTIO_KINDS = {"PeerAuthentication", "AuthorizationPolicy", "VirtualService", "DestinationRule"}
LINKERD_GROUP = "policy.linkerd.io"
# Envoy retry conditions under which the request never reached the service: safe for every method.
NEVER_REACHED = {"connect-failure", "refused-stream", "reset-before-request"}


def istio(docs: Docs) -> Docs:
    """Istio's policy objects (the sidecars' Telemetry is test_mesh_traces.py's)."""
    return [d for d in docs if d["apiVersion"].split("/")[0] in {"security.istio.io", "networking.istio.io"}]


def linkerd(docs: Docs) -> Docs:
    return [d for d in docs if d["apiVersion"].startswith(f"{LINKERD_GROUP}/")]


def principal(service: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{NS}/sa/{service}"


def istio_grants(policy: dict[str, Any]) -> list[tuple[frozenset[str] | None, str, tuple[str, ...]]]:
    """(principals, or None for any source; port; paths, () for every path) for each rule."""
    grants = []
    for rule in policy["spec"].get("rules", []):  # none: allow-nothing
        sources = rule.get("from")
        principals = None if sources is None else frozenset(p for s in sources for p in s["source"]["principals"])
        for to in rule["to"]:
            for port in to["operation"]["ports"]:
                grants.append((principals, port, tuple(to["operation"].get("paths", ()))))
    return grants


# --- Istio ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_istio_admits_exactly_the_callers_of_each_service_on_grpc(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    for docs in (rendered["istio", name], rendered["istio", render.UMBRELLA]):
        policy = find(docs, "AuthorizationPolicy", name)
        assert policy["spec"]["action"] == "ALLOW"
        assert (
            policy["spec"]["selector"]["matchLabels"]
            == find(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        )
        every_method = [(who, port) for who, port, paths in istio_grants(policy) if not paths]
        expected = [(None, str(METRICS_PORT))]
        if is_edge(name):
            expected += [(None, str(GRPC_PORT)), (None, str(HTTP_PORT)), (None, str(HTTP_METRICS_PORT))]
        assert sorted(every_method, key=repr) == sorted(expected, key=repr), "callers get their methods, not all"


def test_istio_principals_are_the_callers_service_accounts(rendered: dict[tuple[str, str], Docs]) -> None:
    """A principal names a ServiceAccount: each caller's pods must really run as the one named."""
    docs = rendered["istio", render.UMBRELLA]
    for name in NAMES:
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        find(docs, "ServiceAccount", name)


def method_paths(service: str, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The gRPC paths of `methods` of `service`'s one gRPC service, as the meshes match them."""
    (grpc_service,) = SERVICES[service].grpc_services
    return tuple(f"/{grpc_service}/{method}" for method in methods)


@pytest.mark.parametrize("name", NAMES)
def test_istio_admits_each_caller_to_the_methods_it_calls_and_anyone_to_health(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """Least privilege per method: the gateway reads stock (GetStock) and may not Reserve, CommitReservation
    or SetStock; each caller's rule names its principal alone and the exact paths of the methods it calls
    (topology.METHODS_CALLED). Health stays open to any source (helm test, meshed callers)."""
    for docs in (rendered["istio", name], rendered["istio", render.UMBRELLA]):
        policy = find(docs, "AuthorizationPolicy", name)
        per_path = [(who, port, paths) for who, port, paths in istio_grants(policy) if paths]
        expected = [(None, str(GRPC_PORT), (f"{HEALTH}*",))]
        expected += [
            (frozenset({principal(c)}), str(GRPC_PORT), method_paths(name, methods_called(c, name)))
            for c in sorted(service_callers(name))
        ]
        assert sorted(per_path, key=repr) == sorted(expected, key=repr)
    if name == "inventory":
        granted = {p for who, _, paths in per_path if who == {principal("gateway")} for p in paths}
        assert granted == {"/shopmesh.inventory.v1.InventoryService/GetStock"}


@pytest.mark.parametrize("name", NAMES)
def test_istio_requires_mutual_tls_except_on_metrics_and_at_the_edge(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    spec = find(rendered["istio", name], "PeerAuthentication", name)["spec"]
    assert spec["mtls"] == {"mode": "STRICT"}
    permissive = {port for port, mtls in spec["portLevelMtls"].items() if mtls == {"mode": "PERMISSIVE"}}
    edge = {GRPC_PORT, HTTP_PORT, HTTP_METRICS_PORT}
    assert permissive == ({METRICS_PORT} | edge if is_edge(name) else {METRICS_PORT})
    assert set(spec["portLevelMtls"]) == permissive


@pytest.mark.parametrize("name", [n for n in NAMES if service_callers(n)])
def test_istio_retries_only_requests_that_never_reached_the_service(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """Istio's default would retry UNAVAILABLE too, repeating a Charge or a PlaceOrder the callee may
    already have acted on; the chassis retries UNAVAILABLE itself, of idempotent methods only."""
    host = f"{name}.{NS}.svc.cluster.local"
    spec = find(rendered["istio", name], "VirtualService", name)["spec"]
    assert spec["hosts"] == [host]
    (route,) = spec["http"]
    assert route["match"] == [{"port": GRPC_PORT}], "calls to the metrics port keep their own port"
    assert route["route"] == [{"destination": {"host": host, "port": {"number": GRPC_PORT}}}]
    conditions = set(route["retries"]["retryOn"].split(","))
    assert conditions <= NEVER_REACHED, conditions - NEVER_REACHED
    assert 1 <= route["retries"]["attempts"] <= 3
    assert "timeout" not in route, "the caller's deadline bounds calls"
    assert "perTryTimeout" not in route["retries"]


@pytest.mark.parametrize("name", [n for n in NAMES if service_callers(n)])
def test_istio_ejects_pods_for_their_own_transport_failures_and_panics_below_half_healthy(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """Not for the statuses a pod answers: gRPC UNAVAILABLE is a 503 to Envoy, and a healthy pod answers it
    while a dependency (DEPENDENCY_UNAVAILABLE) or its database is away (tests/mesh/test_outlier_detection.py)."""
    spec = find(rendered["istio", name], "DestinationRule", name)["spec"]
    assert spec["host"] == f"{name}.{NS}.svc.cluster.local"
    assert "tls" not in spec["trafficPolicy"], "Istio's automatic mTLS, as the PeerAuthentication requires"
    outlier = spec["trafficPolicy"]["outlierDetection"]
    assert outlier["splitExternalLocalOriginErrors"] is True
    assert outlier["consecutiveLocalOriginFailures"] == 5
    # 0 turns the 5xx detector off (Istio then sets Envoy's enforcing_consecutive_5xx to 0); left out, Istio's
    # default of 5 would count the answers again.
    assert outlier["consecutive5xxErrors"] == 0
    assert "consecutiveGatewayErrors" not in outlier, "a 503 is a gateway error too"
    assert outlier["baseEjectionTime"] == "30s"
    assert outlier["interval"] == "10s"
    assert outlier["maxEjectionPercent"] == 50
    # Envoy's panic threshold: below half healthy it balances over every pod, ejected ones included
    # (with one replica, ejecting it would turn errors into an outage; at 100 ejection would never help).
    assert outlier["minHealthPercent"] == 50
    # Both tracks' subsets always, so turning a canary off never leaves a route naming a removed subset.
    assert spec["subsets"] == [
        {"name": track, "labels": {"shopmesh.io/track": track}} for track in ("stable", "canary")
    ]


@pytest.mark.parametrize("name", [n for n in NAMES if service_callers(n)])
def test_istio_gives_up_a_connect_to_a_silent_pod_within_the_local_meshs_connect_timeout(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """Istio's default is 10 s: a connect to a pod that answers nothing (its node gone, a partition) outlasted
    every caller's deadline, so the connect-failure retry to another pod never happened and ejection came late."""
    pool = find(rendered["istio", name], "DestinationRule", name)["spec"]["trafficPolicy"]["connectionPool"]
    assert pool == {"tcp": {"connectTimeout": CONNECT_TIMEOUT}}


def test_the_edge_gets_no_route_rules(rendered: dict[tuple[str, str], Docs]) -> None:
    """No service calls the gateway: a VirtualService or DestinationRule for it would configure nothing."""
    for name in NAMES:
        kinds = {d["kind"] for d in istio(rendered["istio", name])}
        assert (("VirtualService" in kinds) and ("DestinationRule" in kinds)) == bool(service_callers(name))


def test_istio_namespace_allows_nothing_that_no_service_policy_admits(rendered: dict[tuple[str, str], Docs]) -> None:
    umbrella = find(rendered["istio", render.UMBRELLA], "AuthorizationPolicy", "shopmesh-allow-nothing")
    assert umbrella["spec"] == {}
    assert umbrella["metadata"]["namespace"] == NS
    for value_set in render.VALUE_SETS:
        if render.mesh_of(value_set) != "istio":
            assert not istio(rendered[value_set, render.UMBRELLA]), value_set


def test_istio_objects_validate_against_istios_crd_schemas(rendered: dict[tuple[str, str], Docs]) -> None:
    objects = istio(rendered["istio", render.UMBRELLA])
    assert {d["kind"] for d in objects} == ISTIO_KINDS
    assert len(objects) == 4 * len(NAMES) - 2 + 1  # the edge has no VirtualService/DestinationRule; allow-nothing
    assert validate_custom_resources(objects) == []


def test_the_istio_schema_check_sees_a_bad_value_and_a_misspelled_field(rendered: dict[tuple[str, str], Docs]) -> None:
    policy = find(rendered["istio", "catalog"], "AuthorizationPolicy", "catalog")
    bad_value = json.loads(json.dumps(policy))
    bad_value["spec"]["action"] = "PERMIT"
    misspelled = json.loads(json.dumps(policy))
    misspelled["spec"]["rules"][-1]["from"][0]["source"]["principal"] = ["x"]
    problems = validate_custom_resources([bad_value, misspelled])
    assert len(problems) == 2, problems
    assert "action" in problems[0]
    assert "source.principal: unknown field" in problems[1]


# --- Linkerd --------------------------------------------------------------------------------------------

# The fields of Linkerd's policy CRDs (linkerd2's charts/linkerd-crds, read on 2026-12-02; no schema package
# exists offline), as far as a chart may set them: a dict is an object of those fields, a one-item list an
# array of that, a set the allowed values, None any scalar or free-form map (labels).
Schema = dict[str, Any] | list[Any] | set[str] | None
REF = {"group": None, "kind": None, "name": None, "namespace": None}
SELECTOR = {"matchLabels": None, "matchExpressions": [{"key": None, "operator": None, "values": None}]}
LINKERD_SPECS: dict[tuple[str, str], Schema] = {
    ("policy.linkerd.io/v1beta3", "Server"): {
        "podSelector": SELECTOR,
        "port": None,
        "proxyProtocol": {"unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"},
        "accessPolicy": {
            "deny",
            "all-unauthenticated",
            "all-authenticated",
            "cluster-authenticated",
            "cluster-unauthenticated",
            "audit",
        },
    },
    ("policy.linkerd.io/v1beta3", "HTTPRoute"): {
        "parentRefs": [REF | {"port": None, "sectionName": None}],
        "hostnames": None,
        "rules": [
            {
                "matches": [
                    {
                        "path": {"type": {"Exact", "PathPrefix", "RegularExpression"}, "value": None},
                        "headers": None,
                        "queryParams": None,
                        "method": None,
                    }
                ],
                "filters": None,
                "backendRefs": None,
                "timeouts": None,
            }
        ],
    },
    ("policy.linkerd.io/v1alpha1", "AuthorizationPolicy"): {
        "targetRef": {"group": None, "kind": None, "name": None},
        "requiredAuthenticationRefs": [REF],
    },
    ("policy.linkerd.io/v1alpha1", "MeshTLSAuthentication"): {"identities": None, "identityRefs": [REF]},
    ("policy.linkerd.io/v1alpha1", "NetworkAuthentication"): {"networks": [{"cidr": None, "except": None}]},
}
REQUIRED = {
    "Server": {"port", "podSelector"},
    "HTTPRoute": {"parentRefs", "rules"},
    "AuthorizationPolicy": {"targetRef", "requiredAuthenticationRefs"},
    "NetworkAuthentication": {"networks"},
}


def schema_problems(value: Any, schema: Schema, path: str) -> list[str]:
    if isinstance(schema, set):
        return [] if value in schema else [f"{path}: {value!r} is not one of {sorted(schema)}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, schema[0], f"{path}[{i}]")]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        return [
            p
            for key, item in value.items()
            for p in (
                schema_problems(item, schema[key], f"{path}.{key}")
                if key in schema
                else [f"{path}.{key}: unknown field"]
            )
        ]
    return []


def linkerd_problems(objects: Docs) -> list[str]:
    """Fields and values against LINKERD_SPECS; every targetRef/parentRef/authentication ref names an
    object among `objects`."""
    problems = []
    present = {(d["kind"], d["metadata"]["name"]) for d in objects}
    for d in objects:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if (d["apiVersion"], d["kind"]) not in LINKERD_SPECS:
            problems.append(f"{where}: {d['apiVersion']} {d['kind']} is not a Linkerd policy kind we know")
            continue
        problems += [
            f"{where}: {p}" for p in schema_problems(d["spec"], LINKERD_SPECS[d["apiVersion"], d["kind"]], "spec")
        ]
        missing = REQUIRED.get(d["kind"], set()) - set(d["spec"])
        if d["kind"] == "MeshTLSAuthentication" and len({"identities", "identityRefs"} & set(d["spec"])) != 1:
            problems.append(f"{where}: exactly one of identities, identityRefs")
        problems += [f"{where}: spec.{key} is required" for key in sorted(missing)]
        refs = [d["spec"]["targetRef"]] if "targetRef" in d["spec"] else []
        refs += d["spec"].get("parentRefs", []) + d["spec"].get("requiredAuthenticationRefs", [])
        for ref in refs:
            if ref.get("group") != LINKERD_GROUP or (ref["kind"], ref["name"]) not in present:
                problems.append(f"{where}: refers to {ref}, which is not rendered beside it")
    return problems


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_every_hpa_measures_the_service_container_alone_so_a_proxy_needs_no_request(helm_dir: Path, mesh: str) -> None:
    """Staging, a canary too: each HPA scales on its service container's CPU against that container's request
    (a ContainerResource metric), not the pod's (a Resource metric), which divides every container's use by the
    sum of their requests: a proxy's or the edge's request skewed it (notifications, 50m, had to reach ~190 %
    of its own request under Linkerd's 100m proxy to trip 70 %), and a sidecar without a request ("missing
    request for cpu in container linkerd-proxy") stopped it. So the charts ask no request for Linkerd's proxy;
    a platform's own podAnnotations still reach the pods."""
    values = render.merged_values(
        # Staging renders only under a mesh.
        render.values_for(f"staging+{mesh}", helm_dir),
        {"global": {"canary": {"catalog": {"enabled": True}}}},
    )
    own = render.merged_values(values, {"global": {"podAnnotations": {PROXY_CPU: "250m"}}})
    for settings, proxy_cpu in ((values, None), (own, "250m")):
        docs = objects_of(helm_dir, render.UMBRELLA, settings)
        hpas = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
        assert set(hpas) == set(SERVICES)
        for name, hpa in hpas.items():
            [metric] = hpa["metrics"]
            assert metric["type"] == "ContainerResource", (name, metric)
            source = metric["containerResource"]
            # The service's own container, not the gateway's edge beside it.
            assert (source["name"], source["container"]) == ("cpu", name)
            assert source["target"]["type"] == "Utilization"
            deployments = [find(docs, "Deployment", name)]
            if name == "catalog":
                deployments.append(find(docs, "Deployment", "catalog-canary"))
            for deployment in deployments:
                template = deployment["spec"]["template"]
                measured = [c for c in template["spec"]["containers"] if c["name"] == source["container"]]
                assert len(measured) == 1, (name, source)
                assert measured[0]["resources"]["requests"]["cpu"], name
                assert template["metadata"]["annotations"].get(PROXY_CPU) == proxy_cpu, name
                assert "config.linkerd.io/proxy-memory-request" not in template["metadata"]["annotations"], name


@pytest.mark.parametrize("name", NAMES)
def test_linkerd_servers_cover_every_port_of_the_service(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    docs = rendered["linkerd", name]
    deployment = find(docs, "Deployment", name)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for container in containers for p in container["ports"]}
    servers = [d for d in linkerd(docs) if d["kind"] == "Server"]
    edge = ["http", "http-metrics"] if is_edge(name) else []
    assert {s["spec"]["port"] for s in servers} == ports == {"grpc", "metrics", *edge}
    for server in servers:
        assert server["spec"]["podSelector"] == deployment["spec"]["selector"]
        assert server["spec"]["accessPolicy"] == "deny"
        # gRPC: HTTP/2 (HTTPRoutes apply to it); the HTTP/JSON API takes HTTP/1.1 and HTTP/2: detected.
        expected = {"grpc": "HTTP/2", "metrics": "HTTP/1", "http": "unknown", "http-metrics": "HTTP/1"}[
            server["spec"]["port"]
        ]
        assert server["spec"]["proxyProtocol"] == expected


def routes_of(docs: Docs, server: str) -> dict[str, tuple[str, str]]:
    """HTTPRoute name -> its one path match (type, value), for the routes attached to `server`."""
    result = {}
    for route in (d for d in linkerd(docs) if d["kind"] == "HTTPRoute"):
        if [p["name"] for p in route["spec"]["parentRefs"]] == [server]:
            ((match,),) = [rule["matches"] for rule in route["spec"]["rules"]]
            result[route["metadata"]["name"]] = (match["path"]["type"], match["path"]["value"])
    return result


def linkerd_grants(docs: Docs) -> dict[str, set[str]]:
    """Route or Server name -> who its AuthorizationPolicies admit: service names (by mTLS identity) or
    "any network" (unauthenticated, any address)."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in linkerd(docs)}
    grants: dict[str, set[str]] = {}
    for policy in (d for d in linkerd(docs) if d["kind"] == "AuthorizationPolicy"):
        who = grants.setdefault(policy["spec"]["targetRef"]["name"], set())
        for ref in policy["spec"]["requiredAuthenticationRefs"]:
            authn = by_name[ref["kind"], ref["name"]]["spec"]
            if ref["kind"] == "NetworkAuthentication":
                assert {n["cidr"] for n in authn["networks"]} == {"0.0.0.0/0", "::/0"}
                who.add("any network")
            else:
                assert all(r["kind"] == "ServiceAccount" and "namespace" not in r for r in authn["identityRefs"])
                who.update(r["name"] for r in authn["identityRefs"])
    return grants


@pytest.mark.parametrize("name", NAMES)
def test_linkerd_admits_each_caller_to_the_methods_it_calls_and_anyone_to_health(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """One route per method called, by its exact path, admitting every service that calls it: Linkerd sends
    a request to one route (the most specific), so routes per caller would leave a second caller of the same
    method refused. The catch-all route `-rpc` is the edge's clients' alone; elsewhere nobody's, so any
    other method is refused."""
    callers_of_method: dict[str, set[str]] = {}
    for caller in service_callers(name):
        for method in methods_called(caller, name):
            callers_of_method.setdefault(method, set()).add(caller)
    for docs in (rendered["linkerd", name], rendered["linkerd", render.UMBRELLA]):
        routes = routes_of(docs, f"{name}-grpc")
        expected_routes = {f"{name}-health": ("PathPrefix", HEALTH), f"{name}-rpc": ("PathPrefix", "/")}
        for method in callers_of_method:
            expected_routes[f"{name}-rpc-{method.lower()}"] = ("Exact", method_paths(name, (method,))[0])
        assert routes == expected_routes
        grants = linkerd_grants(docs)
        assert grants[f"{name}-health"] == {"any network"}
        assert grants[f"{name}-metrics"] == {"any network"}
        for method, callers in callers_of_method.items():
            assert grants[f"{name}-rpc-{method.lower()}"] == callers, method
        assert grants.get(f"{name}-rpc") == ({"any network"} if is_edge(name) else None)
        assert f"{name}-grpc" not in grants, "a policy on the whole Server would bypass the routes"
        # The edge's HTTP/JSON API is as open as its gRPC methods; its Envoy's metrics port as the service's (and
        # the kubelet probes it).
        assert grants.get(f"{name}-http") == ({"any network"} if is_edge(name) else None)
        assert grants.get(f"{name}-http-metrics") == ({"any network"} if is_edge(name) else None)


def test_linkerd_objects_have_only_the_crds_fields_and_their_references_resolve(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    for chart in render.all_charts():
        objects = linkerd(rendered["linkerd", chart])
        assert objects, chart
        assert linkerd_problems(objects) == [], chart


def test_the_linkerd_check_sees_a_bad_value_misspelled_fields_and_a_dangling_reference(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    objects = json.loads(json.dumps(linkerd(rendered["linkerd", "catalog"])))
    server = next(d for d in objects if d["kind"] == "Server")
    server["spec"]["proxyProtocol"] = "grpc"
    route = next(d for d in objects if d["kind"] == "HTTPRoute")
    route["spec"]["rule"] = route["spec"].pop("rules")
    policy = next(d for d in objects if d["kind"] == "AuthorizationPolicy")
    policy["spec"]["targetRef"]["name"] = "catalog-nothing"
    network = next(d for d in objects if d["kind"] == "NetworkAuthentication")
    network["spec"]["networks"][0]["cdir"] = network["spec"]["networks"][0].pop("cidr")
    problems = " | ".join(linkerd_problems(objects))
    assert "spec.networks[0].cdir: unknown field" in problems
    assert "'grpc' is not one of" in problems
    assert "spec.rule: unknown field" in problems
    assert "spec.rules is required" in problems
    assert "catalog-nothing" in problems


# --- both meshes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_a_meshed_render_for_kubernetes_before_1_29_fails(helm_dir: Path, mesh: str) -> None:
    """The proxy is asked for as a native sidecar (an init container with restartPolicy: Always): before 1.29
    the API server drops that field (or keeps it behind a gate that is off), and the injected pods are refused
    or never leave Init. A provider's build of 1.29 renders, and so does 1.28 without a mesh."""
    meshed = render.values_for(mesh, helm_dir)
    refused = re.escape("native sidecar, which needs Kubernetes 1.29 or later")
    with pytest.raises(Exception, match=refused):
        render.render(helm_dir, "catalog", "custom", values=meshed, kube_version="v1.28.15")
    with pytest.raises(Exception, match=refused):
        render.render(helm_dir, render.UMBRELLA, "custom", values=meshed, kube_version="v1.28.15-gke.1")
    assert render.render(helm_dir, "catalog", "custom", values=meshed, kube_version="v1.29.1-eks-c417bb3")
    assert render.render(helm_dir, "catalog", "default", kube_version="v1.28.15")


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
@pytest.mark.parametrize("name", NAMES)
def test_helm_test_goes_through_the_mesh_under_an_identity_of_its_own(
    rendered: dict[tuple[str, str], Docs], mesh: str, name: str
) -> None:
    docs = rendered[mesh, name]
    pod = find(docs, "Pod", f"{name}-health-test")
    account = find(docs, "ServiceAccount", f"{name}-health-test")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"].get("helm.sh/hook-weight", "0")
    )
    metadata = pod["metadata"]
    if mesh == "istio":
        assert metadata["labels"]["sidecar.istio.io/inject"] == "true"
        assert metadata["annotations"]["sidecar.istio.io/nativeSidecar"] == "true"
    else:
        assert metadata["annotations"]["linkerd.io/inject"] == "enabled"
        assert metadata["annotations"]["config.beta.linkerd.io/proxy-enable-native-sidecar"] == "true"
    # Its identity may call health and nothing else: no rendered policy names it.
    umbrella = rendered[mesh, render.UMBRELLA]
    if mesh == "istio":
        named = {
            p
            for d in umbrella
            if d["kind"] == "AuthorizationPolicy"
            for who, _, _ in istio_grants(d)
            if who
            for p in who
        }
        assert principal(f"{name}-health-test") not in named
        assert named == {principal(n) for n in NAMES if any(n in service_callers(m) for m in NAMES)}
    else:
        named = {
            r["name"]
            for d in linkerd(umbrella)
            if d["kind"] == "MeshTLSAuthentication"
            for r in d["spec"]["identityRefs"]
        }
        assert f"{name}-health-test" not in named
        assert named == {n for n in NAMES if any(n in service_callers(m) for m in NAMES)}
    # Its proxy reaches the mesh's control plane.
    egress = find(docs, "NetworkPolicy", f"{name}-health-test")["spec"]["egress"]
    control_plane = "istio-system" if mesh == "istio" else "linkerd"
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == control_plane
        for rule in egress
        for peer in rule["to"]
    )


@pytest.mark.parametrize("value_set", ["default", "monitoring"])
def test_without_a_mesh_no_mesh_object_is_rendered(rendered: dict[tuple[str, str], Docs], value_set: str) -> None:
    for chart in render.all_charts():
        docs = rendered[value_set, chart]
        assert not istio(docs), (value_set, chart)
        assert not linkerd(docs), (value_set, chart)
        for pod in (d for d in docs if d["kind"] == "Pod"):
            mesh_annotations = {k for k in pod["metadata"].get("annotations", {}) if "istio" in k or "linkerd" in k}
            assert mesh_annotations == {"linkerd.io/inject"}, "only the refusal of Linkerd's proxy"


def pod_templates(docs: Docs) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod metadata) of every pod the rendering makes: the Deployments' and the `helm test` pods."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["metadata"] if d["kind"] == "Deployment" else d["metadata"])
        for d in docs
        if d["kind"] in ("Deployment", "Pod")
    ]


@pytest.mark.parametrize(
    ("value_set", "mesh"),
    [
        ("default", ""),
        ("staging+istio", "istio"),
        ("staging+linkerd", "linkerd"),
        ("istio", "istio"),
        ("linkerd", "linkerd"),
    ],
)
def test_every_pod_asks_for_its_releases_mesh_and_refuses_the_other(
    rendered: dict[tuple[str, str], Docs], value_set: str, mesh: str
) -> None:
    """Injection is by pod, so a namespace where some mesh injects everything (an earlier install, a platform
    default) still gets pods this release can run: a proxy it was not rendered for has no NetworkPolicy
    egress to its control plane and never becomes ready, and a plain sidecar keeps a test pod from ending."""
    for chart in render.all_charts():
        for name, metadata in pod_templates(rendered[value_set, chart]):
            assert metadata["labels"]["sidecar.istio.io/inject"] == ("true" if mesh == "istio" else "false"), name
            assert metadata["annotations"]["linkerd.io/inject"] == ("enabled" if mesh == "linkerd" else "disabled"), (
                name
            )


@pytest.mark.parametrize("script", ["mesh-istio.sh", "mesh-linkerd.sh"])
def test_installing_a_mesh_leaves_the_namespaces_injection_alone(script: str) -> None:
    """The charts ask for their proxies pod by pod: a namespace-wide switch would give a proxy to every pod of
    a release rendered without that mesh (`make skaffold-dev` without PROFILE, or under the other mesh)."""
    text = (ROOT / "k8s" / "scripts" / script).read_text()
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [c for c in commands if re.search(r"\b(label|annotate)\b.*\bnamespace", c)], script
    assert not [c for c in commands if "istio-injection" in c or "linkerd.io/inject" in c], script


# The peers that speak first (NATS, the SMTP relay; shopmesh-lib.mesh.serverFirstPorts): neither mesh's proxy
# can detect their protocol, so the pods' connections to their ports pass the proxy by.
def server_first_ports(docs: Docs, name: str) -> set[int]:
    config = find(docs, "ConfigMap", name)["data"]
    ports = {int(config["NATS_URL"].rsplit(":", 1)[1])} if "NATS_URL" in config else set()
    return ports | ({int(config["SMTP_PORT"])} if "SMTP_PORT" in config else set())


def port_list(annotations: dict[str, str], key: str) -> list[int]:
    return [int(p) for p in annotations.get(key, "").split(",") if p]


@pytest.mark.parametrize("name", NAMES)
def test_under_linkerd_connections_to_peers_that_speak_first_skip_the_proxy(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """Linkerd's proxy waits 10 s for the client's first bytes on a port outside its default opaque list
    (25, 587, 3306, 4444, 5432, 6379, 9300, 11211), longer than the chassis' NATS connect (5 s)."""
    docs = rendered["linkerd", name]
    expected = server_first_ports(docs, name)
    annotations = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    assert set(port_list(annotations, "config.linkerd.io/skip-outbound-ports")) == expected
    assert name != "notifications" or expected == {4222, 1025}, "notifications consumes events and sends e-mail"


@pytest.mark.parametrize("name", NAMES)
def test_under_istio_connections_to_peers_that_speak_first_skip_the_sidecar(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """An Istio sidecar that sniffs a port (any port whose Service declares no protocol Istio knows, and any
    relay outside the cluster) waits for the client's first bytes without end. Beside them, the port of the
    sidecars' span exports (test_mesh_traces.py), in the same one annotation."""
    docs = rendered["istio", name]
    annotations = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    excluded = port_list(annotations, "traffic.sidecar.istio.io/excludeOutboundPorts")
    assert set(excluded) == server_first_ports(docs, name) | {4317}
    assert len(excluded) == len(set(excluded))


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_pod_annotations_of_ones_own_join_the_meshs_port_lists(helm_dir: Path, mesh: str) -> None:
    key = {"istio": "traffic.sidecar.istio.io/excludeOutboundPorts", "linkerd": "config.linkerd.io/skip-outbound-ports"}
    annotations = {key[mesh]: "3306, 4222", "example.com/team": "shop"}
    docs = objects_of(helm_dir, "notifications", {"global": {"mesh": mesh}, "podAnnotations": annotations})
    pod = find(docs, "Deployment", "notifications")["spec"]["template"]["metadata"]["annotations"]
    assert sorted(port_list(pod, key[mesh])) == sorted({4222, 1025, 3306} | ({4317} if mesh == "istio" else set()))
    assert pod["example.com/team"] == "shop"


def test_k8s_infras_peers_that_speak_first_are_declared_so_to_both_meshes() -> None:
    """For any other meshed client: Linkerd's proxy reads a Service's opaque ports (a server outside the mesh
    has no proxy to say it); Istio takes appProtocol, and sniffs one it does not know ("smtp" is not one)."""
    services = {
        d["metadata"]["name"]: d
        for f in ("nats.yaml", "mailpit.yaml")
        for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / f).read_text())
        if d and d["kind"] == "Service"
    }
    for name, port in (("nats", 4222), ("mailpit", 1025)):
        metadata, spec = services[name]["metadata"], services[name]["spec"]
        assert port_list(metadata["annotations"], "config.linkerd.io/opaque-ports") == [port]
        [declared] = [p for p in spec["ports"] if p["port"] == port]
        assert declared["appProtocol"] == "tcp"


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
@pytest.mark.parametrize("name", NAMES)
def test_helm_test_expects_a_refusal_only_where_the_policy_makes_one(
    rendered: dict[tuple[str, str], Docs], mesh: str, name: str
) -> None:
    """`--meshed` passes only when the mesh refuses the test pod every method but health; the edge's policy
    admits anyone to every method on its gRPC port (Istio: a rule with no source; Linkerd: the route
    `<edge>-rpc` authorized for any network), so there the hook checks health (and the HTTP/JSON API) only."""
    docs = rendered[mesh, name]
    command = find(docs, "Pod", f"{name}-health-test")["spec"]["containers"][0]["command"]
    if mesh == "istio":
        rules = find(docs, "AuthorizationPolicy", name)["spec"]["rules"]
        open_to_all = any(
            "from" not in rule
            and any(
                not to["operation"].get("paths") and str(GRPC_PORT) in to["operation"]["ports"] for to in rule["to"]
            )
            for rule in rules
        )
    else:
        open_to_all = any(
            d["kind"] == "AuthorizationPolicy"
            and d["spec"]["targetRef"]["name"] == f"{name}-rpc"
            and d["spec"]["requiredAuthenticationRefs"][0]["kind"] == "NetworkAuthentication"
            for d in linkerd(docs)
        )
    assert open_to_all == is_edge(name)
    assert ("--meshed" in command) == (not open_to_all)


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_mesh_policy_can_be_left_to_the_platform_team(helm_dir: Path, mesh: str) -> None:
    """global.meshPolicy.enabled=false: the proxies are injected, the policy objects are someone else's."""
    values = {"global": {"mesh": mesh, "meshPolicy": {"enabled": False}}}
    docs = render_umbrella(helm_dir, values)
    assert not istio(docs)
    assert not linkerd(docs)
    template = find(docs, "Deployment", "orders")["spec"]["template"]["metadata"]
    if mesh == "istio":
        assert template["labels"]["sidecar.istio.io/inject"] == "true"
    else:
        assert template["annotations"]["linkerd.io/inject"] == "enabled"


@pytest.mark.parametrize("value_set", ["default", "istio", "linkerd"])
@pytest.mark.parametrize("name", NAMES)
def test_meshed_calls_pass_the_network_policies(
    rendered: dict[tuple[str, str], Docs], value_set: str, name: str
) -> None:
    """Under Linkerd a meshed client's proxy connects to the server's proxy on its inbound port (4143), not
    to the gRPC port: wherever a NetworkPolicy lets gRPC through, it must let 4143 through for the same
    peers, or every meshed call is dropped. Istio keeps the original port."""
    docs = rendered[value_set, name]
    service = find(docs, "NetworkPolicy", name)["spec"]
    test = find(docs, "NetworkPolicy", f"{name}-health-test")["spec"]
    rules = [(r, "from") for r in service["ingress"]] + [(r, "to") for r in service["egress"] + test["egress"]]
    grpc_rules = [rule for rule, _ in rules if any(p["port"] == GRPC_PORT for p in rule.get("ports", []))]
    assert grpc_rules
    for rule in grpc_rules:
        # The edge's rule for clients admits its HTTP/JSON API too.
        ports = {p["port"] for p in rule["ports"]} - ({HTTP_PORT} if is_edge(name) else set())
        assert ports == ({GRPC_PORT, 4143} if render.mesh_of(value_set) == "linkerd" else {GRPC_PORT}), rule
    assert all(4143 not in {p["port"] for p in rule.get("ports", [])} for rule, _ in rules if rule not in grpc_rules)


# --- canaries: traffic splitting --------------------------------------------------------------------

CANARY = "catalog"
CANARY_WEIGHT = 20
CANARY_TAG = "0.2.0-rc1"


def render_umbrella(helm_dir: Path, values: dict[str, Any]) -> Docs:
    return objects_of(helm_dir, render.UMBRELLA, values)


def canary_values(mesh: str, **canary: Any) -> dict[str, Any]:
    settings = {"enabled": True, "weight": CANARY_WEIGHT, "image": {"tag": CANARY_TAG}} | canary
    return {"global": {"mesh": mesh, "database": {"mode": "postgres"}, "canary": {CANARY: settings}}}


@pytest.fixture(scope="module", params=["istio", "linkerd"])
def with_canary(request: pytest.FixtureRequest, helm_dir: Path) -> tuple[str, Docs]:
    return request.param, render_umbrella(helm_dir, canary_values(request.param))


def pod_labels(docs: Docs, deployment: str) -> dict[str, str]:
    labels: dict[str, str] = find(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_a_canary_runs_its_own_image_beside_the_stable_pods(with_canary: tuple[str, Docs]) -> None:
    _, docs = with_canary
    stable = find(docs, "Deployment", CANARY)
    canary = find(docs, "Deployment", f"{CANARY}-canary")
    assert stable["spec"]["selector"]["matchLabels"] == find(docs, "Service", CANARY)["spec"]["selector"], (
        "the stable selector never changes (a Deployment's selector is immutable)"
    )
    assert canary["spec"]["selector"]["matchLabels"] == {
        **stable["spec"]["selector"]["matchLabels"],
        "shopmesh.io/track": "canary",
    }
    assert pod_labels(docs, CANARY)["shopmesh.io/track"] == "stable"
    assert pod_labels(docs, f"{CANARY}-canary")["shopmesh.io/track"] == "canary"
    # Its migrations too, in its `migrate` init container: the canary's release migrates the shared database.
    for kind in ("containers", "initContainers"):
        images = [d["spec"]["template"]["spec"][kind][0]["image"] for d in (stable, canary)]
        assert images == [f"shopmesh-{CANARY}:0.1.0", f"shopmesh-{CANARY}:{CANARY_TAG}"], kind
    assert canary["spec"]["replicas"] == 1
    # Everything else about the pods is the same: configuration, probes, security, volumes.
    strip = {"image": None}
    pods = [d["spec"]["template"]["spec"] for d in (stable, canary)]
    for kind in ("containers", "initContainers"):
        stable_first, canary_first = ({**p[kind][0], **strip} for p in pods)
        assert stable_first == canary_first, kind
    assert {k: v for k, v in pods[0].items() if k not in ("containers", "initContainers")} == {
        k: v for k, v in pods[1].items() if k not in ("containers", "initContainers")
    }
    # Only the canary service has one.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and "canary" in d["metadata"]["name"]] == [
        f"{CANARY}-canary"
    ]


def test_the_mesh_splits_the_callers_calls_by_weight(with_canary: tuple[str, Docs]) -> None:
    mesh, docs = with_canary
    host = f"{CANARY}.{NS}.svc.cluster.local"
    tracks = {t: pod_labels(docs, CANARY if t == "stable" else f"{CANARY}-canary") for t in ("stable", "canary")}
    if mesh == "istio":
        (route,) = find(docs, "VirtualService", CANARY)["spec"]["http"]
        weights = {r["destination"]["subset"]: r["weight"] for r in route["route"]}
        assert {r["destination"]["host"] for r in route["route"]} == {host}
        subsets = {s["name"]: s["labels"] for s in find(docs, "DestinationRule", CANARY)["spec"]["subsets"]}
        assert set(subsets) == set(tracks)
        for track, selector in subsets.items():
            assert selects(selector, tracks[track])
            assert not selects(selector, tracks["canary" if track == "stable" else "stable"])
        assert route["retries"]["retryOn"] == "connect-failure,refused-stream", "the split keeps the retry policy"
    else:
        split = find(docs, "GRPCRoute", f"{CANARY}-split")["spec"]
        assert split["parentRefs"] == [{"group": "core", "kind": "Service", "name": CANARY, "port": GRPC_PORT}]
        (rule,) = split["rules"]
        weights = {}
        for backend in rule["backendRefs"]:
            track = backend["name"].removeprefix(f"{CANARY}-")
            service = find(docs, "Service", backend["name"])["spec"]
            assert backend["port"] == GRPC_PORT
            assert {p["port"] for p in service["ports"]} == {GRPC_PORT}
            assert selects(service["selector"], tracks[track])
            assert not selects(service["selector"], tracks["canary" if track == "stable" else "stable"])
            weights[track] = backend["weight"]
    assert weights == {"stable": 100 - CANARY_WEIGHT, "canary": CANARY_WEIGHT}


def mesh_weights(mesh: str, docs: Docs) -> dict[str, int]:
    """The share of the callers' calls each track of the canary's service gets, as the mesh is told."""
    if mesh == "istio":
        (route,) = find(docs, "VirtualService", CANARY)["spec"]["http"]
        return {r["destination"]["subset"]: r["weight"] for r in route["route"]}
    (rule,) = find(docs, "GRPCRoute", f"{CANARY}-split")["spec"]["rules"]
    return {b["name"].removeprefix(f"{CANARY}-"): b["weight"] for b in rule["backendRefs"]}


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_a_canary_enabled_without_a_weight_gets_no_calls_until_one_is_given(helm_dir: Path, mesh: str) -> None:
    """The rollout's first step (docs/kubernetes.md, "Canaries: a rollout in two steps"): the upgrade that creates
    the canary's pods sends them nothing, for they are still starting. A canary turned on with no weight given
    got 10 % of the calls there and then, each UNAVAILABLE until its pods were ready."""
    values = canary_values(mesh)
    del values["global"]["canary"][CANARY]["weight"]
    docs = render_umbrella(helm_dir, values)
    find(docs, "Deployment", f"{CANARY}-canary")
    assert mesh_weights(mesh, docs) == {"stable": 100, "canary": 0}


def test_the_canary_pods_are_under_the_same_policy_as_the_stable_ones(with_canary: tuple[str, Docs]) -> None:
    mesh, docs = with_canary
    labels = pod_labels(docs, f"{CANARY}-canary")
    policies = [find(docs, "NetworkPolicy", CANARY)["spec"]["podSelector"]["matchLabels"]]
    if mesh == "istio":
        policies += [
            find(docs, k, CANARY)["spec"]["selector"]["matchLabels"]
            for k in ("PeerAuthentication", "AuthorizationPolicy")
        ]
    else:
        policies += [
            find(docs, "Server", f"{CANARY}-{p}")["spec"]["podSelector"]["matchLabels"] for p in ("grpc", "metrics")
        ]
    assert len(policies) == 3
    assert all(selects(selector, labels) for selector in policies)
    # And the callers may reach them: the canary pods carry the name the callers' egress rules select.
    orders_egress = find(docs, "NetworkPolicy", "orders")["spec"]["egress"]
    assert any(
        selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), labels)
        for rule in orders_egress
        for peer in rule["to"]
    )


def test_canary_objects_validate_against_their_schemas(with_canary: tuple[str, Docs]) -> None:
    _, docs = with_canary
    mine = [d for d in docs if d["metadata"]["name"].startswith(CANARY)]
    custom = [
        d
        for d in mine
        if d["apiVersion"].split("/")[0] in {"security.istio.io", "networking.istio.io", "gateway.networking.k8s.io"}
    ]
    assert custom
    assert validate_custom_resources(custom) == []
    for doc in (d for d in mine if d["kind"] in {"Deployment", "Service"}):
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"global": {"canary": {CANARY: {"enabled": True}}, "database": {"mode": "postgres"}}}, "needs a mesh"),
        (
            canary_values("istio") | {"global": {"mesh": "istio", "canary": {CANARY: {"enabled": True}}}},
            "database of its own",
        ),
        # The schema's bound (k8s/values_schema.py), before the template's own check.
        (canary_values("linkerd", weight=120), "/global/canary/catalog/weight': maximum: got 120, want 100"),
        # A share of the calls routed to no pod: each of them UNAVAILABLE (no healthy upstream).
        (canary_values("istio", replicaCount=0), r"weight 20 sends 20% of its callers' calls .* replicaCount \(0\)"),
        (canary_values("linkerd", replicaCount=0), "runs no pod to answer them"),
        ({"global": {"mesh": "istio", "canary": {"gateway": {"enabled": True}}}}, "split at your ingress"),
        (
            {"global": canary_values("istio")["global"] | {"meshPolicy": {"enabled": False}}},
            "needs a mesh and its policy objects",
        ),
    ],
    ids=["no-mesh", "sqlite", "weight", "no-canary-pod-istio", "no-canary-pod-linkerd", "edge", "no-mesh-policy"],
)
def test_a_canary_that_cannot_work_fails_the_render_saying_why(
    helm_dir: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=message):
        render_umbrella(helm_dir, values)


def test_the_stable_disruption_budget_counts_only_the_stable_pods(helm_dir: Path) -> None:
    """Staging (two replicas, a budget of one) with a canary: a drain must not evict every stable pod
    because the canary's pod still satisfies the budget."""
    staging = render.values_for("staging", helm_dir)
    # Staging's own database settings (PostgreSQL, and its peers, which staging must name).
    canary = canary_values("linkerd")["global"] | {"database": staging["global"]["database"]}
    docs = render_umbrella(helm_dir, {"global": staging["global"] | canary})
    budget = find(docs, "PodDisruptionBudget", CANARY)["spec"]["selector"]["matchLabels"]
    assert selects(budget, pod_labels(docs, CANARY))
    assert not selects(budget, pod_labels(docs, f"{CANARY}-canary"))


def staging_with_canary(helm_dir: Path, max_connections: int | None = None, **canary: Any) -> dict[str, Any]:
    """Staging (disruption budgets on) behind Linkerd with a canary of CANARY; its connection budget raised to
    `max_connections` if given (staging's 290 fits one canary pod and no more)."""
    staging = render.values_for("staging", helm_dir)
    database = staging["global"]["database"] | ({} if max_connections is None else {"maxConnections": max_connections})
    return {"global": staging["global"] | canary_values("linkerd", **canary)["global"] | {"database": database}}


def test_a_canary_of_two_pods_is_drained_one_pod_at_a_time(helm_dir: Path) -> None:
    """Its own budget, maxUnavailable 1 over the canary's pods alone: a drain never takes both at once, so the
    canary's share of the calls (which neither mesh sends to the stable pods) always has a pod to answer it."""
    docs = render_umbrella(helm_dir, staging_with_canary(helm_dir, max_connections=296, replicaCount=2))
    budget = find(docs, "PodDisruptionBudget", f"{CANARY}-canary")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(docs, f"{CANARY}-canary"))
    assert not selects(budget["spec"]["selector"]["matchLabels"], pod_labels(docs, CANARY))
    assert find(docs, "PodDisruptionBudget", CANARY)["spec"]["minAvailable"] == 1
    kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)


def test_a_one_pod_canary_taking_calls_is_named_with_what_a_drain_does_to_them(helm_dir: Path) -> None:
    """One pod cannot have a budget that lets a drain finish, so none is rendered; what that costs is said where
    the operator setting the weight reads it, helm's notes after the upgrade."""
    values = staging_with_canary(helm_dir)
    docs = render_umbrella(helm_dir, values)
    assert [
        d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget" and CANARY in d["metadata"]["name"]
    ] == [CANARY]
    notes = " ".join(render.notes(helm_dir, values).split())
    assert f"The canary of {CANARY} is one pod taking {CANARY_WEIGHT}% of the calls to {CANARY}" in notes
    assert "until its replacement is ready (up to 120 s) those calls fail UNAVAILABLE" in notes
    assert f"global.canary.{CANARY}.replicaCount=2" in notes
    # With no calls to lose (weight 0, the rollout's first step) there is nothing to say.
    quiet = " ".join(render.notes(helm_dir, staging_with_canary(helm_dir, weight=0)).split())
    assert "The canary of" not in quiet


@pytest.mark.parametrize(
    ("caller_methods", "message"),
    [
        ({"orders": None}, "no methods for its caller orders"),
        ({"orders": []}, "no methods for its caller orders"),
        ({"payments": ["GetStock"]}, "payments is not among its callers"),
        ({"gateway": ["/shopmesh.inventory.v1.InventoryService/GetStock"]}, "is not a method name"),
    ],
    ids=["caller-left-out", "caller-with-none", "not-a-caller", "a-path"],
)
def test_caller_methods_that_do_not_fit_the_callers_fail_the_render(
    helm_dir: Path, caller_methods: dict[str, Any], message: str
) -> None:
    """A caller left without its methods would be refused every call once the mesh enforces the policy: the
    render says so instead, as it does for methods of a service that does not call this one."""
    with pytest.raises(Exception, match=message):
        objects_of(helm_dir, "inventory", {"global": {"mesh": "istio"}, "callerMethods": caller_methods})


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_a_service_no_caller_is_listed_for_admits_nobody_but_health_and_metrics(helm_dir: Path, mesh: str) -> None:
    """Deny by default, as the local mesh (docs/mesh.md): a service whose chart lists no callers (not the
    edge) renders a policy that admits health and metrics alone; nothing listed never means every method."""
    docs = objects_of(helm_dir, "inventory", {"global": {"mesh": mesh}, "callers": [], "callerMethods": None})
    if mesh == "istio":
        grants = istio_grants(find(docs, "AuthorizationPolicy", "inventory"))
        assert sorted(grants, key=repr) == sorted(
            [(None, str(GRPC_PORT), (f"{HEALTH}*",)), (None, str(METRICS_PORT), ())], key=repr
        )
    else:
        assert routes_of(docs, "inventory-grpc") == {
            "inventory-health": ("PathPrefix", HEALTH),
            "inventory-rpc": ("PathPrefix", "/"),
        }
        grants = linkerd_grants(docs)
        assert grants == {"inventory-health": {"any network"}, "inventory-metrics": {"any network"}}


# --- staging runs behind a mesh ------------------------------------------------------------------------------

# What the refusal of a staging release without a mesh must name: the two value sets that add one.
MESH_FILES = ("helm/shopmesh/values-istio.yaml", "helm/shopmesh/values-linkerd.yaml")


@pytest.mark.parametrize("chart", render.all_charts())
def test_staging_without_a_mesh_refuses_to_render_naming_the_mesh_values_files(helm_dir: Path, chart: str) -> None:
    """The services trust the gateway's x-user-id (and x-caller) because the mesh's mTLS and its policy admit
    only the call graph's callers (money.proto). Staging rendered with values-staging.yaml alone had no mesh:
    no PeerAuthentication or AuthorizationPolicy, every pod labelled sidecar.istio.io/inject "false", so any
    pod in the cluster could call payments as orders. The umbrella and each service chart alone refuse it."""
    with pytest.raises(Exception, match=r'global\.mesh: environment "staging" runs every pod behind') as refused:
        objects_of(helm_dir, chart, render.values_for("staging", helm_dir))
    message = " ".join(str(refused.value).split())
    for mesh_file in MESH_FILES:
        assert mesh_file in message, message


def test_dev_renders_without_a_mesh(rendered: dict[tuple[str, str], Docs]) -> None:
    # Only outside dev is a mesh required: `make skaffold-dev` without PROFILE runs on kind without one.
    docs = rendered["default", render.UMBRELLA]
    assert not istio(docs)
    assert not linkerd(docs)


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_staging_with_either_meshs_values_file_renders_the_mesh_policy_and_it_validates(
    rendered: dict[tuple[str, str], Docs], mesh: str
) -> None:
    docs = rendered[f"staging+{mesh}", render.UMBRELLA]
    kinds = {d["kind"] for d in (istio(docs) if mesh == "istio" else linkerd(docs))}
    if mesh == "istio":
        assert {"PeerAuthentication", "AuthorizationPolicy"} <= kinds
        assert validate_custom_resources(istio(docs)) == []
    else:
        assert {"Server", "MeshTLSAuthentication", "AuthorizationPolicy"} <= kinds
        assert linkerd_problems(linkerd(docs)) == []
    for name, metadata in pod_templates(docs):
        assert metadata["labels"]["sidecar.istio.io/inject"] == ("true" if mesh == "istio" else "false"), name
        assert metadata["annotations"]["linkerd.io/inject"] == ("enabled" if mesh == "linkerd" else "disabled"), name


def test_deploy_staging_without_a_mesh_values_file_stops_before_helm_naming_them(tmp_path: Path) -> None:
    result, capture = run_deploy_staging(
        tmp_path,
        helm='#!/bin/sh\necho helm "$@" >> "$CAPTURE"\n',
        kubectl='#!/bin/sh\necho kubectl "$@" >> "$CAPTURE"\n',
        STAGING_VALUES="",
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    for mesh_file in MESH_FILES:
        assert mesh_file in message, message
    assert not capture.exists(), "helm or kubectl ran"
