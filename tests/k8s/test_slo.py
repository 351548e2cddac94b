"""The SLOs of the gateway's public API (helm/gateway/values.yaml `slo:`): recording rules of each SLO's error
ratio and the Google SRE workbook's multiwindow, multi-burn-rate alerts on its 30-day error budget
(ShopmeshErrorBudgetBurnFast pages, ShopmeshErrorBudgetBurnSlow files a ticket). Prometheus' promtool runs
the rendered rules over days of simulated traffic, in the series the real metric objects export, and checks
when each alert fires and when it stays silent; the chart refuses a latency threshold the histogram cannot
count."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from shopmesh.gateway.v1 import shop_pb2
from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.metrics import LATENCY_BUCKETS, ServerMetrics
from shopmesh_chassis.server_interceptor import _SERVER_ERRORS
from shopmesh_gateway.guard import hashes_a_password
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.transport import ShopServicer
from shopmesh_platform.http_api.routes import ROUTE_TIMEOUT
from shopmesh_platform.topology import SERVICES

from .k8skit import Docs, dashboards, find, objects_of, render
from .test_monitoring import (
    EQUAL,
    MONITORING,
    RE,
    alerts_of,
    matchers_of,
    promtool_test_rules,
    records_of,
    rule_groups,
    selectors,
)

SERVICE = "gateway"
API = "/shopmesh.gateway.v1.ShopService/GetProduct"
NOT_RE = promql_parser.MatchOp.NotRe
# A sign-in: argon2 makes it slow by design (docs/auth.md), and the latency SLO leaves it out.
LOGIN = "/shopmesh.gateway.v1.ShopService/Login"
# The kubelet's probes: calls to the gateway, but not to its API.
HEALTH = "/grpc.health.v1.Health/Check"
FAST_SECONDS = 0.01  # a call answered well within the latency threshold
SLOW_SECONDS = 1.0  # one answered past it
FAST, SLOW = "ShopmeshErrorBudgetBurnFast", "ShopmeshErrorBudgetBurnSlow"
# The recorded error ratio of each SLO over each window (helm/shopmesh-lib/templates/_monitoring.tpl).
RATIO = "job:shopmesh_slo_errors:ratio_rate"
# The chassis' count of the calls it shed (or relayed a dependency's shedding of), by method.
SHED = "shopmesh_grpc_server_shed_total"
# Coarser than kube-prometheus-stack's 15 s scrapes and 30 s evaluations (tests/k8s/test_monitoring.py): the
# burn-rate windows are 5 minutes to 3 days, and promtool evaluates every rule at every step of days of
# history, which at 30 s takes minutes. A minute still puts 5 samples in the shortest window.
SCRAPE_INTERVAL = 60
EVALUATION_INTERVAL = 60
MINUTE, HOUR, DAY = 60, 3600, 86400
# A burn is judged against healthy history before it, up to the longest window (3 days). Only the long windows
# look back that far, and promtool reads them at every evaluation: the history is scraped every 15 minutes up
# to its last 6 hours (the 6-hour windows see every minute; the 5-minute and 30-minute ones see nothing
# before, where no check looks).
SPARSE_INTERVAL = 15 * MINUTE
DENSE = 6 * HOUR


@dataclass(frozen=True)
class Traffic:
    """`seconds` of calls to the API, `calls` a second, of which the shares `failing` end with those status
    codes, the share `shed` of them shed (RESOURCE_EXHAUSTED SERVER_OVERLOADED: within `failing`'s
    RESOURCE_EXHAUSTED, as the chassis counts a shed call in both) and the share `slow` is answered past the
    latency threshold; beside them `logins` Logins a second, all OK and slow (argon2), and health checks,
    every second, all OK."""

    seconds: int
    calls: float = 100.0
    failing: Mapping[str, float] = field(default_factory=dict)
    shed: float = 0.0
    slow: float = 0.0
    logins: float = 0.0

    def __post_init__(self) -> None:
        assert self.shed <= self.failing.get("RESOURCE_EXHAUSTED", 0.0), "a shed call is a RESOURCE_EXHAUSTED"


# An alert's state at an evaluation: the (slo, window) of each of its firing series.
Firing = frozenset[tuple[str, str]]
NONE: Firing = frozenset()


@dataclass
class Scenario:
    name: str
    traffic: list[Traffic]
    # alert -> evaluation second -> what fires then (evaluations absent: not checked).
    expected: dict[str, dict[int, Firing]]
    # Scraped every SCRAPE_INTERVAL from this second on, every SPARSE_INTERVAL before (see HISTORY).
    dense_from: int = 0
    # (evaluation second, PromQL, the (slo, window, value) of each series it must give then, named RATIO or,
    # when `named` is false, as arithmetic leaves them: unnamed; "" for a window: no such label).
    queries: list[tuple[int, str, list[tuple[str, str, float]]]] = field(default_factory=list)
    named: bool = True

    @property
    def until(self) -> int:
        return sum(t.seconds for t in self.traffic)


def between(start: float, end: float, firing: Firing = NONE) -> dict[int, Firing]:
    """Every evaluation in [start, end), firing `firing`."""
    first = -(-int(start) // EVALUATION_INTERVAL) * EVALUATION_INTERVAL
    return dict.fromkeys(range(first, int(end), EVALUATION_INTERVAL), firing)


def exported_labels() -> dict[tuple[str, str, str], dict[str, str]]:
    """(sample name, method, code or le) -> the labels the real ServerMetrics exports it with, for a call of
    each kind to the API and a health check."""
    metrics = ServerMetrics(CollectorRegistry())
    for method in (API, LOGIN, HEALTH):
        for code in grpc.StatusCode:
            metrics.for_method(method).handled(code).inc()
        metrics.for_method(method).handling.observe(FAST_SECONDS)
        metrics.for_method(method).shed.inc()
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            method = f"/{sample.labels.get('grpc_service')}/{sample.labels.get('grpc_method')}"
            key = sample.labels.get("grpc_code") or sample.labels.get("le") or ""
            found[sample.name, method, key] = dict(sample.labels)
    return found


# Each bucket bound as the chassis exports it in `le` (1.0, not 1).
BUCKET_TEXT = {bound: floatToGoString(bound) for bound in [*LATENCY_BUCKETS, float("inf")]}


# Series a method has from its first call on, at 0 until counted (a status code's appears at its first).
AT_ZERO = {SHED}


def counted(traffic: list[Traffic], until: int) -> dict[tuple[str, str, str], float]:
    """(sample name, method, code or le) -> what the gateway has counted by second `until`."""
    counts: dict[tuple[str, str, str], float] = {}

    def add(key: tuple[str, str, str], amount: float) -> None:
        counts[key] = counts.get(key, 0.0) + amount

    start = 0
    for phase in traffic:
        seconds = max(0, min(until, start + phase.seconds) - start)
        start += phase.seconds
        if not seconds:
            continue
        calls = phase.calls * seconds
        failed = {code: calls * share for code, share in phase.failing.items()}
        slow = calls * phase.slow
        for code, amount in {"OK": calls - sum(failed.values()), **failed}.items():
            add(("grpc_server_handled_total", API, code), amount)
        add(("grpc_server_handling_seconds_count", API, ""), calls)
        if calls:
            add((SHED, API, ""), calls * phase.shed)
        if phase.logins:
            logins = phase.logins * seconds
            add(("grpc_server_handled_total", LOGIN, "OK"), logins)
            add(("grpc_server_handling_seconds_count", LOGIN, ""), logins)
            add((SHED, LOGIN, ""), 0.0)
            for bound in [*LATENCY_BUCKETS, float("inf")]:
                add(
                    ("grpc_server_handling_seconds_bucket", LOGIN, BUCKET_TEXT[bound]), logins * (bound >= SLOW_SECONDS)
                )
        add(("grpc_server_handled_total", HEALTH, "OK"), seconds)
        add((SHED, HEALTH, ""), 0.0)
        add(("grpc_server_handling_seconds_count", HEALTH, ""), seconds)
        for bound in [*LATENCY_BUCKETS, float("inf")]:
            le = BUCKET_TEXT[bound]
            add(("grpc_server_handling_seconds_bucket", API, le), (calls - slow) * (bound >= FAST_SECONDS))
            add(("grpc_server_handling_seconds_bucket", API, le), slow * (bound >= SLOW_SECONDS))
            add(("grpc_server_handling_seconds_bucket", HEALTH, le), seconds * (bound >= FAST_SECONDS))
    return {key: value for key, value in counts.items() if value or key[0] in AT_ZERO}


def scrapes(scenario: Scenario) -> dict[str, str]:
    """Each series the rules select at every scrape, in promtool's notation, labelled as the real ServerMetrics
    exports it (and as a scrape adds `job` and `namespace`); `_` before the series exists (prometheus-client
    makes a status code's series at its first call) and between the sparse scrapes of the history."""
    labels = exported_labels()
    steps = range(0, scenario.until + 1, SCRAPE_INTERVAL)
    values: dict[tuple[str, str, str], list[float | None]] = {}
    for index, second in enumerate(steps):
        if second < scenario.dense_from and second % SPARSE_INTERVAL:
            continue
        for key, value in counted(scenario.traffic, second).items():
            values.setdefault(key, [None] * len(steps))[index] = value
    result = {}
    for key, found in values.items():
        every = {"job": SERVICE, "namespace": render.NAMESPACE, **labels[key]}
        series = key[0] + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(every.items())) + "}"
        result[series] = compressed(found)
    # The gateway's target, scraped from the scenario's first second (Prometheus' history starts there).
    up = [None if second < scenario.dense_from and second % SPARSE_INTERVAL else 1.0 for second in steps]
    result[f'up{{endpoint="metrics", job="{SERVICE}", namespace="{render.NAMESPACE}"}}'] = compressed(up)
    return result


