"""The meshes' own spans on Kubernetes. Under Istio each service's Telemetry has its sidecars report their spans
through the OpenTelemetry provider that `make mesh-istio` installs, named as the Telemetry names it and pointed
at the collector the services export to (global.otel.endpoint), recording the services' share of new traces
(samplerRatio); none without an endpoint or without Istio. Behind an ingress Gateway, Istio's ingress proxy gets a
Telemetry of its own in the Gateway's namespace and samples for the trace, and the edge's sidecar follows it. Linkerd's
proxies export only to a collector inside
the mesh, which the dev Jaeger is not: the chart sets nothing for them, and docs/mesh.md's steps for meshing
the collector name the collector the services use."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
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


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://otel:4317",
        # Dotted, yet not a Service's full name: the render's dot check let these through to an Istio that
        # looks the provider's service up in its registry by the full name, and finds none.
        "http://jaeger.shopmesh-infra:4317",
        "http://jaeger.shopmesh-infra.svc:4317",
        "jaeger.shopmesh-infra.svc.cluster:4317",
        "http://collector.example.com:4317",
    ],
)
def test_a_collector_istio_cannot_find_by_its_name_is_refused_by_the_chart(helm_dir: Path, endpoint: str) -> None:
    otel = {"endpoint": endpoint, "peers": [{"podSelector": {}}]}
    values = {"global": {"mesh": "istio", "otel": otel}}
    with pytest.raises(Exception, match=r"Istio needs the collector's full name, <service>\.<namespace>\.svc"):
        objects_of(helm_dir, render.UMBRELLA, values)
    with pytest.raises(Exception, match="Istio needs the collector's full name"):
        render.istio_tracing(helm_dir, values)


def test_without_an_endpoint_the_sidecars_report_nothing_either(helm_dir: Path) -> None:
    values = {"global": {"mesh": "istio", "otel": {"endpoint": ""}}}
    assert not telemetries(objects_of(helm_dir, render.UMBRELLA, values))
    assert "extensionProviders" not in render.istio_tracing(helm_dir, values)["spec"]["meshConfig"], "no provider"


@pytest.mark.parametrize("value_set", [s for s in render.VALUE_SETS if render.mesh_of(s) != "istio"])
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


# --- Istio's ingress proxy ----------------------------------------------------------------------------------

INGRESS_NS = "shopmesh-ingress"
EXAMPLE = ROOT / "k8s" / "ingress"


def ingress(
    http: list[dict[str, Any]], grpc: list[dict[str, Any]], traces: bool | None = None, **extra: Any
) -> dict[str, Any]:
    """The umbrella's values: Istio (unless `extra` says otherwise), the edge's routes attached to the `http` and
    `grpc` parentRefs, gateway.ingress.traces when given."""
    routes: dict[str, Any] = {kind: {"parentRefs": refs} for kind, refs in (("http", http), ("grpc", grpc)) if refs}
    if traces is not None:
        routes["traces"] = traces
    return {"global": {"mesh": "istio", **extra}, EDGE: {"ingress": routes}}


def ingress_telemetries(docs: Docs) -> Docs:
    """The Telemetry objects that configure a Gateway's proxy, not a service's sidecars."""
    return [t for t in telemetries(docs) if "targetRefs" in t["spec"]]


def sampling(docs: Docs, name: str) -> float:
    [tracing] = find(docs, "Telemetry", name)["spec"]["tracing"]
    percentage: float = tracing["randomSamplingPercentage"]
    return percentage


SHOP_HTTP = {"name": "shop", "namespace": INGRESS_NS, "sectionName": "http"}
SHOP_GRPC = {"name": "shop", "namespace": INGRESS_NS, "sectionName": "grpc"}


@pytest.mark.parametrize("ratio", [0.25, 0.1, 0.001, 0])
def test_behind_a_gateway_its_proxy_decides_for_the_trace_and_the_edges_sidecar_follows(
    helm_dir: Path, ratio: float
) -> None:
    """One draw per trace: the ingress proxy, the first Envoy a call meets, at the ratio; the edge's sidecar then
    at 100 %, like every other sidecar, or it would draw again and keep ratio² of the traces. Both routes
    attach to one Gateway, which gets one Telemetry."""
    docs = objects_of(helm_dir, render.UMBRELLA, ingress([SHOP_HTTP], [SHOP_GRPC], otel={"samplerRatio": ratio}))
    [telemetry] = ingress_telemetries(docs)
    assert telemetry["metadata"]["namespace"] == INGRESS_NS, "a Telemetry applies in its own namespace only"
    # Istio finds the Gateway's pods by their gateway.networking.k8s.io/gateway-name label; a selector of it
    # is ignored once ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY is off, and beside targetRefs never read.
    assert telemetry["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "shop"}
    ]
    assert "selector" not in telemetry["spec"]
    [sidecar_tracing] = find(docs, "Telemetry", EDGE)["spec"]["tracing"]
    services = float(find(docs, "ConfigMap", EDGE)["data"]["OTEL_TRACES_SAMPLER_RATIO"])
    assert services == ratio
    assert telemetry["spec"]["tracing"] == [
        {"providers": sidecar_tracing["providers"], "randomSamplingPercentage": round(services * 100, 2)}
    ]
    for name in NAMES:
        assert sampling(docs, name) == 100, name
    # mesh-istio.sh still finds one provider to install.
    [provider] = render.istio_tracing(helm_dir, ingress([SHOP_HTTP], [SHOP_GRPC]))["spec"]["meshConfig"][
        "extensionProviders"
    ]
    assert [provider["name"]] == [p["name"] for p in telemetry["spec"]["tracing"][0]["providers"]]


def test_each_gateway_gets_one_in_its_namespace_the_release_s_when_the_parent_ref_names_none(helm_dir: Path) -> None:
    """Gateway API reads a parentRef without a namespace as the route's own; a parentRef to something that is not a
    Gateway (a Service) has no ingress proxy to configure."""
    http = [SHOP_HTTP, {"name": "internal", "sectionName": "http"}]
    grpc = [SHOP_GRPC, {"name": "internal"}, {"group": "", "kind": "Service", "name": "mirror"}]
    docs = objects_of(helm_dir, render.UMBRELLA, ingress(http, grpc))
    found = {(t["metadata"]["namespace"], t["metadata"]["name"]): t for t in ingress_telemetries(docs)}
    assert set(found) == {(INGRESS_NS, "shop-traces"), (render.NAMESPACE, "internal-traces")}
    assert found[render.NAMESPACE, "internal-traces"]["spec"]["targetRefs"][0]["name"] == "internal"
    assert sampling(docs, EDGE) == 100


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(ingress([], [], otel={"samplerRatio": 0.1}), id="no-ingress"),
        pytest.param(
            ingress([{"group": "", "kind": "Service", "name": "mirror"}], [], otel={"samplerRatio": 0.1}),
            id="no-gateway-among-the-parents",
        ),
        pytest.param(ingress([SHOP_HTTP], [SHOP_GRPC], traces=False, otel={"samplerRatio": 0.1}), id="switched-off"),
    ],
)
def test_without_the_ingress_proxys_spans_the_edges_sidecar_samples_as_before(
    helm_dir: Path, values: dict[str, Any]
) -> None:
    docs = objects_of(helm_dir, render.UMBRELLA, values)
    assert ingress_telemetries(docs) == []
    assert sampling(docs, EDGE) == 10
    assert all(sampling(docs, name) == 100 for name in NAMES if name != EDGE)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"otel": {"endpoint": ""}}, id="no-collector"),
        pytest.param({"meshPolicy": {"enabled": False}}, id="platform-keeps-the-mesh-objects"),
        pytest.param({"mesh": "linkerd"}, id="linkerd"),
        pytest.param({"mesh": ""}, id="no-mesh"),
    ],
)
def test_without_the_sidecars_spans_the_ingress_proxy_gets_no_telemetry_either(
    helm_dir: Path, extra: dict[str, Any]
) -> None:
    docs = objects_of(helm_dir, render.UMBRELLA, ingress([SHOP_HTTP], [SHOP_GRPC], **extra))
    assert telemetries(docs) == []
    assert {d["metadata"]["namespace"] for d in docs} == {render.NAMESPACE}, "nothing beside the Gateway"


def test_the_example_gateways_proxy_reports_to_the_dev_jaeger_which_admits_it(helm_dir: Path) -> None:
    """k8s/ingress with the istio value set, as docs/kubernetes.md has a user deploy it: the Telemetry beside the
    example Gateway targets it, and the dev Jaeger's NetworkPolicy admits that Gateway's proxy (the pods Istio
    labels with its name, in its namespace) on the port the provider exports to."""
    _, gateway = yaml.safe_load_all((EXAMPLE / "gateway.yaml").read_text())
    values = yaml.safe_load((EXAMPLE / "values.yaml").read_text()) | {"global": {"mesh": "istio"}}
    docs = objects_of(helm_dir, render.UMBRELLA, values)
    [telemetry] = ingress_telemetries(docs)
    assert gateway["spec"]["gatewayClassName"] == "istio"
    assert telemetry["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    [target] = telemetry["spec"]["targetRefs"]
    assert (target["kind"], target["name"]) == (gateway["kind"], gateway["metadata"]["name"])
    [provider] = render.istio_tracing(helm_dir, values)["spec"]["meshConfig"]["extensionProviders"]
    infra = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "networkpolicy.yaml").read_text()) if d]
    [policy] = [d for d in infra if d["metadata"]["name"] == "jaeger"]
    proxy = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gateway["metadata"]["namespace"]}},
        "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": gateway["metadata"]["name"]}},
    }
    assert proxy in peers_by_port(policy["spec"]["ingress"], "from")[provider["opentelemetry"]["port"]]


def test_the_ingress_telemetry_validates_against_istios_crd_schema(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, render.UMBRELLA, ingress([SHOP_HTTP], [{"name": "internal"}]))
    objects = ingress_telemetries(docs)
    assert len(objects) == 2
    assert validate_custom_resources(objects) == []
    kindless = json.loads(json.dumps(objects[0]))
    del kindless["spec"]["targetRefs"][0]["kind"]
    # A route's parentRef names a listener; Istio's policy target takes none.
    listener = json.loads(json.dumps(objects[0]))
    listener["spec"]["targetRefs"][0]["sectionName"] = "http"
    assert len(validate_custom_resources([kindless, listener])) == 2


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


def istio_tracing_with(values: Path) -> subprocess.CompletedProcess[str]:
    """`k8s/render.py istio-tracing -f VALUES`, as docs/mesh.md has an operator run it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "render.py"), "istio-tracing", "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_mesh_istio_s_provider_follows_the_values_a_staging_release_is_deployed_with(tmp_path: Path) -> None:
    """docs/mesh.md: "with values of your own, give them to `k8s/render.py istio-tracing` yourself". A release
    deployed with `-f my-values.yaml` naming another collector must be able to get the provider for it from
    the command mesh-istio.sh runs, as Helm takes values files (-f); otherwise the sidecars keep exporting to
    the dev Jaeger, which the staging cluster does not have and the NetworkPolicy does not let them reach."""
    collector_host = "otel-collector.observability.svc.cluster.local"
    namespace = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    own = tmp_path / "my-values.yaml"
    own.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "otel": {
                        "endpoint": f"http://{collector_host}:4317",
                        "port": 4317,
                        "peers": [namespace],
                    }
                }
            }
        )
    )
    result = istio_tracing_with(own)
    assert result.returncode == 0, f"k8s/render.py istio-tracing takes no values of one's own: {result.stderr.strip()}"
    [provider] = json.loads(result.stdout)["spec"]["meshConfig"]["extensionProviders"]
    assert provider["opentelemetry"] == {"service": collector_host, "port": 4317}


