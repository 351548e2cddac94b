"""With values-monitoring.yaml every service gets a ServiceMonitor on its metrics port and the alerts its role
calls for, and the umbrella ships the Grafana dashboard; the objects are valid Prometheus Operator
resources, and every alert's and panel's PromQL parses, selects the right series and names only metrics
the services really export, and only labels those metrics' series carry; Prometheus' promtool accepts every
rule and runs the alerts' unit tests over what the real metric objects export. Without it, none of them."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from shopmesh_chassis.breaker import CircuitBreaker
from shopmesh_chassis.consumer import EventConsumer
from shopmesh_chassis.db import Database
from shopmesh_chassis.metrics import (
    BreakerCollector,
    EventMetrics,
    OutboxMetrics,
    ServerMetrics,
    add_runtime_collectors,
)
from shopmesh_gateway.metrics import GatewayMetrics
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import Channel, Notification, State
from shopmesh_notifications.metrics import NotificationMetrics
from shopmesh_orders.domain.model import Address, CancelCode, Order, OrderLine, OrderState, SagaStep
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_platform.topology import SERVICES, is_edge
from shopmesh_users.metrics import EstimateFailure, UsersMetrics

from .k8skit import (
    ROOT,
    Docs,
    dashboards,
    envoy_metric_labels,
    find,
    objects_of,
    render,
    tool,
    validate_custom_resources,
)
from .test_mesh_policy import linkerd_problems

MONITORING = "monitoring"
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule", "PodMonitor"}
# The mesh proxy's metrics: the injected container's port (by name) and path, and its number. The names
# are the ones Istio's and Linkerd's injectors give those ports.
PROXY_METRICS = {
    "istio": ("http-envoy-prom", "/stats/prometheus", 15090),
    "linkerd": ("linkerd-admin", "/metrics", 4191),
}
SCRAPERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
# Alerts a service chart adds of its own (helm/<service>/values.yaml `alerts:`).
OWN_ALERTS = {
    "notifications": {"ShopmeshEmailsFailed", "ShopmeshEmailsNotGoingOut"},
    "orders": {
        "ShopmeshCheckoutsCancelledByOutages",
        "ShopmeshCheckoutsWaiting",
        "ShopmeshOrderRecoveryFailing",
        "ShopmeshLateCapturesRefunded",
        "ShopmeshPaymentRequestsRejected",
    },
    "users": {"ShopmeshPasswordStrengthFailing", "ShopmeshPasswordStrengthErrors"},
}
# The burn-rate alerts on the SLOs of the public API (helm/gateway/values.yaml `slo:`; tests/k8s/test_slo.py).
SLO_ALERTS = {"ShopmeshErrorBudgetBurnFast", "ShopmeshErrorBudgetBurnSlow"}
SLO_SERVICES = {"gateway"}
# Series Prometheus itself adds for every target.
SYNTHETIC = {"up"}
# Labels a ServiceMonitor scrape puts on every series of a target (the Service, its endpoint and pod, and
# the pod's shopmesh.io/track), beside the ones the process exports.
TARGET_LABELS = frozenset(
    {"job", "namespace", "instance", "endpoint", "service", "pod", "container", "shopmesh_io_track"}
)
# A panel's legend ({{label}}) and an alert's annotations ({{ $labels.label }}) name labels of the result.
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.(\w+)")
EQUAL = promql_parser.MatchOp.Equal
RE = promql_parser.MatchOp.Re


def expected_alerts(name: str) -> set[str]:
    service = SERVICES[name]
    alerts = {
        "ShopmeshServiceDown",
        "ShopmeshServerErrors",
        "ShopmeshSlowCalls",
        "ShopmeshSpansNotExported",
        "ShopmeshFileDescriptorsNearLimit",
    }
    if service.publishes:
        alerts |= {
            "ShopmeshOutboxStuck",
            "ShopmeshOutboxRelayStalled",
            "ShopmeshOutboxEventsSetAside",
            "ShopmeshOutboxStreamFull",
        }
    if service.consumes:
        alerts |= {
            "ShopmeshDeadLetters",
            "ShopmeshEventsDropped",
            "ShopmeshEventsLost",
            "ShopmeshConsumerBacklog",
            "ShopmeshConsumerCutOff",
        }
    if service.calls:
        alerts.add("ShopmeshCircuitOpen")
    if is_edge(name):
        alerts.add("ShopmeshHttpApiErrors")
    if name in SLO_SERVICES:
        alerts |= SLO_ALERTS
    return alerts | OWN_ALERTS.get(name, set())


def exported_metric_labels() -> dict[str, frozenset[str]]:
    """What the scraped endpoints can show, each series name with its label names: the services', from the
    real metric objects (chassis and service-specific), and the edge's Envoy's, scraped from a real Envoy
    running its rendered configuration."""
    registry = RecordingRegistry()
    metrics = ServerMetrics(registry)
    add_runtime_collectors(registry)  # as on the registry a service's ServerMetrics makes itself
    metrics.outbox  # noqa: B018 - made on first use, as services that run an outbox relay do
    metrics.events  # noqa: B018 - made on first use, as services that consume do
    metrics.watch_breakers("dependency", {"/shopmesh.x.v1.XService/Get": CircuitBreaker()})
    GatewayMetrics(registry)
    OrderMetrics(registry)
    NotificationMetrics(registry)
    UsersMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    found: dict[str, frozenset[str]] = {}
    for collector in registry.collectors:
        # A labelled metric nothing has used yet has no series to read its labels from: its declared ones.
        declared = set(getattr(collector, "_labelnames", ()))
        family: Metric
        for family in collector.collect():
            labels = declared | {name for sample in family.samples for name in sample.labels}
            for suffix in suffixes.get(family.type, ("",)):
                found[family.name + suffix] = frozenset(labels | ({"le"} if suffix == "_bucket" else set()))
    return found | envoy_metric_labels()


def exported_metric_names() -> set[str]:
    return set(exported_metric_labels())


class RecordingRegistry(CollectorRegistry):
    """A registry that keeps its collectors, to read each metric's declared label names."""

    def __init__(self) -> None:
        super().__init__()
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)


def label_problems(expr: str, exported: dict[str, frozenset[str]], result_labels: set[str]) -> list[str]:
    """Where `expr` names a label its series do not carry: a matcher on a label the metric has not (it
    selects nothing, or everything), a `by` on one its operand lacks (all series summed into one), and
    `result_labels` (a legend's, an annotation's) the result lacks (rendered empty). Follows the labels
    each part of the expression keeps, as Prometheus does."""
    result, problems = labels_kept(expr, exported)
    problems.extend(f"the result has no label {label}" for label in sorted(result_labels - result))
    return problems


def labels_kept(expr: str, exported: dict[str, frozenset[str]]) -> tuple[frozenset[str], list[str]]:
    """The labels the result of `expr` keeps, and where it names a label its series do not carry."""
    problems: list[str] = []

    def labels_of(node: Any) -> frozenset[str]:
        if isinstance(node, promql_parser.VectorSelector):
            known = exported.get(node.name or "", frozenset()) | TARGET_LABELS
            problems.extend(f"{node.name} has no label {m.name}" for m in node.matchers.matchers if m.name not in known)
            return known
        if isinstance(node, promql_parser.MatrixSelector):
            return labels_of(node.vector_selector)
        if isinstance(node, promql_parser.AggregateExpr):
            inner = labels_of(node.expr)
            if node.modifier is None:
                return frozenset()
            named = set(node.modifier.labels)
            if node.modifier.type == promql_parser.AggModifierType.Without:
                return inner - named
            problems.extend(f"{node.op} by ({label}) over series without it: {node}" for label in named - inner)
            return frozenset(named & inner)
        if isinstance(node, promql_parser.Call):
            operands = [labels_of(arg) for arg in node.args if isinstance(arg, promql_parser.Expr)]
            if node.func.name == "absent":
                return frozenset()
            kept = frozenset().union(*operands)
            return kept - {"le"} if node.func.name == "histogram_quantile" else kept
        if isinstance(node, promql_parser.BinaryExpr):
            left, right = labels_of(node.lhs), labels_of(node.rhs)
            return left or right
        if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            return labels_of(node.expr)
        return frozenset()

    return labels_of(promql_parser.parse(expr)), problems


def alerts_of(docs: Docs, name: str) -> list[dict[str, Any]]:
    rule = find(docs, "PrometheusRule", name)
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def records_of(docs: Docs, name: str) -> list[dict[str, Any]]:
    """The service's recording rules (the gateway's SLOs: their error ratios and objectives)."""
    rule = find(docs, "PrometheusRule", name)
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "record" in r]


def recorded_metric_labels(rendered: dict[tuple[str, str], Docs]) -> dict[str, frozenset[str]]:
    """The series the services' recording rules make, each with its labels (what its expression keeps, and
    the rule's own): alerts and panels read them as they read exported series."""
    exported = exported_metric_labels()
    found: dict[str, frozenset[str]] = {}
    for name in SERVICES:
        for record in records_of(rendered[MONITORING, name], name):
            kept, _problems = labels_kept(record["expr"], exported)
            found[record["record"]] = found.get(record["record"], frozenset()) | kept | set(record.get("labels", {}))
    return found


def matchers_of(selector: promql_parser.VectorSelector) -> set[tuple[str, str, str]]:
    return {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        for attribute in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attribute, None)
            if isinstance(child, promql_parser.Expr):
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(promql_parser.parse(expr))
    return found