def compressed(values: list[float | None]) -> str:
    """promtool's series notation: runs of missing samples written `_xn` (n of them), runs of a constant
    increase `a+bxn` (n + 1 values)."""
    parts: list[str] = []
    index = 0
    while index < len(values):
        end = index
        first = values[index]
        if first is None:
            while end + 1 < len(values) and values[end + 1] is None:
                end += 1
            parts.append(f"_x{end - index + 1}")
        else:
            step: float | None = None
            while end + 1 < len(values):
                following, current = values[end + 1], values[end]
                if following is None or current is None or (step is not None and following - current != step):
                    break
                step = following - current
                end += 1
            parts.append(f"{first!r}+{step!r}x{end - index}" if step is not None else repr(first))
        index = end + 1
    return " ".join(parts)


def slo_group(rendered: dict[tuple[str, str], Docs]) -> dict[str, Any]:
    [group] = [g for g in rule_groups(rendered, SERVICE) if g["name"] == f"shopmesh-{SERVICE}-slo"]
    return group


def promtool_test(
    rendered: dict[tuple[str, str], Docs],
    scenarios: list[Scenario],
    tmp_path: Path,
    slos: tuple[str, ...] = ("availability", "latency"),
) -> None:
    """promtool runs the SLO group over `scenarios`: its records of `slos` only, and the alerts on them.

    A scenario about one SLO reads the other's records nowhere: evaluated at every minute of its days of
    history they would only cost time (the latency records are half the group: a 3-day fast burn took ~60 s of
    promtool's 120 s timeout with both, on a loaded machine)."""
    group = slo_group(rendered)
    # Without the alerts' annotations: promtool compares them exactly (`promtool check rules` checks them).
    rules = [
        {k: v for k, v in rule.items() if k != "annotations"}
        for rule in group["rules"]
        if "alert" in rule or rule["labels"]["slo"] in slos
    ]
    read = {selector.name for rule in rules for selector in selectors(rule["expr"])}
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    tests = []
    for scenario in scenarios:
        assert scenario.expected, "a scenario that checks nothing"
        assert all(scenario.expected.values()), f"{scenario.name}: an alert it checks at no evaluation"
        checks = []
        for name, expected in scenario.expected.items():
            for second, firing in sorted(expected.items()):
                assert second <= scenario.until, f"{scenario.name}: {name} checked at {second} s, after its end"
                exp = [
                    {
                        "exp_labels": {
                            **alerts[name]["labels"],
                            "job": SERVICE,
                            "namespace": render.NAMESPACE,
                            "slo": slo,
                            "window": window,
                        }
                    }
                    for slo, window in sorted(firing)
                ]
                checks.append({"alertname": name, "eval_time": f"{second}s", "exp_alerts": exp})
        queries = [
            {
                "expr": expr,
                "eval_time": f"{second}s",
                "exp_samples": [
                    {
                        "labels": f'{RATIO if scenario.named else ""}{{job="{SERVICE}", '
                        f'namespace="{render.NAMESPACE}", slo="{slo}"' + (f', window="{window}"}}' if window else "}"),
                        "value": value,
                    }
                    for slo, window, value in samples
                ],
            }
            for second, expr, samples in scenario.queries
        ]
        # Only the series a kept rule or the scenario's queries read: the others would be loaded for nothing.
        wanted = read | {selector.name for _, expr, _ in scenario.queries for selector in selectors(expr)}
        input_series = [{"series": s, "values": v} for s, v in scrapes(scenario).items() if s.split("{")[0] in wanted]
        tests.append(
            {
                "name": scenario.name,
                "interval": f"{SCRAPE_INTERVAL}s",
                "input_series": input_series,
                "alert_rule_test": checks,
                "promql_expr_test": queries,
            }
        )
    returncode, report = promtool_test_rules([{**group, "rules": rules}], tests, EVALUATION_INTERVAL, tmp_path)
    assert returncode == 0, "\n".join(report[:60])


