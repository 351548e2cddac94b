"""The charts under a platform team's values: what its cluster needs of every service's objects (workload
identity on the ServiceAccounts, its mesh's control plane, its admission policies' labels), and the values that
would render but that the API server, or the pods, would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shopmesh_platform.topology import SERVICES

from .k8skit import Docs, find, objects_of, render

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


@pytest.mark.parametrize(
    ("chart", "values", "path"),
    [
        ("users", {"database": {"existingSecret": ""}}, "/database/existingSecret"),
        ("users", {"database": {"secretKey": ""}}, "/database/secretKey"),
        ("orders", {"idempotency": {"existingSecret": ""}}, "/idempotency/existingSecret"),
        ("orders", {"idempotency": {"secretKey": ""}}, "/idempotency/secretKey"),
        (
            "orders",
            {"global": {"nats": {"existingSecret": "nats-credentials", "secretKey": ""}}},
            "/global/nats/secretKey",
        ),
    ],
)
def test_an_empty_secret_name_or_key_is_refused_by_the_schema(
    helm_dir: Path, chart: str, values: dict[str, Any], path: str
) -> None:
    """ "" names no Secret and no key: the render would pass and the API server refuse the pod (or the kubelet
    never mount its volume). Where "" means "none" (global.nats.existingSecret, global.smtp.existingSecret) it
    stays allowed."""
    with pytest.raises(Exception, match=f"at '{path}'"):
        objects_of(helm_dir, chart, values)


def test_the_secrets_command_refuses_an_empty_secret_name_instead_of_printing_an_empty_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy-staging.sh checks each printed name with kubectl; its loop would skip an empty line silently."""
    values = tmp_path / "values.yaml"
    values.write_text('users:\n  database:\n    existingSecret: ""\n')
    status = render.main(["secrets", "-f", str(values)])
    out = capsys.readouterr()
    assert status != 0
    assert "" not in out.out.splitlines()
    assert "existingSecret" in out.err


@pytest.mark.parametrize(
    ("chart", "values", "named"),
    [
        (
            "catalog",
            {"resources": {"requests": {"memory": "512Mi"}}},
            r"catalog: memory: the limit \(\d+Mi\) is below the request \(512Mi\)",
        ),
        ("catalog", {"resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": 1}}}, r"catalog.*cpu.*1500m"),
        ("users", {"resources": {"requests": {"memory": "1G"}, "limits": {"memory": "900Mi"}}}, r"users.*memory"),
        ("gateway", {"httpApi": {"resources": {"requests": {"cpu": "2"}}}}, r"gateway.*httpApi.*cpu"),
    ],
)
def test_a_limit_below_its_request_fails_the_render_naming_the_service_and_resource(
    helm_dir: Path, chart: str, values: dict[str, Any], named: str
) -> None:
    """The API server refuses such a pod (a request above its limit), the whole release with it."""
    with pytest.raises(Exception, match=named):
        objects_of(helm_dir, chart, values)


def test_a_limit_equal_to_its_request_in_another_unit_renders(helm_dir: Path) -> None:
    sizing = {"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1024Mi"}}
    docs = objects_of(helm_dir, "catalog", {"resources": sizing})
    assert find(docs, "Deployment", "catalog")["spec"]["template"]["spec"]["containers"][0]["resources"] == sizing


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"global": {"podAnnotations": {"bad key with spaces": "x"}}}, "/global/podAnnotations"),
        ({"podLabels": {"team": "has spaces"}}, "/podLabels/team"),
        ({"podLabels": {"-team": "shop"}}, "/podLabels"),
        ({"podLabels": {"team": "x" * 64}}, "/podLabels/team"),
        ({"serviceAccount": {"annotations": {"role arn": "x"}}}, "/serviceAccount/annotations"),
        ({"nodeSelector": {"pool/": "apps"}}, "/nodeSelector"),
        ({"global": {"monitoring": {"labels": {"release": "kube prometheus"}}}}, "/global/monitoring/labels"),
    ],
)
def test_a_label_or_annotation_the_api_server_would_refuse_is_refused_by_the_schema(
    helm_dir: Path, values: dict[str, Any], path: str
) -> None:
    with pytest.raises(Exception, match=f"at '{path}"):
        objects_of(helm_dir, "catalog", values)


def test_valid_labels_and_annotations_with_prefixes_and_any_annotation_value_render(helm_dir: Path) -> None:
    values = {
        "podLabels": {"example.com/team": "shop", "cost-center": "42", "empty": ""},
        "podAnnotations": {"ad.datadoghq.com/tags": '{"env": "staging"}'},
    }
    pod = find(objects_of(helm_dir, "catalog", values), "Deployment", "catalog")["spec"]["template"]["metadata"]
    assert pod["labels"]["example.com/team"] == "shop"
    assert pod["annotations"]["ad.datadoghq.com/tags"] == '{"env": "staging"}'