def test_the_documented_istio_tracing_command_gives_the_provider_of_the_values_files_it_names(
    tmp_path: Path, installed: tuple[list[str], dict[str, Any]]
) -> None:
    """docs/mesh.md, "Traces through the mesh": the commands for a release with values of its own. The render,
    run as written (my-values.yaml naming another collector), merges the files over the istio value set as Helm
    does (staging's database peers stay, or the render would fail) and points the provider at that collector;
    the `istioctl install` beside it is the one mesh-istio.sh runs, so the doc's Istio is make mesh-istio's."""
    [block] = [b for b in re.findall(r"(?s)```bash\n(.*?)```", MESH_DOC) if "render.py istio-tracing" in b]
    render_line, istioctl_line = block.strip().splitlines()
    collector_host = "otel-collector.observability.svc.cluster.local"
    namespace = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    otel = {"endpoint": f"http://{collector_host}:4318", "port": 4318, "peers": [namespace]}
    (tmp_path / "my-values.yaml").write_text(yaml.safe_dump({"global": {"otel": otel}}))
    command, redirect = render_line.split(" >")
    argv = command.split()
    assert argv[:2] == [".venv/bin/python", "k8s/render.py"], render_line
    # The repository's files from the checkout, the user's own from here.
    options = [
        (str(ROOT / a) if a.startswith("helm/") else str(tmp_path / a)) if flag == "-f" else a
        for flag, a in itertools.pairwise(argv[1:])
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / argv[1]), *options], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    [provider] = json.loads(result.stdout)["spec"]["meshConfig"]["extensionProviders"]
    assert provider["opentelemetry"] == {"service": collector_host, "port": 4318}
    args = installed[0]
    context = args.index("--context")
    script_args = [*args[:context], *args[context + 2 : -1], redirect]
    assert istioctl_line.split()[1:] == script_args, "the doc's istioctl install is not mesh-istio.sh's"