def after_history(
    name: str, history: int, burn: list[Traffic], fast: dict[int, Firing], slow: dict[int, Firing]
) -> Scenario:
    """`history` seconds of healthy calls, then `burn`; `fast` and `slow` say when each alert fires, in seconds
    from the burn's start, and both must be silent through the history's dense end."""
    start = history
    return Scenario(
        name,
        [Traffic(history), *burn],
        {
            FAST: between(start - DENSE, start) | {start + second: f for second, f in fast.items()},
            SLOW: between(start - DENSE, start) | {start + second: f for second, f in slow.items()},
        },
        dense_from=start - DENSE,
    )


def fires(*windows: tuple[str, str]) -> Firing:
    return frozenset(windows)


# Every call failing, as a server fails it: a dependency down, or the gateway (or a service it relays)
# shedding every call at its GRPC_MAX_CONCURRENT_RPCS, under the rate limits' code.
OUTAGES = {
    "unavailable": Traffic(20 * MINUTE, failing={"UNAVAILABLE": 1.0}),
    "shed": Traffic(20 * MINUTE, failing={"RESOURCE_EXHAUSTED": 1.0}, shed=1.0),
}


# promtool evaluates every rule at each minute of three simulated days here: 38-67 s alone on a busy machine, past the
# suite's 120 s hang guard when the machine runs other suites beside it. Still a bound, for a promtool that hangs.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("outage", list(OUTAGES))
def test_a_fast_burn_pages_within_minutes_before_any_ticket(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path, outage: str
) -> None:
    """Every call fails (UNAVAILABLE: a dependency down; or shed) after 3 healthy days. 14.4 times the budget's
    share over an hour is 1.44 % of the hour's calls: 52 s of failures, and the last 5 minutes fail too; with
    `for: 2m` the page is on within 4 minutes. The 6-hour condition (0.6 %: 130 s) pages soon after. A ticket
    needs 0.3 % of a day's calls or 0.1 % of 3 days' (259 s of failures, then its own 2 minutes): it must
    not come first."""
    scenario = after_history(
        f"every call fails ({outage}) after three healthy days",
        3 * DAY,
        [OUTAGES[outage]],
        # The 1-hour condition's page is on at 4 minutes (as docs/operations.md says), the 6-hour one's soon after.
        fast=between(0, 2 * MINUTE)
        | {4 * MINUTE: fires(("availability", "1h"))}
        | between(5 * MINUTE + 30, 20 * MINUTE, fires(("availability", "1h"), ("availability", "6h"))),
        slow=between(0, 5 * MINUTE + 30)
        | between(8 * MINUTE, 20 * MINUTE, fires(("availability", "1d"), ("availability", "3d"))),
    )
    promtool_test(rendered, [scenario], tmp_path, slos=("availability",))


