"""The charts under a platform team's values: what its cluster needs of every service's objects (workload
identity on the ServiceAccounts, its mesh's control plane, its admission policies' labels), and the values that
would render but that the API server, or the pods, would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shopmesh_platform.topology import SERVICES

from .k8skit import Docs, find, objects_of

IRSA = "eks.amazonaws.com/role-arn"


def of_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_service_account_annotations_reach_every_services_account_the_services_own_winning(helm_dir: Path) -> None:
    """IRSA / Workload Identity: the platform's annotation on every service's ServiceAccount, one service's own
    replacing it key by key; the account's name stays the service's (the mesh's identity is built on it)."""
    values = {
        "global": {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/shop", "team": "shop"}}},
        "payments": {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/payments"}}},
    }
    accounts = of_kind(objects_of(helm_dir, "shopmesh", values), "ServiceAccount")
    for service in SERVICES:
        role = "payments" if service == "payments" else "shop"
        assert accounts[service]["metadata"].get("annotations") == {IRSA: f"arn:aws:iam::1:role/{role}", "team": "shop"}


def test_service_account_annotations_stay_off_the_helm_test_account(helm_dir: Path) -> None:
    """The test pod's identity may call health and nothing else: the service's cloud role is not its."""
    docs = objects_of(helm_dir, "catalog", {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/c"}}})
    assert IRSA not in find(docs, "ServiceAccount", "catalog-health-test")["metadata"]["annotations"]
    assert find(docs, "ServiceAccount", "catalog")["metadata"]["annotations"] == {IRSA: "arn:aws:iam::1:role/c"}


def control_plane_peers(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    rules = [rule for rule in policy["spec"]["egress"] if port in [p["port"] for p in rule["ports"]]]
    return [peer for rule in rules for peer in rule["to"]]


@pytest.mark.parametrize(
    ("mesh", "port", "default"),
    [
        ("istio", 15012, {"namespace": "istio-system", "labels": {"app": "istiod"}}),
        ("linkerd", 8086, {"namespace": "linkerd", "labels": {}}),
    ],
)
def test_the_mesh_control_planes_namespace_and_labels_open_egress_from_service_and_test_pods(
    helm_dir: Path, mesh: str, port: int, default: dict[str, Any]
) -> None:
    """A managed mesh (AKS's add-on runs istiod in aks-istio-system, revision-labelled): the one value reaches the
    service's policy and its `helm test` pod's (a meshed pod without it never gets its config, nor starts)."""
    plane = {"namespace": "aks-istio-system", "podLabels": {"app": "istiod", "istio.io/rev": "asm-1-24"}}
    expected = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "aks-istio-system"}},
            "podSelector": {"matchLabels": {"app": "istiod", "istio.io/rev": "asm-1-24"}},
        }
    ]
    docs = objects_of(helm_dir, "catalog", {"global": {"mesh": mesh, "networkPolicy": {"meshControlPlane": plane}}})
    for name in ("catalog", "catalog-health-test"):
        assert control_plane_peers(find(docs, "NetworkPolicy", name), port) == expected, name
    # Unset: each mesh's own install's namespace, as before.
    docs = objects_of(helm_dir, "catalog", {"global": {"mesh": mesh}})
    peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": default["namespace"]}}}
    if default["labels"]:
        peer["podSelector"] = {"matchLabels": default["labels"]}
    for name in ("catalog", "catalog-health-test"):
        assert control_plane_peers(find(docs, "NetworkPolicy", name), port) == [peer], name


def test_the_environments_extra_egress_reaches_the_helm_test_pods_policy_too(helm_dir: Path) -> None:
    """global.networkPolicy.extraEgress is the environment's (a proxy, a control plane elsewhere): the `helm test`
    pod runs in the same environment; a service's own extraEgress (its callees') is not the test pod's."""
    environment = {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 3128}]}
    own = {"to": [{"ipBlock": {"cidr": "10.8.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    docs = objects_of(
        helm_dir,
        "catalog",
        {"global": {"networkPolicy": {"extraEgress": [environment]}}, "networkPolicy": {"extraEgress": [own]}},
    )
    assert environment in find(docs, "NetworkPolicy", "catalog-health-test")["spec"]["egress"]
    assert own not in find(docs, "NetworkPolicy", "catalog-health-test")["spec"]["egress"]
    assert [environment, own] == find(docs, "NetworkPolicy", "catalog")["spec"]["egress"][-2:]


@pytest.mark.parametrize("endpoint", ["http://user:s3cret@otel.observability:4317", "s3cret@otel.observability:4317"])
def test_credentials_in_the_otel_endpoint_fail_the_render_without_showing_them(helm_dir: Path, endpoint: str) -> None:
    """The endpoint goes into every service's ConfigMap (and the edge's Envoy config), which anyone who may read
    the namespace's ConfigMaps reads: refused as a NATS URL with credentials is, the user part masked."""
    values = {"global": {"otel": {"endpoint": endpoint, "peers": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}}
    with pytest.raises(Exception, match=r"global\.otel\.endpoint: .*\*\*\*@otel\.observability:4317") as refused:
        objects_of(helm_dir, "catalog", values)
    assert "s3cret" not in str(refused.value)
