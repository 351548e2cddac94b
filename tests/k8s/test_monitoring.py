"""With values-monitoring.yaml every service gets a ServiceMonitor on its metrics port and the alerts its role
calls for, and the umbrella ships the Grafana dashboard; the objects are valid Prometheus Operator
resources, and every alert's and panel's PromQL parses, selects the right series and names only metrics
the services really export. Without it, none of them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from shopmesh_chassis.breaker import CircuitBreaker
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_notifications.metrics import NotificationMetrics
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_platform.topology import SERVICES, is_edge

from .k8skit import ROOT, Docs, dashboards, envoy_metric_names, find, objects_of, render, validate_custom_resources
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
OWN_ALERTS = {"notifications": {"ShopmeshEmailsFailed"}, "orders": {"ShopmeshCheckoutsCancelledByOutages"}}
# Series Prometheus itself adds for every target.
SYNTHETIC = {"up"}
EQUAL = promql_parser.MatchOp.Equal
RE = promql_parser.MatchOp.Re


def expected_alerts(name: str) -> set[str]:
    service = SERVICES[name]
    alerts = {"ShopmeshServiceDown", "ShopmeshServerErrors", "ShopmeshSlowCalls"}
    if service.publishes:
        alerts.add("ShopmeshOutboxStuck")
    if service.consumes:
        alerts |= {"ShopmeshDeadLetters", "ShopmeshConsumerBacklog"}
    if service.calls:
        alerts.add("ShopmeshCircuitOpen")
    if is_edge(name):
        alerts.add("ShopmeshHttpApiErrors")
    return alerts | OWN_ALERTS.get(name, set())


def exported_metric_names() -> set[str]:
    """What the scraped endpoints can show: the services', from the real metric objects (chassis and
    service-specific), and the edge's Envoy's, scraped from a real Envoy running its rendered configuration."""
    metrics = ServerMetrics(CollectorRegistry())
    metrics.events  # noqa: B018 - made on first use, as services that publish or consume do
    metrics.watch_breakers("dependency", {"/shopmesh.x.v1.XService/Get": CircuitBreaker()})
    OrderMetrics(metrics.registry)
    NotificationMetrics(metrics.registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    family: Metric
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names | envoy_metric_names()


def alerts_of(docs: Docs, name: str) -> list[dict[str, Any]]:
    rule = find(docs, "PrometheusRule", name)
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


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
    exported = exported_metric_names() | SYNTHETIC
    problems = []
    for name in SERVICES:
        for alert in alerts_of(rendered[MONITORING, name], name):
            try:
                found = selectors(alert["expr"])
            except ValueError as exc:
                problems.append(f"{name} {alert['alert']}: not PromQL: {exc}")
                continue
            assert found, alert["expr"]
            for selector in found:
                if selector.name not in exported:
                    problems.append(f"{name} {alert['alert']}: no service exports {selector.name}")
                wanted = {("job", str(EQUAL), name), ("namespace", str(EQUAL), render.NAMESPACE)}
                if not wanted <= matchers_of(selector):
                    problems.append(f"{name} {alert['alert']}: {selector.name} is not limited to {name}'s series")
    assert not problems, "\n".join(problems)


def test_the_checks_see_a_misspelled_metric_and_a_missing_selector() -> None:
    [selector] = selectors('max(shopmesh_outbox_oldest_unpublished_age{job="orders"}) > 60')
    assert selector.name not in exported_metric_names()
    assert {m.name for m in selector.matchers.matchers} == {"job"}
    with pytest.raises(ValueError, match="parenthes"):
        promql_parser.parse("sum(rate(up[5m])")


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


def test_every_dashboard_query_names_exported_metrics_of_the_chosen_services() -> None:
    exported = exported_metric_names()
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


# Prometheus' side of an alert's `for:` (kube-prometheus-stack's defaults): the rule is evaluated every 30 s
# on the newest sample of each series, scraped every 15 s (values-monitoring.yaml).
SCRAPE_INTERVAL = 15.0
EVALUATION_INTERVAL = 30.0


def seconds_of(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def test_circuit_open_fires_while_a_dependency_stays_down(rendered: dict[tuple[str, str], Docs]) -> None:
    """A dependency down for good (every call to it fails UNAVAILABLE at once) under a trickle of calls to
    one method, one every 20 s (a quiet hour): the breaker in front of it opens and keeps failing calls the
    whole time, so ShopmeshCircuitOpen ("has been open for 5 minutes", docs/operations.md) must fire. But
    the breaker's `open` state lasts only its reset timeout (5 s); then it reads `half_open` until the next
    call's probe fails and opens it again. The series the rule selects (state="open") is 0 at most scrapes,
    every evaluation that sees a 0 resets the rule's `for: 5m`, and the alert never fires, whatever the
    phase of the calls against the scrapes."""
    [alert] = [a for a in alerts_of(rendered[MONITORING, "gateway"], "gateway") if a["alert"] == "ShopmeshCircuitOpen"]
    [selector] = selectors(alert["expr"])
    state_matchers = [(m.op, m.value) for m in selector.matchers.matchers if m.name == "state"]
    assert state_matchers, alert["expr"]
    hold = seconds_of(alert["for"])

    def selected(state: str) -> bool:
        ops: dict[str, Callable[[str], bool]] = {
            str(EQUAL): lambda value: state == value,
            str(promql_parser.MatchOp.NotEqual): lambda value: state != value,
            str(RE): lambda value: re.fullmatch(value, state) is not None,
            str(promql_parser.MatchOp.NotRe): lambda value: re.fullmatch(value, state) is None,
        }
        return all(ops[str(op)](value) for op, value in state_matchers)

    def fires(call_every: float, phase: float, outage: float = 20 * 60.0) -> bool:
        now = [0.0]
        breaker = CircuitBreaker(clock=lambda: now[0])
        metrics = ServerMetrics(CollectorRegistry())
        metrics.watch_breakers("recommendations", {"/shopmesh.x.v1.XService/Get": breaker})
        next_call, next_scrape, next_evaluation = phase, 1.0, 7.0
        latest: list[float] = []
        true_since: float | None = None
        while now[0] < outage:
            now[0] = min(next_call, next_scrape, next_evaluation)
            if now[0] == next_call:
                if breaker.allow():
                    breaker.record_failure()  # the dependency is down: UNAVAILABLE at once
                next_call += call_every
            if now[0] == next_scrape:
                # What the rule's max(...) > 0 reads: the selected series of the scrape.
                latest = [
                    sample.value
                    for family in metrics.registry.collect()
                    if family.name == "shopmesh_client_breaker_state"
                    for sample in family.samples
                    if selected(sample.labels["state"])
                ]
                next_scrape += SCRAPE_INTERVAL
            if now[0] == next_evaluation:
                if latest and max(latest) > 0:
                    true_since = now[0] if true_since is None else true_since
                    if now[0] - true_since >= hold:
                        return True
                else:
                    true_since = None
                next_evaluation += EVALUATION_INTERVAL
        assert breaker.opened > 10, "the dependency was down throughout: the breaker kept opening"
        return False

    silent = [phase for phase in range(0, 20, 2) if not fires(20.0, float(phase))]
    assert not silent, (
        f"{alert['alert']} ({alert['expr']}, for {alert['for']}) never fired in a 20-minute outage of a "
        f"dependency called every 20 s ({len(silent)} of 10 phases): `open` lasts only the breaker's reset "
        f"timeout ({CircuitBreaker().config.reset_timeout_seconds}s), then it reads half_open"
    )


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


def test_circuit_open_does_not_fire_for_a_breaker_left_idle_after_a_blip(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    """A dependency that failed for a moment (a restart: five calls UNAVAILABLE) and is back: the breaker
    opened, and after its reset timeout reads half_open until the next call probes it. A method called
    rarely (none for the next 20 minutes) leaves it so. Nothing fails fast, no probe fails, the dependency
    is up: ShopmeshCircuitOpen ("Calls ... have failed fast for 5 minutes, or the breaker's probes have kept
    failing") must stay silent. Selecting state!="closed", it fires 5 minutes after the blip, and stays
    firing until someone happens to call that method."""
    [alert] = [a for a in alerts_of(rendered[MONITORING, "gateway"], "gateway") if a["alert"] == "ShopmeshCircuitOpen"]
    [selector] = selectors(alert["expr"])
    state_matchers = [(str(m.op), m.value) for m in selector.matchers.matchers if m.name == "state"]
    ops = {
        str(EQUAL): lambda state, value: state == value,
        str(promql_parser.MatchOp.NotEqual): lambda state, value: state != value,
        str(RE): lambda state, value: re.fullmatch(value, state) is not None,
        str(promql_parser.MatchOp.NotRe): lambda state, value: re.fullmatch(value, state) is None,
    }
    hold = seconds_of(alert["for"])
    now = [0.0]
    breaker = CircuitBreaker(clock=lambda: now[0])
    metrics = ServerMetrics(CollectorRegistry())
    metrics.watch_breakers("users", {"/shopmesh.users.v1.UsersService/Register": breaker})
    for _ in range(breaker.config.failure_threshold):  # the blip
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.opened == 1
    true_since: float | None = None
    fired_at: float | None = None
    evaluation = 7.0
    while evaluation < 20 * 60.0 and fired_at is None:
        now[0] = evaluation
        values = [
            sample.value
            for family in metrics.registry.collect()
            if family.name == "shopmesh_client_breaker_state"
            for sample in family.samples
            if all(ops[op](sample.labels["state"], value) for op, value in state_matchers)
        ]
        if values and max(values) > 0:
            true_since = evaluation if true_since is None else true_since
            if evaluation - true_since >= hold:
                fired_at = evaluation
        else:
            true_since = None
        evaluation += EVALUATION_INTERVAL
    assert fired_at is None, (
        f"{alert['alert']} ({alert['expr']}) fired {fired_at:.0f} s after a blip of 5 failed calls, though no "
        f"call failed since: the idle breaker reads {breaker.observed_state().value} until a call probes it"
    )