def test_a_slow_burn_files_a_ticket_and_never_pages(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """0.5 % of the calls fail from some moment on (5 times the budget's share): the budget would be gone in 6
    days. Below the page's 14.4 over 1h and 6 over 6h, always; above the ticket's 3 over 1d once enough of the
    day burned: 0.5 % x e / 1 day > 0.3 % once e > 14.4 hours. After a single healthy day Prometheus holds 3
    days of nothing: the 1-over-3d condition (0.5 % x e / (1 day + e) > 0.1 % after 6 hours) waits for them.
    Checked at every evaluation: the 6-hour ratio's 0.5 % is nearest the page's 0.6 % on its plateau, from 6
    hours on, and promtool's time goes to evaluating the rules, not to checking more of its steps."""
    scenario = after_history(
        "0.5 % of the calls fail after a healthy day",
        DAY,
        [Traffic(15 * HOUR, failing={"UNAVAILABLE": 0.005})],
        fast=between(0, 15 * HOUR),
        # The 1-day ratio crosses 0.3 % minutes before 14.4 hours: rate() extrapolates over the sparse history.
        slow=between(0, 14 * HOUR + 10 * MINUTE)
        | between(14 * HOUR + 35 * MINUTE, 15 * HOUR, fires(("availability", "1d"))),
    )
    promtool_test(rendered, [scenario], tmp_path, slos=("availability",))


def test_a_blip_on_little_history_pages_nothing_and_the_same_burn_on_a_full_window_does(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """Prometheus 10 minutes old, then every call fails for 26 s: with 10 minutes of history every window's
    ratio is those minutes' (about 4 %, over each condition's threshold), and both alerts fired for a blip. A
    long window Prometheus holds less than 90 % of holds no condition. The same share of an hour's calls
    failing (156 s of an outage) once the hour is all there pages through its 1-hour condition, and through
    that one only: 6 hours, 1 and 3 days of history are not there yet."""
    blip = Scenario(
        "every call fails for 26 s, 10 minutes after Prometheus started",
        # A call in 100,000 failing before: the code's series is there when the blip comes, as it is on a
        # gateway that ever failed one (a series' first increment is not in rate()).
        [
            Traffic(10 * MINUTE, failing={"UNAVAILABLE": 0.00001}),
            Traffic(26, failing={"UNAVAILABLE": 1.0}),
            Traffic(20 * MINUTE),
        ],
        {FAST: between(0, 30 * MINUTE), SLOW: between(0, 30 * MINUTE)},
        # Over the threshold all the same: its history alone holds the 1-hour condition back.
        queries=[(12 * MINUTE, f'{RATIO}{{window="1h"}} > bool 0.0144', [("availability", "1h", 1.0)])],
        named=False,
    )
    start = HOUR + 10 * MINUTE
    outage = Scenario(
        "every call fails for 156 s, 70 minutes after Prometheus started",
        [Traffic(start), Traffic(156, failing={"UNAVAILABLE": 1.0}), Traffic(20 * MINUTE)],
        {
            FAST: between(0, start + MINUTE)
            | between(start + 5 * MINUTE, start + 7 * MINUTE, fires(("availability", "1h"))),
            SLOW: between(0, start + 20 * MINUTE),
        },
    )
    promtool_test(rendered, [blip, outage], tmp_path, slos=("availability",))


def test_a_service_at_its_objectives_fires_nothing(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """0.1 % of the calls fail and 1 % are slow, from the start: exactly the budgets, a burn rate of 1 over
    every window, which the ticket's `over 1` does not reach."""
    end = 7 * HOUR
    scenario = Scenario(
        "0.1 % failing, 1 % slow, for 7 hours",
        [Traffic(end, failing={"UNAVAILABLE": 0.001}, slow=0.01)],
        {FAST: between(0, end), SLOW: between(0, end)},
    )
    promtool_test(rendered, [scenario], tmp_path)


def test_slow_calls_burn_the_latency_budget(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """Every call answered in a second (past the 250 ms threshold), all OK, after a healthy day: the latency
    SLO's page, not the availability's. 14.4 times its 1 % budget over an hour is 14.4 % of the hour: 518 s of
    slow calls, then 2 minutes. A ticket needs 1 % of the day and the 3 days behind (873 s, then 2 minutes)."""
    scenario = after_history(
        "every call slow after a healthy day",
        DAY,
        [Traffic(16 * MINUTE, slow=1.0)],
        fast=between(0, 8 * MINUTE) | between(12 * MINUTE, 16 * MINUTE, fires(("latency", "1h"))),
        slow=between(0, 14 * MINUTE),
    )
    promtool_test(rendered, [scenario], tmp_path)


def test_slow_logins_do_not_burn_the_latency_budget_while_slow_api_calls_still_do(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """As many Logins as product calls, every one past the threshold (argon2's half second, by design), after
    a healthy day: counted, half the calls would be slow and page within minutes; left out, nothing fires while
    the product calls stay fast, and once they turn slow the page comes as it does without Logins
    (test_slow_calls_burn_the_latency_budget)."""
    start = DAY
    burn = 16 * MINUTE
    calls = 'sum by (job, namespace, slo) (job:shopmesh_slo_calls:rate5m{slo="latency"})'
    scenario = Scenario(
        "slow Logins beside fast product calls, then slow product calls, after a healthy day",
        [Traffic(DAY), Traffic(burn, logins=100.0), Traffic(burn, slow=1.0, logins=100.0)],
        {
            FAST: between(start - DENSE, start + burn + 8 * MINUTE)
            | between(start + burn + 12 * MINUTE, start + 2 * burn, fires(("latency", "1h"))),
            SLOW: between(start - DENSE, start + burn + 14 * MINUTE),
        },
        dense_from=start - DENSE,
        # The latency SLO's calls are the product calls alone (the availability SLO's selector, which counts
        # every method, is test_the_latency_slo_leaves_out_exactly_the_methods_that_hash_a_password's).
        queries=[(start + burn, calls, [("latency", "", 100.0)])],
        named=False,
    )
    promtool_test(rendered, [scenario], tmp_path, slos=("latency",))


def password_hashing_methods() -> set[str]:
    """The gateway's `@hashes_password` methods (the guard's marker), which the latency rules leave out."""
    service = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    hashing = {method.name for method in service.methods if hashes_a_password(getattr(ShopServicer, method.name))}
    assert hashing, "no method hashes a password: the guard's marker is lost"
    return hashing


def excluded_methods(expr: str) -> set[str]:
    """The methods a rule's expression leaves out (`grpc_method!~"A|B"`)."""
    return {
        name
        for selector in selectors(expr)
        for label, op, value in matchers_of(selector)
        if label == "grpc_method" and op == str(NOT_RE)
        for name in value.split("|")
    }


def test_the_latency_slo_leaves_out_exactly_the_methods_that_hash_a_password(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    """helm/gateway/values.yaml's `slo.latency.excludedMethods` is a copy of the gateway's `@hashes_password`
    methods: a method that starts hashing passwords must be left out too, and no other one."""
    hashing = password_hashing_methods()
    for record in records_of(rendered[MONITORING, SERVICE], SERVICE):
        slo = record.get("labels", {}).get("slo")
        # The objective's record selects nothing; availability's every method.
        timed = slo == "latency" and selectors(record["expr"])
        assert excluded_methods(record["expr"]) == (hashing if timed else set()), f"{record['record']} {slo}"


def test_users_slow_calls_alert_leaves_out_exactly_the_methods_that_hash_a_password(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    """helm/users/values.yaml's `slo.latency.excludedMethods` is another copy: the gateway's `@hashes_password`
    methods hand the password to users' RPCs of the same name, whose argon2 is the slow part. Its
    ShopmeshSlowCalls must leave out each of them, and no other method."""
    hashing = password_hashing_methods()
    users = {method.name for method in users_pb2.DESCRIPTOR.services_by_name["UsersService"].methods}
    assert hashing <= users, f"the gateway hashes for methods users does not serve: {sorted(hashing - users)}"
    for alert in alerts_of(rendered[MONITORING, "users"], "users"):
        timed = alert["alert"] == "ShopmeshSlowCalls"
        assert excluded_methods(alert["expr"]) == (hashing if timed else set()), alert["alert"]


CLIENT_ERRORS = {"INVALID_ARGUMENT": 0.3, "NOT_FOUND": 0.3, "FAILED_PRECONDITION": 0.1, "UNAUTHENTICATED": 0.1}


def test_client_errors_do_not_burn_the_availability_budget(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """80 % of the calls are clients' mistakes (a broken client, a scraper of unknown products): answered
    as they should be, nothing burns."""
    scenario = Scenario(
        "80 % client errors for two hours",
        [Traffic(2 * HOUR, failing=CLIENT_ERRORS)],
        {FAST: between(0, 2 * HOUR), SLOW: between(0, 2 * HOUR)},
    )
    promtool_test(rendered, [scenario], tmp_path)


def test_rate_limiting_does_not_burn_the_availability_budget(
    rendered: dict[tuple[str, str], Docs], tmp_path: Path
) -> None:
    """80 % of the calls refused by the gateway's rate limits (RESOURCE_EXHAUSTED RATE_LIMITED, a client
    hammering the API) for two hours, and 0.05 % shed beside them (half the budget): the client's doing burns
    nothing, and the shed calls alone stay within the budget. The same code as shedding, told apart by the
    chassis' shed counter."""
    scenario = Scenario(
        "80 % rate limited, 0.05 % shed, for two hours",
        [Traffic(2 * HOUR, failing={"RESOURCE_EXHAUSTED": 0.8005}, shed=0.0005)],
        {FAST: between(0, 2 * HOUR), SLOW: between(0, 2 * HOUR)},
        queries=[(2 * HOUR, f'{RATIO}{{slo="availability", window="1h"}}', [("availability", "1h", 0.0005)])],
    )
    promtool_test(rendered, [scenario], tmp_path)


def test_without_calls_nothing_fires_and_no_ratio_is_nan(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """An hour of calls (none failing: no failed code has a series yet), then none for 7 hours (a quiet night,
    only the kubelet's health checks): each window's ratio is 0 while it holds calls, and absent once it holds
    none, never 0/0 (NaN, which would make the dashboard's 30-day budget NaN for 30 days); nothing fires.
    And an outage followed by silence: the page resolves once its short windows hold no calls."""
    quiet = Scenario(
        "an hour of calls, then none",
        [Traffic(HOUR), Traffic(7 * HOUR, calls=0)],
        {FAST: between(0, 8 * HOUR), SLOW: between(0, 8 * HOUR)},
    )
    quiet.queries = [
        (HOUR - MINUTE, f'{RATIO}{{window="5m"}}', [("availability", "5m", 0.0), ("latency", "5m", 0.0)]),
        (HOUR + 30 * MINUTE, f'{RATIO}{{window=~"5m|30m"}}', []),
        (
            8 * HOUR,
            f"{RATIO}",
            [("availability", "1d", 0.0), ("latency", "1d", 0.0), ("availability", "3d", 0.0), ("latency", "3d", 0.0)],
        ),
    ]
    # The dashboard's SLO row meanwhile: the whole budget left (none of it spent, and not NaN after the night),
    # burning at 0 while the windows hold calls.
    row = dict((title, expr) for title, expr, _legend in dashboards.panel_queries())
    budget, burn = (
        row[title].replace("$namespace", render.NAMESPACE).replace("$service", SERVICE)
        for title in ("Error budget remaining (30 days)", "Burn rate")
    )
    panels = Scenario("the dashboard's SLO row, the same hours", quiet.traffic, quiet.expected, named=False)
    panels.queries = [
        (HOUR - MINUTE, burn, [(slo, w, 0.0) for slo in ("availability", "latency") for w in ("1h", "6h", "1d", "3d")]),
        (HOUR - MINUTE, budget, [("availability", "", 1.0), ("latency", "", 1.0)]),
        (8 * HOUR, budget, [("availability", "", 1.0), ("latency", "", 1.0)]),
    ]
    # Six hours of calls first: the 6-hour condition holds only once Prometheus has that window.
    history = 6 * HOUR
    outage_then_silence = Scenario(
        "six hours of calls, 30 minutes of failures, then no call",
        [Traffic(history), Traffic(30 * MINUTE, failing={"UNAVAILABLE": 1.0}), Traffic(7 * HOUR, calls=0)],
        {
            # The 1-hour condition resolves once the last 5 minutes hold no call, the 6-hour one once the last 30
            # minutes hold none.
            FAST: between(
                history + 10 * MINUTE, history + 30 * MINUTE, fires(("availability", "1h"), ("availability", "6h"))
            )
            | between(history + 38 * MINUTE, history + 58 * MINUTE, fires(("availability", "6h")))
            | between(history + 63 * MINUTE, history + 7 * HOUR + 30 * MINUTE),
            SLOW: between(history + 30 * MINUTE + 6 * HOUR + 8 * MINUTE, history + 7 * HOUR + 30 * MINUTE),
        },
    )
    promtool_test(rendered, [quiet, panels, outage_then_silence], tmp_path)


def slo_rules_with(helm_dir: Path, slo: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway's SLO rules rendered with `slo` over its chart's values, monitoring on."""
    values = render.values_for(MONITORING, helm_dir) | {"slo": slo}
    docs = objects_of(helm_dir, SERVICE, values)
    [group] = [g for g in find(docs, "PrometheusRule", SERVICE)["spec"]["groups"] if g["name"].endswith("-slo")]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def exported_bounds() -> list[str]:
    """The latency histogram's bucket bounds, as the chassis exports them in `le`."""
    metrics = ServerMetrics(CollectorRegistry())
    metrics.for_method(API).handling.observe(FAST_SECONDS)
    return [
        sample.labels["le"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "grpc_server_handling_seconds_bucket" and sample.labels["le"] != "+Inf"
    ]


def test_the_latency_histogram_counts_a_call_as_long_as_the_edges_bound_in_a_bucket_of_its_own() -> None:
    """Every public call may take up to the edge's bound (checkout's path 25 s): one past the last bucket lands
    in +Inf, where histogram_quantile reads the last bound, and a 14.8 s PlaceOrder read as a p99 of 10 s."""
    bounds = [float(bound) for bound in exported_bounds()]
    assert bounds[-1] >= float(ROUTE_TIMEOUT.removesuffix("s")), bounds
    assert any(14.8 <= bound < bounds[-1] for bound in bounds), "a 14.8 s call shares its bucket with a 30 s one"


def test_a_latency_threshold_between_two_buckets_fails_the_render_naming_the_bounds(helm_dir: Path) -> None:
    """The latency SLO reads the share of calls within its threshold from the histogram's bucket of that bound:
    300 ms lies between the 250 ms and 500 ms buckets, where the histogram cannot tell, so the chart refuses
    it, with or without monitoring, and lists the bounds it can count (the ones the chassis exports)."""
    for monitoring in (True, False):
        values: dict[str, Any] = {"slo": {"latency": {"thresholdSeconds": 0.3}}}
        if monitoring:
            values |= render.values_for(MONITORING, helm_dir)
        with pytest.raises(Exception, match=r"slo\.latency\.thresholdSeconds \(0\.3\)") as refused:
            objects_of(helm_dir, SERVICE, values)
        bounds = re.search(r"bucket bounds \(([^)]*) seconds\)", str(refused.value))
        assert bounds, str(refused.value)
        assert bounds.group(1).split(", ") == exported_bounds()


@pytest.mark.parametrize(("threshold", "le"), [(0.25, "0.25"), (1, "1.0"), (0.0005, "0.0005")])
def test_the_latency_threshold_selects_its_bucket_as_exported(helm_dir: Path, threshold: float, le: str) -> None:
    """prometheus-client writes the bound 1 as le="1.0": a threshold written `1` must select that series."""
    rules = slo_rules_with(helm_dir, {"latency": {"thresholdSeconds": threshold}})
    latency = [r for r in rules if r.get("labels", {}).get("slo") == "latency" and "window" in r["labels"]]
    assert latency
    for rule in latency:
        buckets = [s for s in selectors(rule["expr"]) if s.name == "grpc_server_handling_seconds_bucket"]
        assert buckets
        assert all(("le", str(EQUAL), le) in matchers_of(s) for s in buckets), rule["expr"]


@pytest.mark.parametrize("objective", [0, 1, 1.5, -0.1])
def test_an_objective_outside_0_to_1_fails_the_render(helm_dir: Path, objective: float) -> None:
    with pytest.raises(Exception, match=r"slo\.availability\.objective"):
        objects_of(helm_dir, SERVICE, {"slo": {"availability": {"objective": objective}}})


@pytest.mark.parametrize(("slo", "objective"), [("latency", 0.9), ("availability", 0.93)])
def test_an_objective_the_page_cannot_reach_fails_the_render(helm_dir: Path, slo: str, objective: float) -> None:
    """At 90 %, 14.4 times the budget is 144 % of the calls: the 1-hour page could never fire, and a latency
    outage of every call would page only through the 6-hour condition, hours later. The chart says so rather
    than render an alert that cannot fire."""
    with pytest.raises(Exception, match=rf"slo\.{slo}\.objective \({objective}\).*above 0\.93056") as refused:
        objects_of(helm_dir, SERVICE, {"slo": {slo: {"objective": objective}}})
    assert "14.4" in str(refused.value)


def test_the_objectives_set_the_budgets_the_alerts_burn(helm_dir: Path) -> None:
    rules = slo_rules_with(helm_dir, {"availability": {"objective": 0.995}, "latency": {"objective": 0.95}})
    objectives = {r["labels"]["slo"]: r["expr"] for r in rules if r.get("record") == "job:shopmesh_slo_objective:ratio"}
    assert objectives == {"availability": "vector(0.995)", "latency": "vector(0.95)"}
    [fast] = [r for r in rules if r.get("alert") == FAST]
    assert "14.4 * (1 - 0.995)" in fast["expr"]
    assert "6 * (1 - 0.95)" in fast["expr"]
    assert "0.999" not in fast["expr"]


def codes(expr: str) -> set[str]:
    """The status codes `expr` selects by grpc_code=~."""
    found = {m.value for s in selectors(expr) for m in s.matchers.matchers if m.name == "grpc_code" and m.op == RE}
    assert len(found) == 1, expr
    return set(found.pop().split("|"))


def test_the_availability_slo_counts_exactly_the_server_errors_alerts_failures(
    rendered: dict[tuple[str, str], Docs],
) -> None:
    """One set of server-side codes, and the shed calls beside them, for ShopmeshServerErrors, the availability
    SLO, the dashboard and the chassis' server spans: a failure one of them counted and another not would page
    for what the other calls healthy."""
    docs = rendered[MONITORING, SERVICE]
    [server_errors] = [a for a in alerts_of(docs, SERVICE) if a["alert"] == "ShopmeshServerErrors"]
    # The records of the calls that failed (each window's ratio, and the 5-minute rate the dashboard sums).
    failures = {RATIO, "job:shopmesh_slo_errors:rate5m"}
    availability = [
        r for r in records_of(docs, SERVICE) if r["labels"].get("slo") == "availability" and r["record"] in failures
    ]
    assert {r["record"] for r in availability} == failures
    assert availability
    expected = codes(server_errors["expr"])
    assert all(codes(r["expr"]) == expected for r in availability)
    assert expected == {code.name for code in _SERVER_ERRORS}
    assert set(dashboards.SERVER_ERRORS.split("|")) == expected
    failure_panels = [
        panel_query(title).replace("$__rate_interval", "5m")
        for title in ("Server-side errors", "Server-side errors by track")
    ]
    for expr in [server_errors["expr"], *(r["expr"] for r in availability), *failure_panels]:
        assert SHED in {s.name for s in selectors(expr)}, f"shed calls not counted: {expr}"


def test_the_slos_count_the_api_alone_not_health_checks(rendered: dict[tuple[str, str], Docs]) -> None:
    """The kubelet's health checks are calls to the gateway too, thousands a day, always OK: counted, they
    would dilute every ratio. The SLOs select the gRPC services the chart serves (service.grpcServices)."""
    docs = rendered[MONITORING, SERVICE]
    for record in records_of(docs, SERVICE):
        for selector in selectors(record["expr"]):
            assert ("grpc_service", str(EQUAL), "shopmesh.gateway.v1.ShopService") in matchers_of(selector)


def test_only_the_gateway_has_slos(rendered: dict[tuple[str, str], Docs]) -> None:
    for name in SERVICES:
        has = bool(records_of(rendered[MONITORING, name], name))
        assert has == (name == SERVICE), name


def test_the_dashboards_slo_panels_read_windows_the_rules_record(rendered: dict[tuple[str, str], Docs]) -> None:
    """A panel reading a window no rule records (window="30d") is empty, and the label checks cannot tell:
    they know the label, not its values."""
    recorded = {
        r["labels"]["window"] for r in records_of(rendered[MONITORING, SERVICE], SERVICE) if "window" in r["labels"]
    }
    read: set[str] = set()
    for _title, query, _legend in dashboards.panel_queries():
        for selector in selectors(query.replace("$__rate_interval", "5m")):
            if selector.name == RATIO:
                [window] = [m for m in selector.matchers.matchers if m.name == "window"]
                read |= set(window.value.split("|"))
    assert read, "the dashboard shows no SLO"
    assert read <= recorded, f"the dashboard reads windows no rule records: {sorted(read - recorded)}"


def panel_query(title: str) -> str:
    """The dashboard's query of the panel `title`, for the gateway in the rendered namespace."""
    [query] = [expr for panel, expr, _legend in dashboards.panel_queries() if panel == title]
    return query.replace("$namespace", render.NAMESPACE).replace("$service", SERVICE)


def test_the_dashboards_budget_counts_every_call_alike(rendered: dict[tuple[str, str], Docs], tmp_path: Path) -> None:
    """The SLO is a share of calls over 30 days, and so is its budget: two busy hours without a failure (720,000
    calls), then a quiet hour of 1 call a second of which 1 % fail (36 calls). 36 of 723,600 calls is 5 % of
    the 0.1 % budget: 95 % of it is left. Averaging the 5-minute ratios instead would weigh each quiet minute's
    1 % as much as a busy one's 0 %, and show the budget spent three times over (about -200 %)."""
    budget = panel_query("Error budget remaining (30 days)")
    end = 3 * HOUR
    scenario = Scenario(
        "two busy hours, then a quiet one with 1 % failing",
        [Traffic(2 * HOUR), Traffic(HOUR, calls=1.0, failing={"UNAVAILABLE": 0.01})],
        {FAST: between(0, end), SLOW: between(0, end)},
        named=False,
    )
    scenario.queries = [
        (end, f"({budget}) > bool 0.9", [("availability", "", 1.0), ("latency", "", 1.0)]),
        (end, f"({budget}) < bool 0.99", [("availability", "", 1.0), ("latency", "", 0.0)]),
    ]
    promtool_test(rendered, [scenario], tmp_path)


@pytest.mark.parametrize(("threshold", "floor"), [(None, 0.25), (0.5, 0.5), (1, 1.0)])
def test_the_gateways_deadline_floor_is_the_latency_threshold(
    helm_dir: Path, threshold: float | None, floor: float
) -> None:
    """The gateway refuses a client's deadline below MIN_CLIENT_DEADLINE_SECONDS plus the chassis' skew
    tolerance; at the latency threshold, a DEADLINE_EXCEEDED the availability SLO counts is a call that missed
    the latency SLO too, and no client can burn the availability budget with deadlines no answer could meet.
    A threshold changed in values moves the floor with it."""
    values: dict[str, Any] = {} if threshold is None else {"slo": {"latency": {"thresholdSeconds": threshold}}}
    data = find(objects_of(helm_dir, SERVICE, values), "ConfigMap", SERVICE)["data"]
    settings = load_settings(GatewaySettings, min_client_deadline_seconds=data["MIN_CLIENT_DEADLINE_SECONDS"])
    assert settings.min_client_deadline_seconds == floor


def test_the_deadline_floor_is_not_set_beside_the_threshold_it_follows(helm_dir: Path) -> None:
    with pytest.raises(Exception, match=r"slo\.latency\.thresholdSeconds"):
        objects_of(helm_dir, SERVICE, {"env": {"MIN_CLIENT_DEADLINE_SECONDS": "0.1"}})