def spread_of(docs: Docs, name: str) -> list[dict[str, Any]]:
    spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    return [{k: v for k, v in c.items() if k != "labelSelector"} for c in spec.get("topologySpreadConstraints", [])]


HOSTNAME = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
ZONE = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}


def test_topology_spread_takes_a_platforms_hard_zone_spread_and_keeps_the_default_otherwise(helm_dir: Path) -> None:
    """A platform that must survive a zone's loss asks DoNotSchedule over at least 3 zones (minDomains); the rest
    of the default spread (per node, ScheduleAnyway) stays, and a service's own value wins key by key."""
    assert spread_of(objects_of(helm_dir, "catalog", {}), "catalog") == [HOSTNAME, ZONE]
    hard = {"zone": {"whenUnsatisfiable": "DoNotSchedule", "minDomains": 3}}
    docs = objects_of(helm_dir, "catalog", {"global": {"topologySpread": hard}})
    assert spread_of(docs, "catalog") == [HOSTNAME, {**ZONE, "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3}]
    own = {"zone": {"maxSkew": 2}, "hostname": {"whenUnsatisfiable": "DoNotSchedule"}}
    docs = objects_of(helm_dir, "catalog", {"global": {"topologySpread": hard}, "topologySpread": own})
    assert spread_of(docs, "catalog") == [
        {**HOSTNAME, "whenUnsatisfiable": "DoNotSchedule"},
        {**ZONE, "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3},
    ]
    docs = objects_of(helm_dir, "catalog", {"global": {"topologySpread": hard}, "topologySpread": False})
    assert spread_of(docs, "catalog") == []
    docs = objects_of(helm_dir, "catalog", {"global": {"topologySpread": False}, "topologySpread": {"enabled": True}})
    assert spread_of(docs, "catalog") == [HOSTNAME, ZONE]


def test_min_domains_without_do_not_schedule_fails_the_render(helm_dir: Path) -> None:
    """The API server refuses minDomains unless whenUnsatisfiable is DoNotSchedule."""
    with pytest.raises(Exception, match=r"topologySpread\.zone for catalog: minDomains .*DoNotSchedule"):
        objects_of(helm_dir, "catalog", {"topologySpread": {"zone": {"minDomains": 3}}})


POSTGRES = {"database": {"mode": "postgres"}}


@pytest.mark.parametrize(("layer", "unavailable"), [("service", 1), ("service", "25%"), ("global", "50%")])
def test_a_budget_of_max_unavailable_replaces_min_available(helm_dir: Path, layer: str, unavailable: Any) -> None:
    """maxUnavailable keeps a budget right as the HPA scales (min-available counts stay fixed); given where
    staging's minAvailable is (global:), or a service's own, it is the budget's only bound."""
    budget = {"enabled": True, "maxUnavailable": unavailable}
    staging = {**POSTGRES, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}}
    values: dict[str, Any] = {"replicaCount": 3}
    if layer == "service":
        values |= {"global": staging, "podDisruptionBudget": budget}
    else:
        values |= {"global": {**POSTGRES, "podDisruptionBudget": budget}}
    spec = find(objects_of(helm_dir, "catalog", values), "PodDisruptionBudget", "catalog")["spec"]
    assert spec["maxUnavailable"] == unavailable
    assert "minAvailable" not in spec


def test_min_available_and_max_unavailable_together_fail_the_render(helm_dir: Path) -> None:
    budget = {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}
    values = {"replicaCount": 3, "global": POSTGRES, "podDisruptionBudget": budget}
    with pytest.raises(Exception, match=r"podDisruptionBudget for catalog: .*both minAvailable .* and maxUnavailable"):
        objects_of(helm_dir, "catalog", values)


@pytest.mark.parametrize("unavailable", [0, "0%"])
def test_a_max_unavailable_that_would_block_every_drain_fails_the_render(helm_dir: Path, unavailable: Any) -> None:
    values = {
        "replicaCount": 3,
        "global": POSTGRES,
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": unavailable},
    }
    with pytest.raises(Exception, match="would block every node drain"):
        objects_of(helm_dir, "catalog", values)


def test_helm_test_pods_carry_pod_labels_and_annotations_the_charts_own_winning(helm_dir: Path) -> None:
    """An admission policy that asks every pod for a team label refuses a `helm test` pod without it; the chart's
    labels (its NetworkPolicy selects them) and its hook annotations stay the chart's."""
    values = {
        "global": {"podLabels": {"team": "shop", "app.kubernetes.io/component": "mine"}, "podAnnotations": {"a": "1"}},
        "podLabels": {"cost-center": "42"},
        "podAnnotations": {"helm.sh/hook": "pre-install", "b": "2"},
    }
    meta = find(objects_of(helm_dir, "catalog", values), "Pod", "catalog-health-test")["metadata"]
    assert {"team": "shop", "cost-center": "42", "app.kubernetes.io/component": "helm-test"}.items() <= meta[
        "labels"
    ].items()
    assert {"a": "1", "b": "2", "helm.sh/hook": "test"}.items() <= meta["annotations"].items()