@pytest.mark.parametrize(
    ("values_text", "named"),
    [
        # docs/mesh.md: "Istio wants the collector's full name ...: with `global.mesh: istio` the chart refuses
        # any other"; the render passes the chart's refusal on.
        (
            "global:\n  otel:\n    endpoint: http://otel:4317\n    peers:\n      - podSelector: {}\n",
            "Istio needs the collector's full name",
        ),
        # A values file the chart itself refuses (its `fail`): the chart's message, as `helm template` prints it.
        ("global:\n  otel:\n    endpoint: http://otel.observability.svc.cluster.local:4317\n", "global.otel"),
        # A values file that is no YAML.
        ("global: [unclosed\n", "yaml"),
    ],
    ids=["short-collector-name", "chart-refuses-the-values", "not-yaml"],
)
def test_istio_tracing_refuses_a_values_file_with_one_line_not_a_traceback(
    tmp_path: Path, values_text: str, named: str
) -> None:
    """`k8s/render.py istio-tracing -f my-values.yaml` (docs/mesh.md; mesh-istio.sh runs it too) given values of
    the operator's own that cannot be deployed refuses them: exit status 2 or 1 and the reason on one line of
    stderr, as for a values file that does not exist (`no such values file`), not a Python traceback."""
    own = tmp_path / "my-values.yaml"
    own.write_text(values_text)
    result = istio_tracing_with(own)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert named.lower() in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