@pytest.mark.parametrize("name", list(SERVICES))
def test_each_service_is_scraped_on_its_metrics_port(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    docs = rendered[MONITORING, name]
    monitor = find(docs, "ServiceMonitor", name)
    service = find(docs, "Service", name)
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor selects another Service"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [render.NAMESPACE]
    endpoint, *edge = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # The edge's http-api container too (tests/k8s/test_http_api.py).
    assert [e["port"] for e in edge] == (["http-metrics"] if is_edge(name) else [])
    assert {e["port"] for e in edge} <= {port["name"] for port in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("name", list(SERVICES))
def test_each_service_gets_the_alerts_its_role_calls_for(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    alerts = alerts_of(rendered[MONITORING, name], name)
    assert {a["alert"] for a in alerts} == expected_alerts(name)
    for alert in alerts:
        assert alert["labels"] == {"severity": alert["labels"]["severity"], "service": name}
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["runbook_url"].endswith(f"docs/operations.md#{alert['alert'].lower()}")


def test_service_down_looks_at_the_services_own_port_only(rendered: dict[tuple[str, str], Docs]) -> None:
    """The gateway's pods also expose the http-api container's Envoy under the same job: up while the
    gateway itself is down, it must not keep ShopmeshServiceDown quiet."""
    for name in SERVICES:
        [down] = [a for a in alerts_of(rendered[MONITORING, name], name) if a["alert"] == "ShopmeshServiceDown"]
        [up] = selectors(down["expr"])
        assert ("endpoint", str(EQUAL), "metrics") in matchers_of(up), down["expr"]


def test_every_alert_has_its_section_in_the_runbook(rendered: dict[tuple[str, str], Docs]) -> None:
    runbook = (ROOT / "docs" / "operations.md").read_text()
    names = {a["alert"] for name in SERVICES for a in alerts_of(rendered[MONITORING, name], name)}
    missing = [alert for alert in sorted(names) if f"\n### {alert}\n" not in runbook]
    assert not missing, f"docs/operations.md has no section for {missing}"


def test_every_alert_selects_its_own_services_series_by_exported_names(rendered: dict[tuple[str, str], Docs]) -> None:
    """Exported by a service, or recorded by its own rules (from its own series, checked as the alerts are)."""
    exported = exported_metric_names() | SYNTHETIC
    problems = []
    for name in SERVICES:
        docs = rendered[MONITORING, name]
        recorded = {record["record"] for record in records_of(docs, name)}
        for alert in alerts_of(docs, name) + records_of(docs, name):
            rule = alert.get("alert") or alert["record"]
            # An SLO's objective is a constant: its series has the service's labels from the rule.
            if alert.get("labels", {}).keys() >= {"job", "namespace"} and not selectors(alert["expr"]):
                assert (alert["labels"]["job"], alert["labels"]["namespace"]) == (name, render.NAMESPACE)
                continue
            try:
                found = selectors(alert["expr"])
            except ValueError as exc:
                problems.append(f"{name} {rule}: not PromQL: {exc}")
                continue
            assert found, alert["expr"]
            for selector in found:
                if selector.name not in exported | (recorded if "alert" in alert else set()):
                    problems.append(f"{name} {rule}: no service exports {selector.name}")
                wanted = {("job", str(EQUAL), name), ("namespace", str(EQUAL), render.NAMESPACE)}
                if not wanted <= matchers_of(selector):
                    problems.append(f"{name} {rule}: {selector.name} is not limited to {name}'s series")
    assert not problems, "\n".join(problems)


# The services' own metrics (Envoy's aside) that no alert or panel reads, and why. Any other must be read by one:
# a failure counter nothing reads is one an operator never learns of.
UNREAD = {
    "grpc_server_handling_seconds_sum": "latency is read from the buckets",
    "shopmesh_client_breaker_opened_total": "the breaker's state and failed probes are what alert and panel read",
    "process_virtual_memory_bytes": "the resident memory is what the pod's memory limit counts",
    "process_start_time_seconds": "restarts are Kubernetes' own count (kube_pod_container_status_restarts_total)",
    "python_gc_objects_collected_total": "the collector's runs by generation are what the panel reads",
    "shopmesh_python_gc_pause_seconds_count": "python_gc_collections_total counts the same runs, for its panel",
    "python_info": "the interpreter's version, in labels of a constant 1",
}


def test_every_metric_the_services_export_is_read_by_an_alert_or_a_panel(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    read = {s.name for query in dashboards.queries() for s in selectors(query.replace("$__rate_interval", "5m"))}
    for name in SERVICES:
        docs = rendered[MONITORING, name]
        read |= {s.name for rule in alerts_of(docs, name) + records_of(docs, name) for s in selectors(rule["expr"])}
    ours = {metric for metric in exported_metric_names() if not metric.startswith("envoy_")}
    assert ours - read == set(UNREAD), "read by no alert nor panel (or listed in UNREAD but read)"


def test_the_checks_see_a_misspelled_metric_and_a_missing_selector() -> None:
    [selector] = selectors('max(shopmesh_outbox_oldest_unpublished_age{job="orders"}) > 60')
    assert selector.name not in exported_metric_names()
    assert {m.name for m in selector.matchers.matchers} == {"job"}
    with pytest.raises(ValueError, match="parenthes"):
        promql_parser.parse("sum(rate(up[5m])")


def test_a_charts_own_alert_given_a_counter_fires_on_its_first_event_in_the_counted_form(helm_dir: Path) -> None:
    """An alert on a counter's first event takes the counter (`counted:`), and the library writes the form that
    sees a new pod's first event too (shopmesh-lib.counted), per the labels it is given or summed whole."""
    own = {"for": "0m", "severity": "warning", "summary": "s", "description": "d"}
    values = render.merged_values(
        render.values_for(MONITORING, helm_dir),
        {
            "alerts": [
                {
                    **own,
                    "alert": "Whole",
                    "counted": {"series": 'widgets_total{__selector__, kind="x"}', "window": "10m"},
                },
                {
                    **own,
                    "alert": "PerKind",
                    "counted": {"series": "widgets_total{__selector__}", "window": "5m", "by": "kind"},
                },
            ]
        },
    )
    docs = objects_of(helm_dir, "catalog", values)
    selector = f'job="catalog", namespace="{find(docs, "PrometheusRule", "catalog")["metadata"]["namespace"]}"'
    exprs = {a["alert"]: a["expr"] for a in alerts_of(docs, "catalog")}
    whole = f'widgets_total{{{selector}, kind="x"}}'
    per_kind = f"widgets_total{{{selector}}}"
    assert exprs["Whole"] == f"sum(increase({whole}[10m]) > 0 or ({whole} > 0 unless {whole} offset 10m)) > 0"
    assert exprs["PerKind"] == (
        f"sum by (kind) (increase({per_kind}[5m]) > 0 or ({per_kind} > 0 unless {per_kind} offset 5m)) > 0"
    )


def test_monitoring_objects_validate_against_the_prometheus_operator_schemas(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    objects = [d for name in SERVICES for d in rendered[MONITORING, name] if d["kind"] in MONITORING_KINDS]
    assert len(objects) == 2 * len(SERVICES), "no PodMonitor without a mesh"
    assert not validate_custom_resources(objects)
    broken = json.loads(json.dumps(objects[0]))
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validate_custom_resources([broken]), "the schema check accepted an invalid interval"


@pytest.mark.parametrize("value_set", [s for s in render.VALUE_SETS if s != MONITORING])
def test_without_monitoring_values_no_monitoring_object_is_rendered(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    # A cluster without the Prometheus Operator's CRDs would refuse the whole release.
    docs = [d for chart in render.all_charts() for d in rendered[value_set, chart]]
    assert not {d["kind"] for d in docs} & MONITORING_KINDS
    assert "shopmesh-dashboards" not in {d["metadata"]["name"] for d in docs}


def test_the_umbrella_ships_the_dashboard_as_generated(rendered: dict[tuple[str, str], Docs]) -> None:
    assert dashboards.OUTPUT.read_text() == dashboards.rendered(), "run `make dashboards`"
    config_map = find(rendered[MONITORING, render.UMBRELLA], "ConfigMap", "shopmesh-dashboards")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["shopmesh.json"])
    assert shipped == json.loads(dashboards.rendered())
    assert {v["name"] for v in shipped["templating"]["list"]} == {"datasource", "namespace", "service"}


def test_every_dashboard_query_names_exported_metrics_of_the_chosen_services(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    exported = exported_metric_names() | set(recorded_metric_labels(rendered))
    problems = []
    queries = dashboards.queries()
    for query in queries:
        # $__rate_interval is Grafana's, replaced before Prometheus sees the query.
        for selector in selectors(query.replace("$__rate_interval", "5m")):
            if selector.name not in exported:
                problems.append(f"no service exports {selector.name}: {query}")
            if not {("namespace", str(EQUAL), "$namespace"), ("job", str(RE), "$service")} <= matchers_of(selector):
                problems.append(f"{selector.name} ignores the namespace or service chosen: {query}")
    assert len(queries) >= 10
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", SERVICES)
def test_the_server_error_panels_divide_as_the_alert_does(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    """The panels divided by the calls that ended alone, while ShopmeshServerErrors counts the streams held too:
    a shed Watch among many held read 100 % on the dashboard and a few percent in the alert."""
    [alert] = [a for a in alerts_of(rendered[MONITORING, name], name) if a["alert"] == "ShopmeshServerErrors"]
    ratio, _, _ = alert["expr"].rpartition(" > ")
    selector = re.search(r"grpc_server_handled_total\{([^}]*), grpc_code=~", ratio)
    assert selector is not None, ratio
    assert ratio == dashboards.server_error_ratio("grpc_service, grpc_method", selector.group(1))
    queries = dashboards.queries()
    for by in ("job", "job, shopmesh_io_track"):
        assert dashboards.server_error_ratio(by) in queries


@pytest.fixture(scope="module")
def meshed_and_monitored(helm_dir: Path) -> dict[tuple[str, str], Docs]:
    """(mesh, chart) -> the objects of every service chart under each mesh, with monitoring on."""
    result = {}
    for mesh in PROXY_METRICS:
        values = render.values_for(mesh, helm_dir)
        values["global"]["monitoring"] = {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}
        for name in SERVICES:
            result[mesh, name] = objects_of(helm_dir, name, values)
    return result


@pytest.mark.parametrize("mesh", list(PROXY_METRICS))
def test_under_a_mesh_each_pods_proxy_is_scraped_too(
    meshed_and_monitored: dict[tuple[str, str], Docs], mesh: str
) -> None:
    port, path, number = PROXY_METRICS[mesh]
    monitors = []
    for name in SERVICES:
        docs = meshed_and_monitored[mesh, name]
        monitor = find(docs, "PodMonitor", f"{name}-proxy")
        monitors.append(monitor)
        assert monitor["spec"]["selector"] == find(docs, "Deployment", name)["spec"]["selector"]
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"]) == (port, path)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        # Only the scrapers reach the proxy's metrics port, as the service's own.
        rules = find(docs, "NetworkPolicy", name)["spec"]["ingress"]
        reaching = [rule for rule in rules if number in {p["port"] for p in rule.get("ports", [])}]
        assert [rule.get("from") for rule in reaching] == [SCRAPERS]
        if mesh == "linkerd":
            # Linkerd applies its default policy to its admin port too: the chart opens it for the scrapes.
            server = find(docs, "Server", f"{name}-linkerd-admin")
            assert (server["spec"]["port"], server["spec"]["proxyProtocol"]) == (port, "HTTP/1")
            policy = find(docs, "AuthorizationPolicy", f"{name}-linkerd-admin")["spec"]
            assert policy["targetRef"]["name"] == f"{name}-linkerd-admin"
            assert policy["requiredAuthenticationRefs"][0]["name"] == f"{name}-any-network"
            assert linkerd_problems([d for d in docs if d["apiVersion"].startswith("policy.linkerd.io/")]) == []
    assert not validate_custom_resources(monitors)


def test_promtool_accepts_every_services_rules(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """Prometheus' own check of what it will load: the PromQL as Prometheus parses it, each `for`, and each
    annotation's Go template (which nothing else here parses)."""
    files = [rule_file(tmp_path / f"{name}.yaml", rule_groups(rendered, name)) for name in SERVICES]
    result = promtool("check", "rules", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(SERVICES), result.stdout


def test_promtool_check_sees_a_broken_annotation_template(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    groups = rule_groups(rendered, "gateway")
    [alert] = [a for group in groups for a in group["rules"] if a.get("alert") == "ShopmeshCircuitOpen"]
    alert["annotations"]["description"] = "The breaker in front of {{ $labels.dependency }'s method is open"
    # The label check reads the annotation's $labels.dependency and finds nothing wrong.
    shown = set(ANNOTATION_LABEL.findall(json.dumps(alert["annotations"])))
    assert not label_problems(alert["expr"], exported_metric_labels(), shown)
    result = promtool("check", "rules", rule_file(tmp_path / "gateway.yaml", groups), cwd=tmp_path)
    assert result.returncode != 0, "promtool accepted an annotation template that does not parse"
    assert "template" in result.stdout + result.stderr


# Prometheus' side of an alert's `for:` (kube-prometheus-stack's defaults): the rule is evaluated every 30 s
# on the newest sample of each series, scraped every 15 s (values-monitoring.yaml).
SCRAPE_INTERVAL = 15
EVALUATION_INTERVAL = 30


def seconds_of(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def rule_groups(rendered: dict[tuple[str, str], Docs], name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = find(rendered[MONITORING, name], "PrometheusRule", name)["spec"]["groups"]
    return groups


def rule_file(path: Path, groups: list[dict[str, Any]]) -> str:
    """A rule file as Prometheus reads it: the PrometheusRule's spec, which the operator hands it as is."""
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path.name


# When an alert fires: evaluation second -> whether it is firing then (evaluations absent: not checked).
Expected = dict[int, bool]


def firing_between(start: float, end: float, firing: bool = True) -> Expected:
    """Every evaluation in [start, end)."""
    first = math.ceil(max(start, 0) / EVALUATION_INTERVAL) * EVALUATION_INTERVAL
    return dict.fromkeys(range(first, math.ceil(end), EVALUATION_INTERVAL), firing)


def silent_between(start: float, end: float) -> Expected:
    return firing_between(start, end, firing=False)


@dataclass
class Scenario:
    """A world on a fake clock, in whole seconds: `world(t)` moves it to second t (time() is that clock) and
    `scrape()` reads what its real metric objects export then, each sample with the target labels a scrape
    adds (its pod's among them); a series a scrape no longer finds (its pod gone) goes stale, as Prometheus
    marks it. `expected` is when the alert fires, with `labels` beside the rule's."""

    name: str
    world: Callable[[float], None]
    scrape: Callable[[], list[Sample]]
    until: int
    expected: Expected
    labels: dict[str, str] = field(default_factory=dict)


def input_series(scenario: Scenario, job: str, names: set[str]) -> list[dict[str, str]]:
    """The scenario's scrapes of the metrics `names`, every SCRAPE_INTERVAL, in promtool's series notation."""
    steps = len(range(0, scenario.until, SCRAPE_INTERVAL))
    values: dict[str, list[str]] = {}
    for second in range(scenario.until):
        scenario.world(float(second))
        if second % SCRAPE_INTERVAL:
            continue
        step, seen = second // SCRAPE_INTERVAL, set()
        for sample in scenario.scrape():
            if sample.name in names:
                labels = {"job": job, "namespace": render.NAMESPACE, **sample.labels}
                series = sample.name + "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"
                values.setdefault(series, ["_"] * steps)[step] = repr(sample.value)
                seen.add(series)
        for series in values.keys() - seen:
            values[series][step] = "stale" if step and values[series][step - 1] not in {"_", "stale"} else "_"
    return [{"series": series, "values": " ".join(found)} for series, found in values.items()]


def promtool_test_rules(
    groups: list[dict[str, Any]], tests: list[dict[str, Any]], evaluation_interval: int, tmp_path: Path
) -> tuple[int, list[str]]:
    """`promtool test rules` of the rule `groups` with `tests` (promtool's unit tests): its exit code and its
    report's lines."""
    rules = rule_file(tmp_path / "rules.yaml", groups)
    test = {"rule_files": [rules], "evaluation_interval": f"{evaluation_interval}s", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    # promtool pads its report with blank lines, and lists every evaluation that differs: the first few say it.
    return result.returncode, [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def promtool_test(alert: dict[str, Any], job: str, scenarios: list[Scenario], tmp_path: Path) -> tuple[int, list[str]]:
    """`promtool test rules` of `alert` alone over each scenario's series, expecting it firing or silent at
    each evaluation the scenario names."""
    # Without its annotations: promtool compares them exactly, and $value's humanized duration is not what
    # a scenario is about (`promtool check rules` checks their templates).
    rule = {key: alert[key] for key in ("alert", "expr", "for", "labels")}
    names = {selector.name or "" for selector in selectors(alert["expr"])}
    tests = []
    for scenario in scenarios:
        labels = {**alert["labels"], **scenario.labels}
        tests.append(
            {
                "name": scenario.name,
                "interval": f"{SCRAPE_INTERVAL}s",
                "input_series": input_series(scenario, job, names),
                "alert_rule_test": [
                    {
                        "alertname": alert["alert"],
                        "eval_time": f"{second}s",
                        "exp_alerts": [{"exp_labels": labels}] if firing else [],
                    }
                    for second, firing in sorted(scenario.expected.items())
                ],
            }
        )
    return promtool_test_rules([{"name": "under-test", "rules": [rule]}], tests, EVALUATION_INTERVAL, tmp_path)


def assert_promtool_passes(alert: dict[str, Any], job: str, scenarios: list[Scenario], tmp_path: Path) -> None:
    assert all(s.expected for s in scenarios), "a scenario that checks nothing"
    returncode, report = promtool_test(alert, job, scenarios, tmp_path)
    assert returncode == 0, f"{alert['alert']} ({alert['expr']}, for {alert['for']}):\n" + "\n".join(report[:60])


def alert_named(rendered: dict[tuple[str, str], Docs], service: str, name: str) -> dict[str, Any]:
    [alert] = [a for a in alerts_of(rendered[MONITORING, service], service) if a["alert"] == name]
    return alert


def scraped(registry: CollectorRegistry, pod: str) -> list[Sample]:
    """What a scrape of `registry` reads from the pod `pod`: its samples, each with the pod's label."""
    return [s._replace(labels={**s.labels, "pod": pod}) for f in registry.collect() for s in f.samples]


def latency_scenario(name: str, method: str, seconds: float, until: int, expected: Expected) -> Scenario:
    """The real server metrics of a service answering, every second, one product call in 50 ms and one call
    of `method` in `seconds`."""
    metrics = ServerMetrics(CollectorRegistry())
    product = metrics.for_method("/shopmesh.x.v1.XService/GetProduct")
    timed = metrics.for_method(f"/shopmesh.x.v1.XService/{method}")

    def world(_t: float) -> None:
        product.handling.observe(0.05)
        timed.handling.observe(seconds)

    labels = {"grpc_service": "shopmesh.x.v1.XService", "grpc_method": method}
    return Scenario(name, world, lambda: scraped(metrics.registry, "pod-0"), until, expected, labels)


@pytest.mark.parametrize("service", ["gateway", "users"])
def test_slow_calls_ignores_the_password_hashing_methods_but_not_the_others(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, service: str
) -> None:
    """Login and Register hash a password (~0.5 s of argon2 by design, queued): their p99 sits near 1 s when
    all is well, and ShopmeshSlowCalls fired on them for ever. It leaves out the latency SLO's
    `slo.latency.excludedMethods`, as the SLO does; any other method as slow still fires it."""
    alert = alert_named(rendered, service, "ShopmeshSlowCalls")
    hold, until, slow = seconds_of(alert["for"]), 20 * 60, 2.0
    scenarios = [
        latency_scenario(f"every {method} takes {slow} s", method, slow, until, silent_between(0, until))
        for method in ("Login", "Register")
    ]
    scenarios.append(
        latency_scenario(
            f"every GetOrder takes {slow} s",
            "GetOrder",
            slow,
            until,
            silent_between(0, hold) | firing_between(fires_by(0, hold), until),
        )
    )
    assert_promtool_passes(alert, service, scenarios, tmp_path)


def span_export_scenario(
    name: str, failing: Callable[[float], bool], until: int, expected: Expected, *, dropping: bool = False
) -> Scenario:
    """A service exporting a batch of 10 spans every 5 s, lost while `failing(t)`: the collector away (export
    failed) or, `dropping`, too slow for them (dropped by the full batch queue). Both counters are exported from
    the start, as the chassis does."""
    registry = CollectorRegistry()
    failed = Counter("shopmesh_spans_export_failed", "spans lost to failed exports", registry=registry)
    dropped = Counter("shopmesh_spans_dropped", "spans dropped, the queue full", registry=registry)
    lost = dropped if dropping else failed

    def world(t: float) -> None:
        if t % 5 == 0 and failing(t):
            lost.inc(10)

    return Scenario(name, world, lambda: scraped(registry, "pod-0"), until, expected)


def test_spans_not_exported_fires_for_a_lasting_collector_outage_not_a_restart(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """The collector away for good: every batch is lost, and ShopmeshSpansNotExported fires after its `for`.
    Away for a minute (a restart): a few batches lost, silent. Too slow for good, the spans dropped by the
    batch queue rather than failing to export: it fires the same."""
    alert = alert_named(rendered, "orders", "ShopmeshSpansNotExported")
    hold, until, away = seconds_of(alert["for"]), 30 * 60, 5 * 60
    assert_promtool_passes(
        alert,
        "orders",
        [
            span_export_scenario(
                "the collector away from minute 5",
                lambda t: t >= away,
                until,
                silent_between(0, away + hold) | firing_between(fires_by(away, hold), until),
            ),
            span_export_scenario(
                "the collector restarting for a minute",
                lambda t: away <= t < away + 60,
                until,
                silent_between(0, until),
            ),
            span_export_scenario(
                "the collector too slow from minute 5: the queue drops spans",
                lambda t: t >= away,
                until,
                silent_between(0, away + hold) | firing_between(fires_by(away, hold), until),
                dropping=True,
            ),
        ],
        tmp_path,
    )


def open_files_scenario(
    name: str, open_files: Callable[[float], int], proc: Path, until: int, expected: Expected
) -> Scenario:
    """prometheus-client's own ProcessCollector, as every service's registry has it, over a /proc of the test's
    making (`proc`): a process whose open-file limit is 1000 and which holds `open_files(t)` descriptors at second
    t (the files of its fd folder, as Linux lists them)."""
    (proc / "1" / "fd").mkdir(parents=True)
    (proc / "stat").write_text("btime 1700000000\n")
    (proc / "1" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1000                 4096                 files\n"
    )
    registry = CollectorRegistry()
    ProcessCollector(pid=lambda: 1, proc=str(proc), registry=registry)
    held: list[Path] = []

    def world(t: float) -> None:
        while len(held) < open_files(t):
            held.append(proc / "1" / "fd" / str(len(held)))
            held[-1].touch()
        while len(held) > open_files(t):
            held.pop().unlink()

    return Scenario(name, world, lambda: scraped(registry, "pod-0"), until, expected, {"pod": "pod-0"})


def test_file_descriptors_near_limit_fires_for_a_lasting_leak_not_a_burst_nor_a_high_steady_count(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A pod leaking a descriptor every 2 s from 700 open of its limit of 1000: past 800 from 200 s on, and
    ShopmeshFileDescriptorsNearLimit fires after its `for`. 750 held steadily, or a burst of 900 for 5 minutes
    (a rush of connections, closed again): silent."""
    alert = alert_named(rendered, "orders", "ShopmeshFileDescriptorsNearLimit")
    hold, until, burst = seconds_of(alert["for"]), 30 * 60, 5 * 60
    past_80 = 201  # 700 + 201 // 2 = 800 at 200 s; above it from the next descriptor on
    assert_promtool_passes(
        alert,
        "orders",
        [
            open_files_scenario(
                "a descriptor leaked every 2 s",
                lambda t: min(700 + int(t) // 2, 990),
                tmp_path / "leak",
                until,
                silent_between(0, past_80 + hold) | firing_between(fires_by(past_80, hold), until),
            ),
            open_files_scenario(
                "750 of 1000 held steadily", lambda _t: 750, tmp_path / "steady", until, silent_between(0, until)
            ),
            open_files_scenario(
                "900 of 1000 for 5 minutes, then 300",
                lambda t: 900 if burst <= t < 2 * burst else 300,
                tmp_path / "burst",
                until,
                silent_between(0, until),
            ),
        ],
        tmp_path,
    )


BREAKER_LABELS = {"dependency": "recommendations", "method": "/shopmesh.x.v1.XService/Get"}


def breaker_scenario(name: str, calls: Callable[[float], bool], until: int, expected: Expected) -> Scenario:
    """The real breaker and its metrics collector in front of a dependency that fails every call at once
    (UNAVAILABLE), a call made at each second `calls(t)` says."""
    now = [0.0]
    breaker = CircuitBreaker(clock=lambda: now[0])
    collector = BreakerCollector(wall_clock=lambda: now[0])
    collector.watch(BREAKER_LABELS["dependency"], {BREAKER_LABELS["method"]: breaker})

    def world(t: float) -> None:
        now[0] = t
        if calls(t) and breaker.allow():
            breaker.record_failure()

    def scrape() -> list[Sample]:
        return [s._replace(labels={**s.labels, "pod": "gateway-0"}) for f in collector.collect() for s in f.samples]

    return Scenario(name, world, scrape, until, expected, BREAKER_LABELS)


THRESHOLD = CircuitBreaker().config.failure_threshold


def first_probe(every: int, phase: int = 0) -> int:
    """The call after the threshold's: the breaker is open (its reset timeout is far shorter than `every`),
    so it is a probe, and it fails."""
    return phase + THRESHOLD * every


def fires_by(since: float, hold: int) -> float:
    """What the alert fires by when its condition holds from `since` on: the next scrape, the next
    evaluation then, plus its `for`."""
    return since + hold + SCRAPE_INTERVAL + EVALUATION_INTERVAL


def test_circuit_open_fires_while_a_dependency_stays_down(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A dependency down for good (every call to it fails UNAVAILABLE at once) under a trickle of calls to
    one method, one every 20 s (a quiet hour): the breaker in front of it opens and keeps failing calls the
    whole time, so ShopmeshCircuitOpen must fire. But the breaker's `open` state lasts only its reset timeout
    (5 s); then it reads `half_open` until the next call's probe fails and opens it again: a rule selecting
    state="open" saw 0 at most scrapes, each such evaluation reset its `for: 5m`, and it never fired."""
    alert = alert_named(rendered, "gateway", "ShopmeshCircuitOpen")
    hold, until = seconds_of(alert["for"]), 20 * 60
    scenarios = [
        breaker_scenario(
            f"a call every 20 s from second {phase}",
            lambda t, phase=phase: t >= phase and (t - phase) % 20 == 0,
            until,
            silent_between(0, first_probe(20, phase) + hold)
            | firing_between(fires_by(first_probe(20, phase), hold), until),
        )
        for phase in range(0, 20, 2)
    ]
    assert_promtool_passes(alert, "gateway", scenarios, tmp_path)


@pytest.mark.parametrize("every", [60, 180, 600])
def test_circuit_open_fires_for_a_rarely_called_dependency_that_stays_down(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, every: int
) -> None:
    """A dependency down for good behind a method called once a minute or rarer (an admin's call, a nightly
    job): its breaker opens after its failure threshold and every later call is a probe that fails; between
    calls it reads half_open. Requiring the breaker to open again within 2 minutes, the rule saw that
    at most briefly after each probe, never for its `for`, and stayed silent through a 3-hour outage. It
    fires from the first failed probe's `for` on, throughout."""
    alert = alert_named(rendered, "gateway", "ShopmeshCircuitOpen")
    hold, until = seconds_of(alert["for"]), 3 * 3600
    expected = silent_between(0, first_probe(every) + hold) | firing_between(fires_by(first_probe(every), hold), until)
    scenario = breaker_scenario(f"a call every {every} s", lambda t: t % every == 0, until, expected)
    assert_promtool_passes(alert, "gateway", [scenario], tmp_path)


@pytest.mark.parametrize("every", [60, 600])
def test_circuit_open_resolves_for_a_dependency_that_recovered_while_its_method_is_idle(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, every: int
) -> None:
    """A dependency down for an hour behind a method called only while something needs it (orders' recovery
    loop lists payments only while it compensates): calls every `every` s during the outage, none once the
    dependency is back. The last probe failed, nothing got through since, so the breaker still says
    probe_failed: on that alone the alert fired for the outage and then for ever, until someone called
    the method or the pod restarted. Nothing has said the dependency is down for half an hour: it must
    resolve, and stay resolved."""
    alert = alert_named(rendered, "gateway", "ShopmeshCircuitOpen")
    hold, outage = seconds_of(alert["for"]), 3600
    until = outage + 3 * 3600
    last_probe = (outage - 1) // every * every
    assert fires_by(first_probe(every), hold) < outage
    expected = (
        silent_between(0, first_probe(every) + hold)
        | firing_between(fires_by(first_probe(every), hold), last_probe + 1800 - EVALUATION_INTERVAL)
        | silent_between(last_probe + 1800 + SCRAPE_INTERVAL + EVALUATION_INTERVAL, until)
    )
    scenario = breaker_scenario(
        f"a call every {every} s for an hour, none after", lambda t: t < outage and t % every == 0, until, expected
    )
    assert_promtool_passes(alert, "gateway", [scenario], tmp_path)


def test_circuit_open_fires_again_when_the_next_call_finds_the_dependency_still_down(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A method called once an hour in front of a dependency down for good: the alert resolves half an hour
    after each failed probe (nothing fresh says it is down), and the next call's probe, failing, fires it
    again."""
    alert = alert_named(rendered, "gateway", "ShopmeshCircuitOpen")
    hold, hour, hours = seconds_of(alert["for"]), 3600, 10
    expected = silent_between(0, first_probe(hour) + hold)
    for probe in range(first_probe(hour), hours * hour, hour):
        expected |= firing_between(fires_by(probe, hold), probe + 1800 - EVALUATION_INTERVAL)
        expected |= silent_between(
            probe + 1800 + SCRAPE_INTERVAL + EVALUATION_INTERVAL, min(probe + hour + hold, hours * hour)
        )
    scenario = breaker_scenario("a call every hour", lambda t: t % hour == 0, hours * hour, expected)
    assert_promtool_passes(alert, "gateway", [scenario], tmp_path)


def test_circuit_open_does_not_fire_for_a_breaker_left_idle_after_a_blip(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A dependency that failed for a moment (a restart: five calls UNAVAILABLE at once) and is back: the breaker
    opened, and after its reset timeout reads half_open until the next call probes it. A method called
    rarely (none for the next 20 minutes) leaves it so. Nothing fails fast, no probe fails, the dependency is
    up: ShopmeshCircuitOpen must stay silent (selecting state!="closed" alone, it fired 5 minutes after the
    blip and stayed firing until someone happened to call that method)."""
    alert = alert_named(rendered, "gateway", "ShopmeshCircuitOpen")
    until = 20 * 60
    scenario = breaker_scenario(
        f"a blip of {THRESHOLD} failed calls", lambda t: t < THRESHOLD, until, silent_between(0, until)
    )
    assert_promtool_passes(alert, "gateway", [scenario], tmp_path)


def test_emails_failed_sees_the_first_failed_email() -> None:
    """ShopmeshEmailsFailed is `increase(...{outcome="failed"}[15m]) > 0`: increase() needs two samples of a
    series and sees only a rise between them. prometheus-client creates a labelled child on first use, so
    notifications' series outcome="failed" appears only with the first given-up e-mail, already at 1: its
    increase is 0 and the alert stays silent for the first failure of each pod (for a rare failure, every
    failure: each new pod starts without the series). The series must be there, at 0, before any failure."""
    registry = CollectorRegistry()
    NotificationMetrics(registry)
    samples = {
        sample.labels.get("outcome"): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "shopmesh_notifications_delivery_attempts_total"
    }
    assert samples.get("failed") == 0.0, f"before any attempt the endpoint shows only {samples}"


# Alerts no dashboard panel shows, and why. Any other is named in the description of a panel that draws what it
# reads: an on-call engineer paged by it finds there how it came to fire, and since when.
NO_PANEL = {"ShopmeshServiceDown": "`up` is Prometheus' own; a service down shows as its calls stopping"}


def test_every_alert_has_a_dashboard_panel(rendered: dict[tuple[str, str], Docs]) -> None:
    described = " ".join(description for _title, row in dashboards.ROWS for _panel, _unit, description, _q in row)
    alerts = {a["alert"] for name in SERVICES for a in alerts_of(rendered[MONITORING, name], name)}
    assert NO_PANEL.keys() <= alerts
    missing = sorted(alert for alert in alerts - NO_PANEL.keys() if alert not in described)
    assert not missing, f"no dashboard panel shows {missing}"


def test_every_label_a_dashboard_or_an_alert_names_is_on_its_series(rendered: dict[tuple[str, str], Docs]) -> None:
    """A label the series lack fails quietly: a matcher on it selects nothing (a panel flat at zero, an alert
    that never fires), a `by` on it sums every series into one, a legend or annotation shows it empty."""
    exported = exported_metric_labels() | recorded_metric_labels(rendered)
    problems = []
    for title, query, legend in dashboards.panel_queries():
        found = label_problems(query.replace("$__rate_interval", "5m"), exported, set(LEGEND_LABEL.findall(legend)))
        problems += [f"panel {title!r}: {problem}" for problem in found]
    for name in SERVICES:
        for alert in alerts_of(rendered[MONITORING, name], name):
            shown = set(ANNOTATION_LABEL.findall(json.dumps(alert["annotations"])))
            found = label_problems(alert["expr"], exported, shown)
            problems += [f"{name} {alert['alert']}: {problem}" for problem in found]
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_label_check_sees_a_label_the_series_lack() -> None:
    exported = exported_metric_labels()
    assert (
        label_problems('sum by (consumer) (shopmesh_events_dead_letters{job="orders"})', exported, {"consumer"}) == []
    )
    assert label_problems('sum by (subject) (shopmesh_events_dead_letters{job="orders"})', exported, set())
    assert label_problems('shopmesh_events_dead_letters{subject="x"}', exported, set())
    assert label_problems("sum(shopmesh_events_dead_letters)", exported, {"consumer"})
    assert (
        label_problems(
            "histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket[5m])))", exported, set()
        )
        == []
    )


@dataclass(frozen=True)
class Replica:
    """A pod in a simulation of a timestamp alert (ShopmeshOutboxRelayStalled, ShopmeshConsumerCutOff): it
    is scraped from `start` until `stop`, sets its timestamp at its start (as the relay and a consumer do,
    so that one never getting through shows it too) and then every `every` s from `leads` (a relay once it
    holds the relay lock; None: from its start, as a consumer reads) until it is cut off."""

    start: float
    stop: float = math.inf
    leads: float | None = None
    cut_off: float = math.inf
    every: float = 1.0


def replicas_scenario(
    name: str, replicas: list[Replica], stamp: Callable[[ServerMetrics, float], None], expected: Expected
) -> Scenario:
    """`replicas`, each with the real event metrics, `stamp` setting its timestamp."""
    now = [0.0]
    metrics = [ServerMetrics(CollectorRegistry()) for _ in replicas]

    def world(t: float) -> None:
        now[0] = t
        for replica, metric in zip(replicas, metrics, strict=True):
            leads = replica.start if replica.leads is None else replica.leads
            passing = leads <= t < min(replica.cut_off, replica.stop) and (t - leads) % replica.every == 0
            if t == replica.start or passing:
                stamp(metric, t)

    def scrape() -> list[Sample]:
        return [
            sample._replace(labels={**sample.labels, "pod": f"pod-{index}"})
            for index, (replica, metric) in enumerate(zip(replicas, metrics, strict=True))
            if replica.start <= now[0] < replica.stop
            for family in metric.registry.collect()
            for sample in family.samples
        ]

    return Scenario(name, world, scrape, STAMPED_FOR, expected)


STAMPED_FOR = 1800
# How old the newest stamp gets before the alert is pending (docs/operations.md): over 2 and 3 minutes.
RELAY_STALLED_AFTER = 120
CONSUMER_CUT_OFF_AFTER = 180
CUT_OFF_AT = 300
ROLLED_AT = 900
# Scenario -> its replicas, for a relay (every second; only the lock's holder passes) and a consumer (every 30 s).
RELAY_SCENARIOS = {
    "one healthy replica": [Replica(0)],
    "a leader and a standby that never passes": [Replica(0), Replica(0, leads=math.inf)],
    "a rolling update: the new replica has just started, the old one leads until it stops": [
        Replica(0, stop=ROLLED_AT),
        Replica(ROLLED_AT - 10, leads=ROLLED_AT),
    ],
    "zero replicas (ShopmeshServiceDown's)": [],
}
RELAY_STALLED = {
    "the only replica stalls": [Replica(0, cut_off=CUT_OFF_AT)],
    "the leader hangs holding the lock, the standby waits": [
        Replica(0, cut_off=CUT_OFF_AT),
        Replica(0, leads=math.inf),
    ],
}
CONSUMER_SCENARIOS = {
    "one healthy replica": [Replica(0, every=30)],
    "two healthy replicas": [Replica(0, every=30), Replica(7, every=30)],
    # The other replica consumes: ShopmeshConsumerCutOff is about the consumer, not about each pod.
    "one of two replicas cut off": [Replica(0, cut_off=CUT_OFF_AT, every=30), Replica(7, every=30)],
    "a rolling update: the new replica has just started, the old one reads until it stops": [
        Replica(0, stop=ROLLED_AT, every=30),
        Replica(ROLLED_AT - 10, every=30),
    ],
    "zero replicas (ShopmeshServiceDown's)": [],
}
CONSUMER_CUT_OFF = {
    "the only replica is cut off": [Replica(0, cut_off=CUT_OFF_AT, every=30)],
    "both replicas are cut off": [Replica(0, cut_off=CUT_OFF_AT, every=30), Replica(7, cut_off=CUT_OFF_AT, every=30)],
}
CONSUMER = "notifications"


def stamp_relay_pass(metrics: ServerMetrics, t: float) -> None:
    metrics.outbox.relay_pass.set(t)


def stamp_nats_read(metrics: ServerMetrics, t: float) -> None:
    metrics.events.consumer_nats_read.labels(CONSUMER).set(t)


def fires_while_stamps_stop(threshold: int, hold: int) -> Expected:
    """Silent until the last stamp (at most one period, 30 s, before the cut-off) is over `threshold` old
    (the runbook's) and that has held for the rule's `for`; firing from the latest that can be on, to the
    end."""
    earliest = CUT_OFF_AT - 30 + threshold + hold
    latest = CUT_OFF_AT + threshold + hold + SCRAPE_INTERVAL + 2 * EVALUATION_INTERVAL
    return silent_between(0, earliest) | firing_between(latest, STAMPED_FOR)


# The timestamp alerts: alert -> the service whose rules hold it, how a replica sets its timestamp, how old the
# newest stamp gets before it is pending, and the labels it fires with beside the rule's.
STAMP_ALERTS: dict[str, tuple[str, Callable[[ServerMetrics, float], None], int, dict[str, str]]] = {
    "ShopmeshOutboxRelayStalled": ("orders", stamp_relay_pass, RELAY_STALLED_AFTER, {}),
    "ShopmeshConsumerCutOff": ("notifications", stamp_nats_read, CONSUMER_CUT_OFF_AFTER, {"consumer": CONSUMER}),
}


def assert_stamp_alert(
    rendered: dict[tuple[str, str], Docs],
    tmp_path: Path,
    name: str,
    scenario: str,
    replicas: list[Replica],
    fires: bool,
) -> None:
    """The timestamp alert `name` over `replicas`: silent throughout, or firing once the stamps stop."""
    service, stamp, threshold, labels = STAMP_ALERTS[name]
    alert = alert_named(rendered, service, name)
    expected = fires_while_stamps_stop(threshold, seconds_of(alert["for"])) if fires else silent_between(0, STAMPED_FOR)
    simulated = replicas_scenario(scenario, replicas, stamp, expected)
    simulated.labels.update(labels)
    assert_promtool_passes(alert, service, [simulated], tmp_path)


@pytest.mark.parametrize("scenario", list(RELAY_SCENARIOS))
def test_outbox_relay_stalled_stays_silent_while_a_relay_passes(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    assert_stamp_alert(
        rendered, tmp_path, "ShopmeshOutboxRelayStalled", scenario, RELAY_SCENARIOS[scenario], fires=False
    )


@pytest.mark.parametrize("scenario", list(RELAY_STALLED))
def test_outbox_relay_stalled_fires_when_no_relay_passes(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    assert_stamp_alert(rendered, tmp_path, "ShopmeshOutboxRelayStalled", scenario, RELAY_STALLED[scenario], fires=True)


@pytest.mark.parametrize("scenario", list(CONSUMER_SCENARIOS))
def test_consumer_cut_off_stays_silent_while_a_replica_reads_nats(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    assert_stamp_alert(
        rendered, tmp_path, "ShopmeshConsumerCutOff", scenario, CONSUMER_SCENARIOS[scenario], fires=False
    )


@pytest.mark.parametrize("scenario", list(CONSUMER_CUT_OFF))
def test_consumer_cut_off_fires_when_no_replica_reads_nats(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    assert_stamp_alert(rendered, tmp_path, "ShopmeshConsumerCutOff", scenario, CONSUMER_CUT_OFF[scenario], fires=True)


RECOVERY_FOR = 1800
RECOVERY_FAILS_FROM = 120


def recovery_scenario(
    name: str, recovery_pass: str, errors: Callable[[int], int], expected: Expected, until: int = RECOVERY_FOR
) -> Scenario:
    """One orders pod's real OrderMetrics, its recovery loop's `recovery_pass` failing errors(t) times at second
    t; the other pass's series stays at 0 beside it (ShopmeshOrderRecoveryFailing is per pass)."""
    registry = CollectorRegistry()
    metrics = OrderMetrics(registry)

    def world(t: float) -> None:
        for _ in range(errors(int(t))):
            metrics.recovery_error(recovery_pass)

    def scrape() -> list[Sample]:
        return [s._replace(labels={**s.labels, "pod": "orders-0"}) for f in registry.collect() for s in f.samples]

    return Scenario(name, world, scrape, until, expected, {"pass": recovery_pass})


def every(period: int, start: int = RECOVERY_FAILS_FROM, stop: float = math.inf) -> Callable[[int], int]:
    return lambda t: int(start <= t < stop and (t - start) % period == 0)


@pytest.mark.parametrize("recovery_pass", ["resume", "recheck"])
@pytest.mark.parametrize(
    "period",
    # A whole pass failing at each RECOVERY_INTERVAL_SECONDS (2 s); one order failing at each try, at the longest
    # backoff (RECOVERY_BACKOFF_MAX_SECONDS, 60 s) and at a slower loop's 150 s.
    [2, 60, 150],
)
def test_order_recovery_failing_fires_while_a_pass_keeps_failing(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, recovery_pass: str, period: int
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshOrderRecoveryFailing")
    hold = seconds_of(alert["for"])
    expected = silent_between(0, RECOVERY_FAILS_FROM + hold) | firing_between(
        fires_by(RECOVERY_FAILS_FROM, hold), RECOVERY_FOR
    )
    scenario = recovery_scenario(f"{recovery_pass} fails every {period} s", recovery_pass, every(period), expected)
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


def test_order_recovery_failing_resolves_once_the_errors_stop(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """An order failing at every try for 15 minutes, then a deploy that fixes it: firing while it fails, silent
    once the last error has left the rule's 5-minute window."""
    alert = alert_named(rendered, "orders", "ShopmeshOrderRecoveryFailing")
    hold, fixed, window = seconds_of(alert["for"]), RECOVERY_FAILS_FROM + 900, 300
    last = fixed - 60
    expected = (
        silent_between(0, RECOVERY_FAILS_FROM + hold)
        | firing_between(fires_by(RECOVERY_FAILS_FROM, hold), last)
        | silent_between(last + window + SCRAPE_INTERVAL + EVALUATION_INTERVAL, RECOVERY_FOR)
    )
    scenario = recovery_scenario("resume fails every 60 s until a fix", "resume", every(60, stop=fixed), expected)
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


# Errors that come once, not at every try: a pass that met a passing fault, an order fixed by its next try.
RECOVERY_BURSTS: dict[str, Callable[[int], int]] = {
    "one pass fails on 5 orders at once": lambda t: 5 * (t == 300),
    "two such bursts 8 minutes apart": lambda t: 5 * (t in (300, 780)),
}


@pytest.mark.parametrize("scenario", list(RECOVERY_BURSTS))
def test_order_recovery_failing_ignores_a_burst_that_does_not_recur(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshOrderRecoveryFailing")
    simulated = recovery_scenario(scenario, "recheck", RECOVERY_BURSTS[scenario], silent_between(0, RECOVERY_FOR))
    assert_promtool_passes(alert, "orders", [simulated], tmp_path)


LATE_CAPTURES_FOR = 3600
LATE_CAPTURE_AT = 600
LATE_CAPTURES_WINDOW = 900  # the rule's increase() window (helm/orders/values.yaml)


def a_cancelled_order() -> Order:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return Order(
        id="ord_1",
        user_id="usr_1",
        email="a@example.com",
        currency="EUR",
        lines=(OrderLine("prd_1", "Mug", 1, 1200),),
        address=Address("A B", "1 Road", "Town", "1000", "BE"),
        created_at=now,
        updated_at=now,
        state=OrderState.CANCELLED,
        step=SagaStep.DONE,
        cancel_code=CancelCode.PAYMENT_UNAVAILABLE,
        refunded=True,
    )


def orders_pod_scenario(
    name: str,
    order: Order,
    count: Callable[[OrderMetrics, Order], None],
    times: Callable[[int], int],
    expected: Expected,
) -> Scenario:
    """One orders pod's real OrderMetrics, count(metrics, order) called times(t) times at second t."""
    registry = CollectorRegistry()
    metrics = OrderMetrics(registry)

    def world(t: float) -> None:
        for _ in range(times(int(t))):
            count(metrics, order)

    def scrape() -> list[Sample]:
        return [s._replace(labels={**s.labels, "pod": "orders-0"}) for f in registry.collect() for s in f.samples]

    return Scenario(name, world, scrape, LATE_CAPTURES_FOR, expected)


def late_captures_scenario(name: str, refunds: Callable[[int], int], expected: Expected) -> Scenario:
    """One orders pod, its recheck refunding refunds(t) late captures at second t."""
    return orders_pod_scenario(name, a_cancelled_order(), OrderMetrics.late_capture_refunded, refunds, expected)


@pytest.mark.parametrize("at", [LATE_CAPTURE_AT, LATE_CAPTURE_AT + 7])
def test_late_captures_refunded_fires_for_a_single_late_capture_and_resolves_after_its_window(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, at: int
) -> None:
    """Each late capture is a customer charged for an order they were told was cancelled: the first of a
    pod (its counter exported at 0 from the start) fires the alert at once, and it resolves once that
    refund has left the rule's window, nothing else refunded since."""
    alert = alert_named(rendered, "orders", "ShopmeshLateCapturesRefunded")
    hold = seconds_of(alert["for"])
    assert fires_by(at, hold) < at + LATE_CAPTURES_WINDOW - SCRAPE_INTERVAL, "it could not fire for one refund"
    expected = (
        silent_between(0, at)
        | firing_between(fires_by(at, hold), at + LATE_CAPTURES_WINDOW - SCRAPE_INTERVAL)
        | silent_between(at + LATE_CAPTURES_WINDOW + SCRAPE_INTERVAL + EVALUATION_INTERVAL, LATE_CAPTURES_FOR)
    )
    scenario = late_captures_scenario(f"one late capture refunded at {at} s", lambda t: int(t == at), expected)
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


def test_late_captures_refunded_stays_silent_while_none_is_refunded(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshLateCapturesRefunded")
    scenario = late_captures_scenario("no late capture", lambda t: 0, silent_between(0, LATE_CAPTURES_FOR))
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


REJECTED_WINDOW = 900  # ShopmeshPaymentRequestsRejected's increase() window (helm/orders/values.yaml)


def cancellations_scenario(name: str, code: CancelCode, cancels: Callable[[int], int], expected: Expected) -> Scenario:
    """One orders pod, cancels(t) checkouts ending CANCELLED with `code` at second t."""
    order = replace(a_cancelled_order(), cancel_code=code, refunded=False)
    return orders_pod_scenario(name, order, OrderMetrics.finished, cancels, expected)


def test_payment_requests_rejected_fires_for_a_single_one_and_resolves_after_its_window(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """PAYMENT_REQUEST_REJECTED should stay at zero (a request of ours payments refused), but alerted only in
    ShopmeshCheckoutsCancelledByOutages' share past 5 %: one, or a few among many checkouts, went unseen."""
    alert = alert_named(rendered, "orders", "ShopmeshPaymentRequestsRejected")
    at, hold = 600, seconds_of(alert["for"])
    expected = (
        silent_between(0, at)
        | firing_between(fires_by(at, hold), at + REJECTED_WINDOW - SCRAPE_INTERVAL)
        | silent_between(at + REJECTED_WINDOW + SCRAPE_INTERVAL + EVALUATION_INTERVAL, LATE_CAPTURES_FOR)
    )
    scenario = cancellations_scenario(
        f"one rejected at {at} s", CancelCode.PAYMENT_REQUEST_REJECTED, lambda t: int(t == at), expected
    )
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


def test_payment_requests_rejected_stays_silent_for_the_customers_own_cancellations(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshPaymentRequestsRejected")
    declined = cancellations_scenario(
        "cards declined", CancelCode.CARD_DECLINED, lambda t: int(t % 60 == 0), silent_between(0, LATE_CAPTURES_FOR)
    )
    assert_promtool_passes(alert, "orders", [declined], tmp_path)


WAITING_FOR = 2400
WAITING_FROM = 300


def waiting_scenario(name: str, pods: list[Callable[[int], int]], expected: Expected) -> Scenario:
    """An orders pod per entry of `pods`, each with the real OrderMetrics, its recovery loop counting pods[i](t)
    orders waiting at COMPENSATE at second t (payments down). Every replica counts the same rows; one whose
    count failed (its database away) or that has not counted yet (just started) reports its last value, 0."""
    registries = [CollectorRegistry() for _ in pods]
    metrics = [OrderMetrics(registry) for registry in registries]

    def world(t: float) -> None:
        for count, metric in zip(pods, metrics, strict=True):
            metric.waiting_for_dependency({SagaStep.COMPENSATE: count(int(t))})

    def scrape() -> list[Sample]:
        return [
            sample._replace(labels={**sample.labels, "pod": f"orders-{index}"})
            for index, registry in enumerate(registries)
            for family in registry.collect()
            for sample in family.samples
        ]

    return Scenario(name, world, scrape, WAITING_FOR, expected, {"step": SagaStep.COMPENSATE.value})


def counting_between(start: int, stop: int, count: int) -> Callable[[int], int]:
    """A gauge's value at second t: `count` from `start` until `stop`, 0 otherwise."""
    return lambda t: count if start <= t < stop else 0


@pytest.mark.parametrize(
    "scenario",
    [
        "payments down for 20 minutes, one replica",
        "payments down for 20 minutes, two replicas counting alike",
        "payments down for 20 minutes, a replica started mid-outage reports 0 until its first count",
    ],
)
def test_checkouts_waiting_fires_while_orders_wait_for_a_dependency_and_resolves_once_they_end(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshCheckoutsWaiting")
    hold, back = seconds_of(alert["for"]), WAITING_FROM + 1200
    expected = (
        silent_between(0, WAITING_FROM + hold)
        | firing_between(fires_by(WAITING_FROM, hold), back)
        | silent_between(back + SCRAPE_INTERVAL + EVALUATION_INTERVAL, WAITING_FOR)
    )
    outage = counting_between(WAITING_FROM, back, 3)
    pods = {
        "payments down for 20 minutes, one replica": [outage],
        "payments down for 20 minutes, two replicas counting alike": [outage, outage],
        "payments down for 20 minutes, a replica started mid-outage reports 0 until its first count": [
            outage,
            lambda t: 0 if t < WAITING_FROM + 400 else outage(t),
        ],
    }[scenario]
    assert_promtool_passes(alert, "orders", [waiting_scenario(scenario, pods, expected)], tmp_path)


@pytest.mark.parametrize(
    ("name", "pods"),
    [
        # A payments pod restarting: the orders of those minutes wait, then end once it serves again.
        ("orders wait for 4 minutes", [counting_between(WAITING_FROM, WAITING_FROM + 240, 3)]),
        (
            "two waits of 3 minutes, 2 minutes apart",
            [lambda t: counting_between(300, 480, 3)(t) + counting_between(600, 780, 3)(t)],
        ),
        ("no order waits", [lambda t: 0, lambda t: 0]),
    ],
)
def test_checkouts_waiting_stays_silent_on_a_wait_shorter_than_its_hold(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, name: str, pods: list[Callable[[int], int]]
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshCheckoutsWaiting")
    assert seconds_of(alert["for"]) > 240, "the scenarios' waits are not shorter than the hold"
    assert_promtool_passes(alert, "orders", [waiting_scenario(name, pods, silent_between(0, WAITING_FOR))], tmp_path)


SET_ASIDE_FOR = 1800
SET_ASIDE_AT = 300
# An operator re-sends or deletes the events set aside (docs/operations.md): the relay's next pass counts 0.
SET_ASIDE_CLEARED_AT = 1200


def set_aside_scenario(
    name: str,
    counts: list[Callable[[int], int]],
    expected: Expected,
    gauge: Callable[[OutboxMetrics], Gauge] = lambda outbox: outbox.set_aside,
) -> Scenario:
    """A replica per entry of `counts`, each with the real event metrics, its relay counting counts(t) events set
    aside at second t (the lock's holder; a standby reports 0); or setting another of its gauges (`gauge`)."""
    metrics = [ServerMetrics(CollectorRegistry()) for _ in counts]

    def world(t: float) -> None:
        for count, metric in zip(counts, metrics, strict=True):
            gauge(metric.outbox).set(count(int(t)))

    def scrape() -> list[Sample]:
        return [
            sample._replace(labels={**sample.labels, "pod": f"pod-{index}"})
            for index, metric in enumerate(metrics)
            for family in metric.registry.collect()
            for sample in family.samples
        ]

    return Scenario(name, world, scrape, SET_ASIDE_FOR, expected)


@pytest.mark.parametrize(
    "scenario",
    [
        "one replica sets an event aside",
        "the leader sets two aside, a standby reports 0",
        "the leader sets one aside at a time, cleared one at a time",
    ],
)
def test_outbox_events_set_aside_fires_while_one_waits_and_resolves_once_cleared(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshOutboxEventsSetAside")
    hold = seconds_of(alert["for"])
    assert fires_by(SET_ASIDE_AT, hold) < SET_ASIDE_CLEARED_AT, "the scenario clears them before it could fire"
    expected = (
        silent_between(0, SET_ASIDE_AT + hold)
        | firing_between(fires_by(SET_ASIDE_AT, hold), SET_ASIDE_CLEARED_AT)
        | silent_between(SET_ASIDE_CLEARED_AT + SCRAPE_INTERVAL + EVALUATION_INTERVAL, SET_ASIDE_FOR)
    )
    counts = {
        "one replica sets an event aside": [counting_between(SET_ASIDE_AT, SET_ASIDE_CLEARED_AT, 1)],
        "the leader sets two aside, a standby reports 0": [
            counting_between(SET_ASIDE_AT, SET_ASIDE_CLEARED_AT, 2),
            lambda t: 0,
        ],
        "the leader sets one aside at a time, cleared one at a time": [
            lambda t: (
                counting_between(SET_ASIDE_AT, SET_ASIDE_CLEARED_AT, 1)(t)
                + counting_between(SET_ASIDE_AT + 400, SET_ASIDE_CLEARED_AT - 200, 1)(t)
            ),
            lambda t: 0,
        ],
    }[scenario]
    assert_promtool_passes(alert, "orders", [set_aside_scenario(scenario, counts, expected)], tmp_path)


def test_outbox_events_set_aside_stays_silent_while_nothing_is_set_aside(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshOutboxEventsSetAside")
    scenario = set_aside_scenario("nothing set aside", [lambda t: 0, lambda t: 0], silent_between(0, SET_ASIDE_FOR))
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


@pytest.mark.parametrize("full", [True, False], ids=["the stream refuses the leader as full", "it never does"])
def test_outbox_stream_full_fires_while_the_stream_refuses_the_relay_and_resolves_once_it_takes_events(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, full: bool
) -> None:
    alert = alert_named(rendered, "orders", "ShopmeshOutboxStreamFull")
    hold = seconds_of(alert["for"])
    expected = (
        (
            silent_between(0, SET_ASIDE_AT + hold)
            | firing_between(fires_by(SET_ASIDE_AT, hold), SET_ASIDE_CLEARED_AT)
            | silent_between(SET_ASIDE_CLEARED_AT + SCRAPE_INTERVAL + EVALUATION_INTERVAL, SET_ASIDE_FOR)
        )
        if full
        else silent_between(0, SET_ASIDE_FOR)
    )
    leader = counting_between(SET_ASIDE_AT, SET_ASIDE_CLEARED_AT, 1) if full else lambda t: 0
    scenario = set_aside_scenario(
        "stream full" if full else "never full", [leader, lambda t: 0], expected, lambda outbox: outbox.stream_full
    )
    assert_promtool_passes(alert, "orders", [scenario], tmp_path)


DROPPED_FOR = 3600
DROP_AT = 600
DROPPED_WINDOW = 900  # the rule's increase() window (helm/shopmesh-lib/templates/_monitoring.tpl)


@dataclass(frozen=True)
class ConsumerPod:
    """A replica of a consumer, scraped from `start` until `stop`, dropping an event at each of `drops`, its
    container restarted (a new process, its counter back at 0, the same pod) at each of `restarts`."""

    start: int
    stop: float = math.inf
    drops: tuple[int, ...] = ()
    restarts: tuple[int, ...] = ()


async def never_called(session: object, event: object) -> None:
    raise AssertionError("the scenario's consumers are never started")


def dropped_scenario(
    name: str,
    pods: list[ConsumerPod],
    tmp_path: Path,
    expected: Expected,
    count: Callable[[EventMetrics], None] = lambda events: events.dropped.labels(CONSUMER).inc(),
) -> Scenario:
    """`pods`, each a real EventConsumer made with its own real event metrics at its start (as the service's
    wiring makes it: never started here, nothing reached), counting a drop as its _drop does (or as `count`
    says: a loss as its _look_for_lost does)."""
    now = [0.0]
    metrics = [ServerMetrics(CollectorRegistry()) for _ in pods]

    def world(t: float) -> None:
        now[0] = t
        for index, (pod, metric) in enumerate(zip(pods, metrics, strict=True)):
            if t == pod.start or t in pod.restarts:
                metrics[index] = metric = ServerMetrics(CollectorRegistry())
                EventConsumer(
                    Database(f"sqlite:///{tmp_path / f'pod-{index}.db'}"),
                    "nats://127.0.0.1:1",
                    durable=CONSUMER,
                    stream="ORDERS",
                    stream_subjects=["orders.v1.>"],
                    subjects=["orders.v1.placed"],
                    handler=never_called,
                    metrics=metric.events,
                )
            if t in pod.drops:
                count(metric.events)

    def scrape() -> list[Sample]:
        return [
            sample._replace(labels={**sample.labels, "pod": f"pod-{index}"})
            for index, (pod, metric) in enumerate(zip(pods, metrics, strict=True))
            if pod.start <= now[0] < pod.stop
            for family in metric.registry.collect()
            for sample in family.samples
        ]

    return Scenario(name, world, scrape, DROPPED_FOR, expected, {"consumer": CONSUMER})


@pytest.mark.parametrize(
    "scenario",
    [
        "the only replica drops its first event",
        "a replica started 30 s before drops its first event, the other none",
        "a replica of a rolling update drops its first event right after the first scrape after its start",
        "a replica of a rolling update drops its first event before its first scrape",
        "a restarted replica drops an event before the first scrape after its restart",
    ],
)
def test_events_dropped_pages_at_the_first_drop_and_resolves_after_its_window(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, scenario: str
) -> None:
    """An event dropped is lost for good: the first of a pod must page. Its counter made on first use, the
    series appeared with that drop already at 1 and increase() saw no rise: the alert stayed silent. Exported
    at 0 from the start, it still does for a drop before the pod's first scrape: the rule counts the whole
    value of a series that had no sample a window ago."""
    alert = alert_named(rendered, "notifications", "ShopmeshEventsDropped")
    hold = seconds_of(alert["for"])
    assert alert["labels"]["severity"] == "critical"
    pods = {
        "the only replica drops its first event": [ConsumerPod(0, drops=(DROP_AT,))],
        "a replica started 30 s before drops its first event, the other none": [
            ConsumerPod(0),
            ConsumerPod(DROP_AT - 30, drops=(DROP_AT,)),
        ],
        "a replica of a rolling update drops its first event right after the first scrape after its start": [
            ConsumerPod(0, stop=DROP_AT + 60),
            ConsumerPod(DROP_AT - 14, drops=(DROP_AT + 1,)),
        ],
        "a replica of a rolling update drops its first event before its first scrape": [
            ConsumerPod(0, stop=DROP_AT + 60),
            ConsumerPod(DROP_AT - 9, drops=(DROP_AT - 4,)),
        ],
        "a restarted replica drops an event before the first scrape after its restart": [
            ConsumerPod(0, restarts=(DROP_AT - 9,), drops=(DROP_AT - 4,)),
        ],
    }[scenario]
    at = max(drop for pod in pods for drop in pod.drops)
    expected = (
        silent_between(0, at)
        | firing_between(fires_by(at, hold), at + DROPPED_WINDOW - SCRAPE_INTERVAL)
        | silent_between(at + DROPPED_WINDOW + SCRAPE_INTERVAL + EVALUATION_INTERVAL, DROPPED_FOR)
    )
    assert_promtool_passes(alert, "notifications", [dropped_scenario(scenario, pods, tmp_path, expected)], tmp_path)


def test_events_dropped_stays_silent_while_none_is_dropped_through_a_rolling_update(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    alert = alert_named(rendered, "notifications", "ShopmeshEventsDropped")
    pods = [ConsumerPod(0, stop=1200), ConsumerPod(1190), ConsumerPod(1195)]
    scenario = dropped_scenario("no drop, pods replaced", pods, tmp_path, silent_between(0, DROPPED_FOR))
    assert_promtool_passes(alert, "notifications", [scenario], tmp_path)


EMAILS_FOR = 3600
RELAY_DOWN_AT = 300
RELAY_BACK_AT = 2700
# At most SEND_MAX_BACKOFF_SECONDS (its default) between two attempts at one e-mail while the relay is down.
RETRY_CAP = 600


def email_attempts_scenario(
    name: str,
    sent: Callable[[int], int],
    retried: Callable[[int], int],
    expected: Expected,
    failed: Callable[[int], int] = lambda t: 0,
) -> Scenario:
    """One notifications pod's real NotificationMetrics: sent(t) e-mails sent, retried(t) attempts failing
    (retried later) and failed(t) e-mails given up at second t."""
    registry = CollectorRegistry()
    metrics = NotificationMetrics(registry)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    pending = Notification(
        "ntf_1",
        "usr_1",
        "ord_1",
        Channel.EMAIL,
        "a@example.com",
        "Hi",
        "",
        "<e@x>",
        EventKind.ORDER_CONFIRMED,
        "evt",
        at,
    )
    delivered = pending.sent(at)
    given_up = replace(pending, state=State.FAILED, failure_reason="could not be delivered")

    def world(t: float) -> None:
        for _ in range(sent(int(t))):
            metrics.attempted(delivered)
        for _ in range(retried(int(t))):
            metrics.attempted(pending)
        for _ in range(failed(int(t))):
            metrics.attempted(given_up)

    def scrape() -> list[Sample]:
        return [
            s._replace(labels={**s.labels, "pod": "notifications-0"}) for f in registry.collect() for s in f.samples
        ]

    return Scenario(name, world, scrape, EMAILS_FOR, expected)


def relay_down(t: int) -> bool:
    return RELAY_DOWN_AT <= t < RELAY_BACK_AT


def sent_while_up(t: int) -> int:
    """An e-mail every 20 s while the relay is up (two waiting for it go out at once when it is back)."""
    return 2 if t == RELAY_BACK_AT else int(not relay_down(t) and t % 20 == 0)


def retried_while_down(t: int) -> int:
    """Two e-mails caught by the outage, their waits doubling from 1 s to the cap, then one every RETRY_CAP."""
    if not relay_down(t):
        return 0
    since = t - RELAY_DOWN_AT
    doubling = {2**n - 1 for n in range(10)}
    return 2 * int(since in doubling or (since > 511 and (since - 511) % RETRY_CAP == 0))


def test_emails_not_going_out_fires_while_the_relay_is_down_long_before_any_is_given_up(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """The relay down from 300 s to 2700 s: the e-mails caught are retried, none is sent. Silent while the
    e-mails sent before the outage are in the 15-minute window, firing once the condition has held for the
    rule's `for` (long before SEND_GIVE_UP_AFTER_SECONDS, a day), silent again once e-mails go out."""
    alert = alert_named(rendered, "notifications", "ShopmeshEmailsNotGoingOut")
    hold, window = seconds_of(alert["for"]), 900
    expected = (
        silent_between(0, RELAY_DOWN_AT + window)
        | firing_between(fires_by(RELAY_DOWN_AT + window + SCRAPE_INTERVAL, hold), RELAY_BACK_AT)
        | silent_between(RELAY_BACK_AT + SCRAPE_INTERVAL + EVALUATION_INTERVAL, EMAILS_FOR)
    )
    scenario = email_attempts_scenario("the relay down for 40 minutes", sent_while_up, retried_while_down, expected)
    assert_promtool_passes(alert, "notifications", [scenario], tmp_path)


@pytest.mark.parametrize(
    ("name", "sent", "retried"),
    [
        ("e-mails sent, nothing retried", lambda t: int(t % 20 == 0), lambda t: 0),
        # A recipient's server greylisting one e-mail (4xx, retried) while the others go out.
        ("e-mails sent, one retried all along", lambda t: int(t % 20 == 0), lambda t: int(t % 300 == 0)),
        ("nothing to send", lambda t: 0, lambda t: 0),
    ],
)
def test_emails_not_going_out_stays_silent_while_emails_are_sent_or_none_wait(
    rendered: dict[tuple[str, str], Docs],
    tmp_path: Path,
    name: str,
    sent: Callable[[int], int],
    retried: Callable[[int], int],
) -> None:
    alert = alert_named(rendered, "notifications", "ShopmeshEmailsNotGoingOut")
    scenario = email_attempts_scenario(name, sent, retried, silent_between(0, EMAILS_FOR))
    assert_promtool_passes(alert, "notifications", [scenario], tmp_path)


WATCH_LABELS = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
WATCHES_FOR = 2400


def watches_scenario(name: str, held: int, shed_every: int, expected: Expected) -> Scenario:
    """One catalog pod's real ServerMetrics, counted as the chassis' interceptor counts Watches: `held` admitted
    from its start (started, handled when they end), one of them cancelled by its client and another opened each
    minute (a client-side health checker's subchannel going), and from 600 s one more shed every `shed_every`
    seconds (started, handled RESOURCE_EXHAUSTED, shed): the server at its streams' share."""
    server = ServerMetrics()
    metrics = server.for_method("/grpc.health.v1.Health/Watch", "server_stream")

    def world(t: float) -> None:
        if t == 0:
            metrics.started.inc(held)
        elif t % 60 == 0:
            metrics.handled(grpc.StatusCode.CANCELLED).inc()
            metrics.started.inc()
        if t >= 600 and t % shed_every == 0:
            metrics.started.inc()
            metrics.handled(grpc.StatusCode.RESOURCE_EXHAUSTED).inc()
            metrics.shed.inc()

    def scrape() -> list[Sample]:
        return [
            s._replace(labels={**s.labels, "pod": "catalog-0"}) for f in server.registry.collect() for s in f.samples
        ]

    return Scenario(name, world, scrape, WATCHES_FOR, expected, WATCH_LABELS)


def test_server_errors_pages_for_shed_watches_only_when_they_are_a_real_share_of_those_served(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A Watch is handled when it ends, hours after it started, and a shed one at once: over the streams that ended
    alone, a shed Watch now and then among a hundred held was all of the method's calls, a ratio of 1 and a page.
    The streams held count as served: one shed every 2 minutes among 100 held pages nobody; one every 10 s among 10
    does (the replica refuses most of its watchers). Clients cancelling their Watches never count."""
    alert = alert_named(rendered, "catalog", "ShopmeshServerErrors")
    hold = seconds_of(alert["for"])
    scenarios = [
        watches_scenario("one shed every 2 minutes among 100 held", 100, 120, silent_between(0, WATCHES_FOR)),
        watches_scenario(
            "one shed every 10 s among 10 held",
            10,
            10,
            silent_between(0, 600) | firing_between(600 + hold + 120, WATCHES_FOR),
        ),
    ]
    assert_promtool_passes(alert, "catalog", scenarios, tmp_path)


PASSWORD_STRENGTH_FOR = 3600


def password_strength_scenario(
    name: str, failures: Callable[[int], list[EstimateFailure]], expected: Expected
) -> Scenario:
    """One users pod's real UsersMetrics, its estimates failing at second t for the causes failures(t) lists."""
    registry = CollectorRegistry()
    metrics = UsersMetrics(registry)

    def world(t: float) -> None:
        for cause in failures(int(t)):
            metrics.estimate_failed(cause)

    def scrape() -> list[Sample]:
        return [s._replace(labels={**s.labels, "pod": "users-0"}) for f in registry.collect() for s in f.samples]

    return Scenario(name, world, scrape, PASSWORD_STRENGTH_FOR, expected)


def test_password_strength_failing_stays_silent_for_slow_warm_ups_and_stopping_pods(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A warm-up that outlasted its bound only makes the first Register wait, and an estimate asked while the pod
    stops is answered UNAVAILABLE for another replica to take: neither is a Register that cannot succeed."""
    alert = alert_named(rendered, "users", "ShopmeshPasswordStrengthFailing")
    slow_and_stopping: Callable[[int], list[EstimateFailure]] = lambda t: (  # noqa: E731
        ["timeout"] if t == 30 else ["stopped"] * 3 if t == 1800 else []
    )
    scenario = password_strength_scenario(
        "a slow warm-up, then a pod stopping", slow_and_stopping, silent_between(0, PASSWORD_STRENGTH_FOR)
    )
    assert_promtool_passes(alert, "users", [scenario], tmp_path)


def test_one_password_that_the_estimate_raises_on_pages_nobody(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """An estimate that raises (`error`) fails its Register on that password alone, in a process that works, and
    any client can send the password: one is no page, nor a ticket. Four within 10 minutes are a ticket (a
    warning), still no page: only a broken process, which fails every Register, pages."""
    failing = alert_named(rendered, "users", "ShopmeshPasswordStrengthFailing")
    raising = alert_named(rendered, "users", "ShopmeshPasswordStrengthErrors")
    assert (failing["labels"]["severity"], raising["labels"]["severity"]) == ("critical", "warning")
    once: Callable[[int], list[EstimateFailure]] = lambda t: ["error"] if t == 600 else []  # noqa: E731
    four: Callable[[int], list[EstimateFailure]] = lambda t: ["error"] if t in (600, 630, 660, 690) else []  # noqa: E731
    quiet = silent_between(0, PASSWORD_STRENGTH_FOR)
    assert_promtool_passes(failing, "users", [password_strength_scenario("one error", once, quiet)], tmp_path)
    assert_promtool_passes(failing, "users", [password_strength_scenario("four errors", four, quiet)], tmp_path)
    assert_promtool_passes(raising, "users", [password_strength_scenario("one error", once, quiet)], tmp_path)
    # Firing while its 10-minute window holds the four, with a scrape's margin at each end.
    ticket = silent_between(0, 600) | firing_between(750, 1170) | silent_between(1320, PASSWORD_STRENGTH_FOR)
    assert_promtool_passes(raising, "users", [password_strength_scenario("four errors", four, ticket)], tmp_path)


def test_password_strength_errors_warn_at_three_in_ten_minutes_and_never_at_two(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """The edge of "more than 2", pinned: 3 errors within 10 minutes warn, for as long as the window holds them,
    and 2 never do. Each count lands between two scrapes, so the window holds all of it or none, and promtool
    evaluates on the scrapes' instants: the rise reads exactly 2 or 3. Prometheus evaluates between scrapes, where
    increase() extrapolates a rise to the window's ends (up to 600/585 at a 15 s scrape, once the counter is off
    0: hence the earlier error), 2 read as 2.05: the threshold is 2.5, which neither reading crosses wrongly."""
    raising = alert_named(rendered, "users", "ShopmeshPasswordStrengthErrors")

    def errors_at_1200(count: int) -> Callable[[int], list[EstimateFailure]]:
        # One at second 30 first, long out of the window by 1200: the counter is no longer at 0 there.
        return lambda t: ["error"] if t == 30 else ["error"] * count if t == 1200 else []

    quiet = silent_between(0, PASSWORD_STRENGTH_FOR)
    assert_promtool_passes(
        raising, "users", [password_strength_scenario("two errors", errors_at_1200(2), quiet)], tmp_path
    )
    ticket = silent_between(0, 1200) | firing_between(1230, 1770) | silent_between(1860, PASSWORD_STRENGTH_FOR)
    assert_promtool_passes(
        raising, "users", [password_strength_scenario("three errors", errors_at_1200(3), ticket)], tmp_path
    )


def started_at(start: int, scenario: Scenario) -> Scenario:
    """`scenario` with its pod started at second `start`: scraped from then on, its metrics at 0 until then."""
    now = [0.0]

    def world(t: float) -> None:
        now[0] = t
        scenario.world(t)

    def scrape() -> list[Sample]:
        return scenario.scrape() if now[0] >= start else []

    return replace(scenario, world=world, scrape=scrape)


# The alerts that fire at the first event a counter counts, and their rules' increase() windows.
FIRST_EVENT_ALERTS = {
    ("notifications", "ShopmeshEventsDropped"): DROPPED_WINDOW,
    ("notifications", "ShopmeshEventsLost"): DROPPED_WINDOW,
    ("orders", "ShopmeshLateCapturesRefunded"): LATE_CAPTURES_WINDOW,
    ("orders", "ShopmeshPaymentRequestsRejected"): REJECTED_WINDOW,
    ("notifications", "ShopmeshEmailsFailed"): 900,
    ("users", "ShopmeshPasswordStrengthFailing"): 900,
}
FIRST_EVENT_FOR = 3600


@pytest.mark.parametrize(("service", "name"), list(FIRST_EVENT_ALERTS))
def test_an_alert_on_the_first_event_fires_for_one_counted_before_a_new_pods_first_scrape(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, service: str, name: str
) -> None:
    """A pod's counter is exported at 0 from its start, but an event counted before the pod's first scrape makes
    the series' first sample 1 already: increase() reads a rise between two samples, sees none, and the alert
    stayed silent. It must fire for that one as for one counted later, and resolve after its window."""
    alert = alert_named(rendered, service, name)
    window, hold = FIRST_EVENT_ALERTS[service, name], seconds_of(alert["for"])
    # Started between two scrapes, counting one 6 s later: the first scrape of it, at 615 s, reads 1.
    start, at = 601, 607
    assert (start // SCRAPE_INTERVAL + 1) * SCRAPE_INTERVAL > at, "the event is after the first scrape"
    expected = (
        silent_between(0, at)
        | firing_between(fires_by(at, hold), at + window - SCRAPE_INTERVAL)
        | silent_between(at + window + SCRAPE_INTERVAL + EVALUATION_INTERVAL, FIRST_EVENT_FOR)
    )
    once: Callable[[int], int] = lambda t: int(t == at)  # noqa: E731
    title = f"a pod started at {start} s counts one at {at} s"
    scenario = {
        "ShopmeshEventsDropped": lambda: dropped_scenario(title, [ConsumerPod(start, drops=(at,))], tmp_path, expected),
        "ShopmeshEventsLost": lambda: dropped_scenario(
            title,
            [ConsumerPod(start, drops=(at,))],
            tmp_path,
            expected,
            count=lambda events: events.lost.labels("ORDERS", CONSUMER).inc(),
        ),
        "ShopmeshLateCapturesRefunded": lambda: started_at(start, late_captures_scenario(title, once, expected)),
        "ShopmeshPaymentRequestsRejected": lambda: started_at(
            start, cancellations_scenario(title, CancelCode.PAYMENT_REQUEST_REJECTED, once, expected)
        ),
        "ShopmeshEmailsFailed": lambda: started_at(
            start, email_attempts_scenario(title, lambda t: 0, lambda t: 0, expected, failed=once)
        ),
        # The warm-up's estimate, its process dead at its start and at the retry's.
        "ShopmeshPasswordStrengthFailing": lambda: started_at(
            start, password_strength_scenario(title, lambda t: ["broken"] * once(t), expected)
        ),
    }[name]()
    assert scenario.until == FIRST_EVENT_FOR
    assert_promtool_passes(alert, service, [scenario], tmp_path)


@dataclass(frozen=True)
class EdgeFlow:
    """`per_second` requests arrive each second, and each ends `seconds` later as `outcome` says: "200" or "503"
    answered; "cut" at the edge's bound (a gRPC call's DEADLINE_EXCEEDED, HTTP 200); "504 cut" at the bound too,
    an HTTP/JSON or gRPC-Web call's 504 (in rq_max_duration_reached and the 5xx alike); "reset" before any
    answer, for any reason (in rq_total and rq_rx_reset, never in rq_completed)."""

    per_second: int
    seconds: int
    outcome: str


@dataclass
class EdgeEnvoy:
    """The http-api Envoy's downstream request counters, as its /stats/prometheus exports them for one pod,
    for these flows of requests at once. What a real Envoy counts so, each way, is docs/operations.md's
    (ShopmeshHttpApiErrors)."""

    flows: tuple[EdgeFlow, ...]
    counts: dict[str, float] = field(default_factory=dict)
    ending: dict[tuple[int, str], int] = field(default_factory=dict)

    def world(self, t: float) -> None:
        second = int(t)
        for flow in self.flows:
            self.add("rq_total", flow.per_second)
            end = (second + flow.seconds, flow.outcome)
            self.ending[end] = self.ending.get(end, 0) + flow.per_second
        for outcome in {flow.outcome for flow in self.flows}:
            self.end(outcome, self.ending.pop((second, outcome), 0))

    def end(self, outcome: str, ended: int) -> None:
        if outcome == "reset":
            self.add("rq_rx_reset", ended)
            return
        self.add("rq_completed", ended)
        self.add("rq_xx_5" if outcome in {"503", "504 cut"} else "rq_xx_2", ended)
        self.add("rq_max_duration_reached", ended * outcome.endswith("cut"))

    def add(self, name: str, amount: int) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + amount

    def scrape(self) -> list[Sample]:
        edge = {"envoy_http_conn_manager_prefix": "http_api", "pod": "gateway-0"}
        samples = [
            Sample(f"envoy_http_downstream_{name}", edge, self.counts.get(name, 0.0))
            for name in ("rq_total", "rq_completed", "rq_rx_reset", "rq_max_duration_reached")
        ]
        return samples + [
            Sample(
                "envoy_http_downstream_rq_xx",
                {**edge, "envoy_response_code_class": code_class},
                self.counts.get(f"rq_xx_{code_class}", 0.0),
            )
            for code_class in "12345"
        ]


def test_http_api_errors_fires_for_a_hung_gateway_and_not_for_slow_answers_nor_resets(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """A gateway that answers nothing (SIGSTOPped, its loop blocked) counts nothing itself and the edge answers
    no 5xx for gRPC: its calls end at the edge's bound as HTTP 200 DEADLINE_EXCEEDED, an HTTP/JSON one as a 504
    also counted as cut. Either fires the alert, as a gateway answering 503 does. Calls answered in 25 s
    (checkout's longest path, under the bound) fail nothing: the requests in flight meanwhile (in rq_total, not
    yet in rq_completed) were not abandoned. Nor do reset streams beside answers that are all fine: rq_rx_reset
    counts a client's malformed HTTP/2 and the overload manager's resets as much as a client giving up, and a
    client's mistake is no page."""
    alert = alert_named(rendered, "gateway", "ShopmeshHttpApiErrors")
    hold, until = seconds_of(alert["for"]), 20 * 60

    def scenario(name: str, flows: list[EdgeFlow], expected: Expected) -> Scenario:
        envoy = EdgeEnvoy(tuple(flows))
        return Scenario(name, envoy.world, envoy.scrape, until, expected)

    failing = silent_between(0, hold) | firing_between(fires_by(0, hold) + 30, until)
    scenarios = [
        scenario("every call answered 503", [EdgeFlow(10, 0, "503")], failing),
        scenario("every gRPC call cut at the edge's 30 s bound", [EdgeFlow(10, 30, "cut")], failing),
        scenario("every HTTP/JSON call cut at the edge's 30 s bound", [EdgeFlow(10, 30, "504 cut")], failing),
        scenario("every call answered in 25 s", [EdgeFlow(10, 25, "200")], silent_between(0, until)),
        scenario(
            "as many streams reset as answered, every answer fine",
            [EdgeFlow(10, 0, "200"), EdgeFlow(10, 1, "reset")],
            silent_between(0, until),
        ),
    ]
    assert_promtool_passes(alert, "gateway", scenarios, tmp_path)
