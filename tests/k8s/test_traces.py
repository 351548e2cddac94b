"""Where the services' spans go on Kubernetes: every chart, alone or through the umbrella, in every value set,
exports to `global.otel.endpoint` (by default the dev Jaeger of k8s/infra, which `make kind-up` runs) and its
NetworkPolicy lets them out to that collector's pods on its port and nowhere else; a setting that would
have the spans dropped on the way fails the render instead (and likewise a NATS URL and an SMTP relay, which are
reached the same way)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, Docs, find, objects_of, peers_by_port, render

JAEGER = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "jaeger.yaml").read_text()) if d]


def jaeger(kind: str) -> dict[str, Any]:
    [found] = [d for d in JAEGER if d["kind"] == kind]
    return found


def otlp_egress(docs: Docs, name: str, port: int) -> list[dict[str, Any]]:
    return peers_by_port(find(docs, "NetworkPolicy", name)["spec"]["egress"], "to").get(port, [])


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
@pytest.mark.parametrize("name", list(SERVICES))
def test_every_service_exports_its_spans_to_the_dev_jaeger_and_may_reach_it(
    rendered: dict[tuple[str, str], Docs], value_set: str, name: str
) -> None:
    service = jaeger("Service")
    [otlp] = [p for p in service["spec"]["ports"] if p["name"] == "otlp-grpc"]
    endpoint = (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{otlp['port']}"
    )
    pod_labels = jaeger("Deployment")["spec"]["template"]["metadata"]["labels"]
    for docs in (rendered[value_set, name], rendered[value_set, render.UMBRELLA]):
        env = find(docs, "ConfigMap", name)["data"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
        assert env["OTEL_TRACES_SAMPLER_RATIO"] == "1"
        [peer] = otlp_egress(docs, name, otlp["port"])
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": service["metadata"]["namespace"]
        }
        assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items(), "the peers select Jaeger's pods"


def test_another_collector_with_its_peers_port_and_sampling_is_what_the_services_use(helm_dir: Path) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    otel = {"endpoint": "http://collector.observability:4319/", "port": 4319, "peers": peers, "samplerRatio": 0.1}
    docs = objects_of(helm_dir, "catalog", {"global": {"otel": otel}})
    env = find(docs, "ConfigMap", "catalog")["data"]
    assert (env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_TRACES_SAMPLER_RATIO"]) == (otel["endpoint"], "0.1")
    assert otlp_egress(docs, "catalog", 4319) == peers
    assert otlp_egress(docs, "catalog", 4317) == []


def test_without_an_endpoint_nothing_is_exported_nor_let_out(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, "catalog", {"global": {"otel": {"endpoint": ""}}})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in find(docs, "ConfigMap", "catalog")["data"]
    assert otlp_egress(docs, "catalog", 4317) == []


@pytest.mark.parametrize(
    ("otel", "problem"),
    [
        ({"endpoint": "http://collector.observability:4319"}, "and global.otel.port (4317) disagree"),
        ({"endpoint": "http://collector.observability"}, "and global.otel.port (4317) disagree"),
        ({"endpoint": "http://collector1.observability"}, "and global.otel.port (4317) disagree"),
        ({"endpoint": "collector.observability:4319"}, "and global.otel.port (4317) disagree"),
        (
            {"endpoint": "http://collector.observability:4317"},
            "is not the dev infrastructure's, but global.otel.peers still selects its pods",
        ),
    ],
)
def test_spans_the_network_policy_would_drop_fail_the_render(
    helm_dir: Path, otel: dict[str, Any], problem: str
) -> None:
    with pytest.raises(Exception, match=re.escape(problem)):
        objects_of(helm_dir, "catalog", {"global": {"otel": otel}})


# NATS is reached the same way (global.nats.url, port, peers): the same check guards it.
@pytest.mark.parametrize(
    ("nats", "problem"),
    [
        ({"url": "nats://nats.messaging:4223"}, "and global.nats.port (4222) disagree"),
        ({"url": "nats://nats.messaging:4222"}, "is not the dev infrastructure's, but global.nats.peers still selects"),
    ],
)
def test_a_nats_url_the_network_policy_would_not_let_through_fails_the_render(
    helm_dir: Path, nats: dict[str, Any], problem: str
) -> None:
    with pytest.raises(Exception, match=re.escape(problem)):
        objects_of(helm_dir, "orders", {"global": {"nats": nats}})


def test_a_nats_url_refused_by_the_render_is_named_without_its_credentials(helm_dir: Path) -> None:
    """NATS_URL carries NATS' token or user and password (docs/chassis.md: "a user part (`user:password@` or a
    token) is masked in logs", percent-encoded for the chassis to decode). The render's refusal quotes
    global.nats.url as given, credentials and all, into the output of `helm install` / `helm template` (CI
    logs, terminals). A user part there is refused now before the port is checked (it belongs in
    global.nats.existingSecret's Secret), and that refusal masks it too."""
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    for url in ("nats://s3cr%2Fet@nats.messaging:4223", "nats://shop:pa%3Ass@nats.messaging:4223"):
        with pytest.raises(Exception, match=re.escape("nats://***@nats.messaging:4223 has credentials")) as refused:
            objects_of(helm_dir, "orders", {"global": {"nats": {"url": url, "peers": peers}}})
        assert "s3cr" not in str(refused.value)
        assert "pa%3Ass" not in str(refused.value)


def test_a_nats_url_without_a_scheme_refused_by_the_render_is_named_without_its_token(helm_dir: Path) -> None:
    """NATS_URL's servers may leave out the scheme, a user part and all (`s3cret@nats:4222`, as nats-py and the
    chassis read it: shown_nats_url masks it `***@nats:4222`). The render's refusal masks only a user part after
    `//`, and `urlParse`, which the check calls on every server (a template's `ternary` evaluates both its
    values), fails on such a server with an error quoting it whole: either way `helm install` prints the token."""
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    for url in ("s3cret@nats.messaging:4223", "nats://nats-0.messaging:4223,s3cret@nats-1.messaging:4223"):
        with pytest.raises(Exception) as refused:  # noqa: PT011 - the port's refusal, or urlParse's
            objects_of(helm_dir, "orders", {"global": {"nats": {"url": url, "peers": peers}}})
        assert "s3cret" not in str(refused.value)


def test_a_nats_cluster_url_renders_as_the_services_take_it(helm_dir: Path) -> None:
    """docs/chassis.md: NATS_URL is "the NATS server, or a cluster's servers comma-separated
    (`nats://a:4222,nats://b:4222`)", credentials "given on one server or the same on each". global.nats.url
    is NATS_URL, but the egress check parses it as one URL and refuses a cluster whose every server listens
    on global.nats.port: "... and global.nats.port (4222) disagree"."""
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    url = "nats://nats-0.messaging:4222,nats://nats-1.messaging:4222,nats://nats-2.messaging:4222"
    docs = objects_of(helm_dir, "orders", {"global": {"nats": {"url": url, "peers": peers}}})
    assert find(docs, "ConfigMap", "orders")["data"]["NATS_URL"] == url


# Cluster DNS completes a Service's short name: the dev infrastructure written `nats.shopmesh-infra` (or with `.svc`,
# in upper case, with a trailing dot) is the same pods the default peers select, and renders as the long form does.
@pytest.mark.parametrize(
    ("chart", "values", "setting"),
    [
        (
            "orders",
            {"nats": {"url": "nats://nats.shopmesh-infra:4222"}},
            ("NATS_URL", "nats://nats.shopmesh-infra:4222"),
        ),
        ("orders", {"nats": {"url": "nats://NATS.shopmesh-infra.svc.:4222"}}, None),
        (
            "catalog",
            {"otel": {"endpoint": "http://jaeger.shopmesh-infra.svc:4317"}},
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger.shopmesh-infra.svc:4317"),
        ),
        ("notifications", {"smtp": {"host": "mailpit.shopmesh-infra"}}, ("SMTP_HOST", "mailpit.shopmesh-infra")),
    ],
)
def test_the_dev_infrastructure_by_a_short_name_renders_with_its_default_peers(
    helm_dir: Path, chart: str, values: dict[str, Any], setting: tuple[str, str] | None
) -> None:
    docs = objects_of(helm_dir, chart, {"global": values})
    if setting is not None:
        name, value = setting
        assert find(docs, "ConfigMap", chart)["data"][name] == value


@pytest.mark.parametrize(
    "url",
    [
        "nats://nats:4222",  # the release's own namespace, not shopmesh-infra
        "nats://nats.shopmesh-infra.example.com:4222",
        "nats://nats.shopmesh-infra.svc.cluster.local.evil:4222",
        "nats://nats.shopmesh-infra.svc.cluster.local:4222,nats://nats.messaging:4222",
    ],
)
def test_only_a_spelling_of_the_dev_infrastructure_passes_with_its_peers(helm_dir: Path, url: str) -> None:
    with pytest.raises(Exception, match=re.escape("is not the dev infrastructure's, but global.nats.peers still")):
        objects_of(helm_dir, "orders", {"global": {"nats": {"url": url}}})


@pytest.mark.parametrize(
    ("url", "dev"),
    [
        ("nats://nats.shopmesh-infra.svc.corp.example:4222", True),
        ("nats://nats.shopmesh-infra:4222", True),
        # Another cluster's domain is not this one's: a name there is not k8s/infra's NATS.
        ("nats://nats.shopmesh-infra.svc.cluster.local:4222", False),
    ],
)
def test_the_dev_infrastructure_is_spelt_in_the_clusters_own_domain(helm_dir: Path, url: str, dev: bool) -> None:
    values = {"global": {"clusterDomain": "corp.example", "nats": {"url": url}}}
    if dev:
        assert find(objects_of(helm_dir, "orders", values), "ConfigMap", "orders")["data"]["NATS_URL"] == url
    else:
        with pytest.raises(Exception, match=re.escape("is not the dev infrastructure's, but global.nats.peers still")):
            objects_of(helm_dir, "orders", values)


# And the SMTP relay (global.smtp.host, port, peers).
def test_an_smtp_relay_elsewhere_with_k8s_infras_peers_fails_the_render(helm_dir: Path) -> None:
    smtp = {"host": "smtp.example.com", "port": 465}
    with pytest.raises(Exception, match=re.escape("is not the dev infrastructure's, but global.smtp.peers still")):
        objects_of(helm_dir, "notifications", {"global": {"smtp": smtp}})
    peers = [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    docs = objects_of(helm_dir, "notifications", {"global": {"smtp": smtp | {"peers": peers}}})
    assert peers_by_port(find(docs, "NetworkPolicy", "notifications")["spec"]["egress"], "to")[465] == peers


def test_a_nats_url_elsewhere_with_its_peers_is_what_the_services_use(helm_dir: Path) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}]
    docs = objects_of(helm_dir, "orders", {"global": {"nats": {"url": "nats://nats.messaging:4222", "peers": peers}}})
    assert find(docs, "ConfigMap", "orders")["data"]["NATS_URL"] == "nats://nats.messaging:4222"
    assert peers_by_port(find(docs, "NetworkPolicy", "orders")["spec"]["egress"], "to")[4222] == peers
