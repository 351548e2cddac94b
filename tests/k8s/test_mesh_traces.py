"""The meshes' own spans on Kubernetes. Under Istio each service's Telemetry has its sidecars report their spans
through the OpenTelemetry provider that `make mesh-istio` installs, named as the Telemetry names it and pointed
at the collector the services export to (global.otel.endpoint), recording the services' share of new traces
(samplerRatio); none without an endpoint or without Istio. Linkerd's proxies export only to a collector inside
the mesh, which the dev Jaeger is not: the chart sets nothing for them, and docs/mesh.md's steps for meshing
the collector name the collector the services use."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shopmesh_platform.topology import SERVICES, is_edge

from .k8skit import ROOT, Docs, find, objects_of, peers_by_port, render, validate_custom_resources

NAMES = list(SERVICES)
JAEGER = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "jaeger.yaml").read_text()) if d]
MESH_DOC = (ROOT / "docs" / "mesh.md").read_text()


def telemetries(docs: Docs) -> Docs:
    return [d for d in docs if d["kind"] == "Telemetry"]


def collector(docs: Docs, name: str) -> tuple[str, int]:
    """Where the service exports its spans: (host, port)."""
    endpoint = urlsplit(find(docs, "ConfigMap", name)["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname is not None
    assert endpoint.port is not None
    return endpoint.hostname, endpoint.port


def jaeger(kind: str) -> dict[str, Any]:
    [found] = [d for d in JAEGER if d["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, Any]]:
    """k8s/scripts/mesh-istio.sh run against stand-ins for istioctl and kubectl: istioctl's arguments and the
    IstioOperator file it was given."""
    scratch = tmp_path_factory.mktemp("mesh-istio")
    stubs = scratch / "bin"
    stubs.mkdir()
    (stubs / "kubectl").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "istioctl").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$CAPTURE/args"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -f ] && cp "$2" "$CAPTURE/overlay"; shift; done\n'
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = os.environ | {"PATH": f"{stubs}:{os.environ['PATH']}", "CAPTURE": str(scratch), "KIND_CLUSTER": "shopmesh"}
    script = ROOT / "k8s" / "scripts" / "mesh-istio.sh"
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return (scratch / "args").read_text().splitlines(), yaml.safe_load((scratch / "overlay").read_text())


# --- Istio ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_services_sidecars_report_their_spans_with_the_provider_mesh_istio_installs(
    rendered: dict[tuple[str, str], Docs], installed: tuple[list[str], dict[str, Any]], name: str
) -> None:
    [provider] = installed[1]["spec"]["meshConfig"]["extensionProviders"]
    for docs in (rendered["istio", name], rendered["istio", render.UMBRELLA]):
        telemetry = find(docs, "Telemetry", name)
        # The service's pods, the canary's included, and nobody else's.
        selector = telemetry["spec"]["selector"]["matchLabels"]
        assert selector == find(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        ratio = float(find(docs, "ConfigMap", name)["data"]["OTEL_TRACES_SAMPLER_RATIO"])
        percentage = ratio * 100 if is_edge(name) else 100
        assert telemetry["spec"]["tracing"] == [
            {"providers": [{"name": provider["name"]}], "randomSamplingPercentage": percentage}
        ]


def test_mesh_istio_points_the_provider_at_the_collector_the_services_export_to(
    rendered: dict[tuple[str, str], Docs], installed: tuple[list[str], dict[str, Any]]
) -> None:
    """The dev Jaeger's Service, on its OTLP/gRPC port; the sidecar's connection to it leaves the pod like the
    service's own, so the egress rule for the services' spans (tests/k8s/test_traces.py) lets it out too."""
    args, overlay = installed
    assert overlay["apiVersion"] == "install.istio.io/v1alpha1"
    assert overlay["kind"] == "IstioOperator"
    [provider] = overlay["spec"]["meshConfig"]["extensionProviders"]
    [telemetry_provider] = {
        t["spec"]["tracing"][0]["providers"][0]["name"] for t in telemetries(rendered["istio", render.UMBRELLA])
    }
    assert provider["name"] == telemetry_provider
    host, port = provider["opentelemetry"]["service"], provider["opentelemetry"]["port"]
    service = jaeger("Service")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert port in {p["port"] for p in service["spec"]["ports"] if p.get("appProtocol") == "grpc"}
    for name in NAMES:
        docs = rendered["istio", name]
        assert collector(docs, name) == (host, port)
        assert peers_by_port(find(docs, "NetworkPolicy", name)["spec"]["egress"], "to")[port]
    # Istio as before (minimal profile, CNI), with the provider added.
    assert {"install", "profile=minimal", "components.cni.enabled=true", "-f"} <= set(args)


EDGE = next(name for name in NAMES if is_edge(name))


@pytest.mark.parametrize("ratio", [0.25, 0.1, 0.05, 0.001, 0])
def test_the_edges_sidecar_decides_for_the_trace_at_the_services_ratio_the_others_follow(
    helm_dir: Path, ratio: float
) -> None:
    """Envoy records a sampled parent only when its own draw agrees, and each draws afresh: sidecars all at
    the ratio would record ratio² of the traces past the second hop. Where calls enter, the ratio; inside,
    100 %, which keeps what the trace they are in decided."""
    docs = objects_of(helm_dir, render.UMBRELLA, {"global": {"mesh": "istio", "otel": {"samplerRatio": ratio}}})
    for name in NAMES:
        [tracing] = find(docs, "Telemetry", name)["spec"]["tracing"]
        services = float(find(docs, "ConfigMap", name)["data"]["OTEL_TRACES_SAMPLER_RATIO"])
        expected = round(services * 100, 2) if name == EDGE else 100
        assert tracing["randomSamplingPercentage"] == expected, name
        assert services == ratio


@pytest.mark.parametrize("name", NAMES)
def test_span_exports_and_scrapes_pass_the_sidecar_by(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    """Parentless requests a sidecar at 100 % would make a trace of each: the service's own OTLP exports to the
    collector, Prometheus' scrapes of its metrics (and of the edge's Envoy's). Neither party is in the mesh."""
    docs = rendered["istio", name]
    annotations = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    _, port = collector(docs, name)
    # Beside the ports of the peers that speak first (test_mesh_policy.py), in the same annotation.
    assert port in map(int, annotations["traffic.sidecar.istio.io/excludeOutboundPorts"].split(","))
    metrics = {
        p["containerPort"]
        for c in find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
        if "metrics" in p["name"]
    }
    assert set(map(int, annotations["traffic.sidecar.istio.io/excludeInboundPorts"].split(","))) == metrics
    assert len(metrics) == (2 if is_edge(name) else 1)
    for other in ("default", "linkerd"):
        annotations = find(rendered[other, name], "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert not [key for key in annotations if key.startswith("traffic.sidecar.istio.io/")], other


def test_without_the_sidecars_spans_nothing_passes_them_by(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, "catalog", {"global": {"mesh": "istio", "otel": {"endpoint": ""}}})
    annotations = find(docs, "Deployment", "catalog")["spec"]["template"]["metadata"]["annotations"]
    assert not [key for key in annotations if key.startswith("traffic.sidecar.istio.io/")]


def test_another_collector_is_the_one_the_provider_points_at(helm_dir: Path) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    otel = {"endpoint": "http://collector.observability.svc.cluster.local:4319", "port": 4319, "peers": peers}
    overlay = render.istio_tracing(helm_dir, {"global": {"mesh": "istio", "otel": otel}})
    [provider] = overlay["spec"]["meshConfig"]["extensionProviders"]
    assert provider["opentelemetry"] == {"service": "collector.observability.svc.cluster.local", "port": 4319}


def test_a_collector_istio_cannot_find_by_its_short_name_is_refused(helm_dir: Path) -> None:
    otel = {"endpoint": "http://otel:4317", "peers": [{"podSelector": {}}]}
    with pytest.raises(ValueError, match="Istio needs the collector's full name"):
        render.istio_tracing(helm_dir, {"global": {"mesh": "istio", "otel": otel}})


def test_without_an_endpoint_the_sidecars_report_nothing_either(helm_dir: Path) -> None:
    values = {"global": {"mesh": "istio", "otel": {"endpoint": ""}}}
    assert not telemetries(objects_of(helm_dir, render.UMBRELLA, values))
    assert render.istio_tracing(helm_dir, values)["spec"] == {}, "mesh-istio.sh would add no provider"


@pytest.mark.parametrize("value_set", [s for s in render.VALUE_SETS if s != "istio"])
def test_no_telemetry_without_istio(rendered: dict[tuple[str, str], Docs], value_set: str) -> None:
    for chart in render.all_charts():
        assert not telemetries(rendered[value_set, chart]), (value_set, chart)


def test_the_platform_team_that_keeps_the_mesh_policy_keeps_the_telemetry_too(helm_dir: Path) -> None:
    values = {"global": {"mesh": "istio", "meshPolicy": {"enabled": False}}}
    assert not telemetries(objects_of(helm_dir, render.UMBRELLA, values))


def test_the_telemetry_validates_against_istios_crd_schema(rendered: dict[tuple[str, str], Docs]) -> None:
    objects = telemetries(rendered["istio", render.UMBRELLA])
    assert len(objects) == len(NAMES)
    assert validate_custom_resources(objects) == []
    misspelled = json.loads(json.dumps(objects[0]))
    misspelled["spec"]["tracing"][0]["randomSamplingPercent"] = misspelled["spec"]["tracing"][0].pop(
        "randomSamplingPercentage"
    )
    too_many = json.loads(json.dumps(objects[0]))
    too_many["spec"]["tracing"][0]["randomSamplingPercentage"] = "all"
    assert len(validate_custom_resources([misspelled, too_many])) == 2


# --- Linkerd --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_linkerd_proxies_are_not_pointed_at_a_collector_outside_the_mesh(
    rendered: dict[tuple[str, str], Docs], name: str
) -> None:
    """The trace-collector annotations (the linkerd-jaeger extension's) would have every proxy open mutual TLS
    to the dev Jaeger, which answers plaintext: Linkerd exports only to a meshed collector."""
    template = find(rendered["linkerd", name], "Deployment", name)["spec"]["template"]["metadata"]
    assert not [key for key in template["annotations"] if "trace-collector" in key]


def test_the_steps_for_linkerds_spans_name_the_services_collector(rendered: dict[tuple[str, str], Docs]) -> None:
    """docs/mesh.md, "Traces through the mesh": the collector endpoint and mesh identity Linkerd is given are
    the services' collector and the dev Jaeger's ServiceAccount; the services keep exporting past their proxy
    on the port the NetworkPolicy opens."""
    host, port = collector(rendered["linkerd", "catalog"], "catalog")
    pod = jaeger("Deployment")["spec"]["template"]["spec"]
    settings = dict(re.findall(r"--set (proxy\.tracing\.[\w.]+)=(\S+)", MESH_DOC))
    assert settings == {
        "proxy.tracing.enabled": "true",
        "proxy.tracing.collector.endpoint": f"{host}:{port}",
        "proxy.tracing.collector.meshIdentity.serviceAccountName": pod["serviceAccountName"],
        "proxy.tracing.collector.meshIdentity.namespace": jaeger("Deployment")["metadata"]["namespace"],
    }
    assert f'config.linkerd.io/skip-outbound-ports: "{port}"' in MESH_DOC
