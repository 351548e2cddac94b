"""Write (or check) the Grafana dashboard of the whole system, helm/shopmesh/dashboards/shopmesh.json.

    .venv/bin/python k8s/dashboards.py          write it
    .venv/bin/python k8s/dashboards.py --check  exit 1 if the committed file differs from what this writes

Built with grafanalib from the same metrics the alerts use (docs/chassis.md, docs/operations.md): one row
per question an on-call engineer asks — are calls failing or slow, do checkouts finish, do events flow,
is a dependency cut off, do e-mails go out, can shoppers sign up; and what each pod's process holds (memory,
file descriptors, CPU, tasks, garbage collections and their pauses). The umbrella chart ships it as a ConfigMap
that Grafana's dashboard sidecar (kube-prometheus-stack) loads, when global.monitoring.enabled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Target,
    Template,
    Templating,
    TimeSeries,
)

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "helm" / "shopmesh" / "dashboards" / "shopmesh.json"

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.generated_files import write_or_check  # noqa: E402
from shopmesh_platform.topology import SERVICES  # noqa: E402

DATASOURCE = "${datasource}"
# Every query is limited to the chosen namespace and services (job = the Service's name, as a
# ServiceMonitor scrape labels it).
SELECTOR = 'namespace="$namespace", job=~"$service"'
SERVER_ERRORS = "UNKNOWN|INTERNAL|DATA_LOSS|UNIMPLEMENTED|UNAVAILABLE|DEADLINE_EXCEEDED"
# The rate of the server's failed calls, per series, as ShopmeshServerErrors and the availability SLO count them
# (helm/shopmesh-lib/templates/_monitoring.tpl, "shopmesh-lib.serverFailures"): a server error code, or shed
# (RESOURCE_EXHAUSTED SERVER_OVERLOADED or PASSWORD_HASHING_BUSY, which the code alone cannot tell from a rate
# limit's).
SERVER_FAILURES = (
    f'rate(grpc_server_handled_total{{{SELECTOR}, grpc_code=~"{SERVER_ERRORS}"}}[$__rate_interval]) '
    f"or rate(shopmesh_grpc_server_shed_total{{{SELECTOR}}}[$__rate_interval])"
)


def server_error_ratio(by: str, selector: str = SELECTOR) -> str:
    """ShopmeshServerErrors' ratio (helm/shopmesh-lib/templates/_monitoring.tpl), summed by `by`, over its 5
    minutes: the server's failed calls over the calls served, those that ended and each stream held (started,
    not yet handled) as one call of the window. Over the ended calls alone, a shed Watch among many held read as
    a ratio of 1. tests/k8s/test_monitoring.py holds the alert's expression to this one."""
    failures = SERVER_FAILURES.replace(SELECTOR, selector).replace("$__rate_interval", "5m")
    handled = f"sum by ({by}) (rate(grpc_server_handled_total{{{selector}}}[5m]))"
    held = (
        f'(sum by ({by}) (grpc_server_started_total{{{selector}, grpc_type!="unary"}}) - '
        f'sum by ({by}) (grpc_server_handled_total{{{selector}, grpc_type!="unary"}}))'
    )
    return f"sum by ({by}) ({failures}) / ({handled} + {held} / 300 or {handled})"


def latency_excluded_methods() -> list[str]:
    """The methods any service chart's `slo.latency.excludedMethods` names (helm/<service>/values.yaml): slow
    by design (password hashing), left out of the latency SLO and ShopmeshSlowCalls, so out of the p99 panel
    that shows that alert too. One list for every service: the panel's query spans the chosen ones."""
    methods: set[str] = set()
    for name in SERVICES:
        values = yaml.safe_load((ROOT / "helm" / name / "values.yaml").read_text())
        methods.update(((values.get("slo") or {}).get("latency") or {}).get("excludedMethods") or [])
    return sorted(methods)


LATENCY_EXCLUDED = f'grpc_method!~"{"|".join(latency_excluded_methods())}"'

# The edge's HTTP connection manager (shopmesh_platform.http_api: stat_prefix), as Envoy labels its series.
HTTP_API = 'envoy_http_conn_manager_prefix="http_api"'

# The SLOs' recording rules (helm/shopmesh-lib/templates/_monitoring.tpl, "shopmesh-lib.slo"): each SLO's
# error ratio (the share of calls that missed it) over a window, and its objective.
SLO_ERRORS = "job:shopmesh_slo_errors:ratio_rate"
SLO_BUDGET = f"(1 - job:shopmesh_slo_objective:ratio{{{SELECTOR}}})"

# (title, unit, description, [(expr, legend)])
Panel = tuple[str, str, str, list[tuple[str, str]]]

ROWS: list[tuple[str, list[Panel]]] = [
    (
        # The gateway's public API (helm/gateway/values.yaml `slo:`; docs/operations.md, "SLOs").
        "SLOs of the public API",
        [
            (
                "Error budget remaining (30 days)",
                "percentunit",
                "The share of each SLO's 30-day error budget not spent yet: 100 % when no call missed it, 0 when "
                "as many did as the objective allows, below 0 past it. The calls that missed it over the last 30 "
                "days divided by all calls then (each call weighs the same, busy hour or quiet night), over "
                "the budget (1 - objective). Counts only what Prometheus kept: less than 30 days after the SLO "
                "was turned on, the days since.",
                [
                    (
                        f"1 - sum_over_time(job:shopmesh_slo_errors:rate5m{{{SELECTOR}}}[30d]) "
                        "/ on (job, namespace, slo) "
                        f"(sum_over_time(job:shopmesh_slo_calls:rate5m{{{SELECTOR}}}[30d]) > 0) "
                        f"/ on (job, namespace, slo) {SLO_BUDGET}",
                        "{{job}} {{slo}}",
                    )
                ],
            ),
            (
                "Burn rate",
                "short",
                "How many times as fast as it can last each SLO's error budget is spent, over the long window "
                "of each alert condition: ShopmeshErrorBudgetBurnFast pages above 14.4 over 1h or 6 over 6h, "
                "ShopmeshErrorBudgetBurnSlow files a ticket above 3 over 1d or 1 over 3d (each with its short "
                "window too).",
                [
                    (
                        f'{SLO_ERRORS}{{{SELECTOR}, window=~"1h|6h|1d|3d"}} '
                        f"/ on (job, namespace, slo) group_left () {SLO_BUDGET}",
                        "{{job}} {{slo}} {{window}}",
                    )
                ],
            ),
            (
                "Degraded product pages",
                "reqps",
                "Product pages the gateway answered OK with recommendations_degraded, per second, by cause "
                "(recommendations_failed: they answered an error; recommendations_timed_out: they missed their "
                "budget) and fallback (shown: same-category products instead; empty: none). They answer OK, so "
                "no SLO or status count above shows them (docs/operations.md).",
                [
                    (
                        "sum by (cause, fallback) "
                        f"(rate(shopmesh_gateway_degraded_product_pages_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{cause}} {{fallback}}",
                    )
                ],
            ),
        ],
    ),
    (
        "gRPC calls",
        [
            (
                "Calls per second",
                "reqps",
                "Calls each service handled, whatever their status.",
                [(f"sum by (job) (rate(grpc_server_handled_total{{{SELECTOR}}}[$__rate_interval]))", "{{job}}")],
            ),
            (
                "Server-side errors",
                "percentunit",
                f"Share of calls ending in {SERVER_ERRORS.replace('|', ', ')}, or shed (RESOURCE_EXHAUSTED "
                "SERVER_OVERLOADED or PASSWORD_HASHING_BUSY, the service's or one it relays), over 5 minutes, of "
                "the calls served: those that ended and the streams held (alert ShopmeshServerErrors, per method).",
                [(server_error_ratio("job"), "{{job}}")],
            ),
            (
                "p99 latency",
                "s",
                "99th percentile of the time a service spent on a call (alert ShopmeshSlowCalls, per method), "
                "but for the methods that hash a password (slo.latency.excludedMethods: ~0.5 s by design, near "
                "1 s at p99 when healthy), which the alert and the latency SLO leave out too.",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, job) "
                        f"(rate(grpc_server_handling_seconds_bucket{{{SELECTOR}, {LATENCY_EXCLUDED}}}"
                        "[$__rate_interval])))",
                        "{{job}}",
                    )
                ],
            ),
            (
                "Answers other than OK",
                "reqps",
                "Every non-OK status by code: client mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) as well as "
                "failures; RESOURCE_EXHAUSTED is rate limiting or load shedding, and the shed calls among them "
                "are drawn apart (SERVER_OVERLOADED: shed by the service; users' PASSWORD_HASHING_BUSY: its "
                "hashing queue full; either relayed from a service behind it). A stream its caller ends (a "
                "health Watch cancelled, or past its deadline) is counted CANCELLED: a steady CANCELLED of "
                "Watch is clients coming and going, no failure.",
                [
                    (
                        f'sum by (job, grpc_code) (rate(grpc_server_handled_total{{{SELECTOR}, grpc_code!="OK"}}'
                        "[$__rate_interval]))",
                        "{{job}} {{grpc_code}}",
                    ),
                    (
                        f"sum by (job) (rate(shopmesh_grpc_server_shed_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} shed",
                    ),
                ],
            ),
            (
                "Calls in flight",
                "short",
                "Calls being handled now, per service.",
                [(f"sum by (job) (grpc_server_in_flight_requests{{{SELECTOR}}})", "{{job}}")],
            ),
        ],
    ),
    (
        # The gateway pods' http-api container (docs/http-api.md): Envoy's own series, from its metrics port.
        "HTTP/JSON API (the edge's Envoy)",
        [
            (
                "HTTP requests per second by response class",
                "reqps",
                "Requests to the HTTP/JSON and gRPC-Web API by class of HTTP status: 4xx are clients' mistakes "
                "(as their gRPC codes map), 5xx failures (alert ShopmeshHttpApiErrors).",
                [
                    (
                        f"sum by (job, envoy_response_code_class) (rate(envoy_http_downstream_rq_xx{{{SELECTOR}, "
                        f"{HTTP_API}}}[$__rate_interval]))",
                        "{{job}} {{envoy_response_code_class}}xx",
                    )
                ],
            ),
            (
                "HTTP p99 latency",
                "ms",
                "99th percentile of a request's time in the edge's Envoy, the gateway's answer included.",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, job) "
                        f"(rate(envoy_http_downstream_rq_time_bucket{{{SELECTOR}, {HTTP_API}}}[$__rate_interval])))",
                        "{{job}}",
                    )
                ],
            ),
        ],
    ),
    (
        # Every pod carries shopmesh.io/track (stable, or canary while one runs: docs/mesh.md "Canaries"),
        # which the ServiceMonitor copies onto the series as shopmesh_io_track.
        "Canaries: stable and canary side by side",
        [
            (
                "Server-side errors by track",
                "percentunit",
                "Share of calls ending in a server error or shed, over 5 minutes, of the calls served (streams "
                "held included, as ShopmeshServerErrors counts them), for the stable pods and a canary's apart: a "
                "canary worse than its stable pods is the reason to abort it.",
                [(server_error_ratio("job, shopmesh_io_track"), "{{job}} {{shopmesh_io_track}}")],
            ),
            (
                "p99 latency by track",
                "s",
                "99th percentile of the time the stable pods and a canary's spent on a call.",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, job, shopmesh_io_track) "
                        f"(rate(grpc_server_handling_seconds_bucket{{{SELECTOR}}}[$__rate_interval])))",
                        "{{job}} {{shopmesh_io_track}}",
                    )
                ],
            ),
            (
                "Calls per second by track",
                "reqps",
                "How the mesh splits the calls: a canary's share follows its weight.",
                [
                    (
                        f"sum by (job, shopmesh_io_track) "
                        f"(rate(grpc_server_handled_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} {{shopmesh_io_track}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Checkouts",
        [
            (
                "Checkouts finished",
                "reqps",
                "Orders whose saga ended, by state and cancel reason (alert ShopmeshCheckoutsCancelledByOutages; "
                "PAYMENT_REQUEST_REJECTED should be 0, alert ShopmeshPaymentRequestsRejected).",
                [
                    (
                        f"sum by (state, reason) (rate(shopmesh_orders_finished_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{state}} {{reason}}",
                    )
                ],
            ),
            (
                "Orders waiting for a dependency",
                "short",
                "Unfinished orders whose saga gave up on inventory or payments and waits for it, by the step they "
                "wait at (COMPENSATE: payments down, no cancellation counted yet). Every replica counts them all "
                "(max, not sum). Should be 0 but for a moment (alert ShopmeshCheckoutsWaiting).",
                [(f"max by (step) (shopmesh_orders_waiting_for_dependency{{{SELECTOR}}})", "{{step}}")],
            ),
            (
                "Confirmed orders cancelled",
                "reqps",
                "Confirmed orders their customers cancelled (CancelOrder), refunded and restocked. Not in "
                "'Checkouts finished', where each checkout counts once, confirmed: a customer's cancellation "
                "is no outage, and would swell ShopmeshCheckoutsCancelledByOutages' denominator.",
                [
                    (
                        f"sum (rate(shopmesh_orders_cancelled_after_confirmation_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "cancelled after confirmation",
                    )
                ],
            ),
            (
                "Recovery errors",
                "short",
                "Errors per second of orders' recovery loop, by pass: resume (unfinished sagas) and recheck "
                "(charges of cancelled orders), each an order that failed with an error of its own or a whole "
                "pass that failed before reaching any. Should be 0: such an order keeps failing until someone "
                "looks (alert ShopmeshOrderRecoveryFailing).",
                [
                    (
                        f"sum by (pass) (rate(shopmesh_orders_recovery_errors_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{pass}}",
                    )
                ],
            ),
            (
                "Late captures refunded",
                "short",
                "Charges payments captured after their order was cancelled, which the recovery loop's recheck "
                "found and refunded, per second: customers charged for an order they were told was cancelled "
                "(each also logged at ERROR). Should be 0 (alert ShopmeshLateCapturesRefunded).",
                [
                    (
                        f"sum (rate(shopmesh_orders_late_captures_refunded_total{{{SELECTOR}}}[$__rate_interval]))",
                        "late captures refunded",
                    )
                ],
            ),
            (
                "Orders a newer release wrote",
                "short",
                "Order rows this release cannot read (written by a newer release), met per second: left out of a "
                "ListOrders page, or answered UNAVAILABLE ORDER_FROM_NEWER_RELEASE to GetOrder, CancelOrder or a "
                "PlaceOrder retry. Non-zero only while a rollout runs, or after a rollback; at rest it is 0.",
                [
                    (
                        f"sum (rate(shopmesh_orders_unreadable_orders_total{{{SELECTOR}}}[$__rate_interval]))",
                        "unreadable orders",
                    )
                ],
            ),
        ],
    ),
    (
        "Events",
        [
            (
                "Events published",
                "reqps",
                "Events each outbox relay published and JetStream acknowledged as new; and those it sent again "
                "that JetStream already had and dropped (deduplicated: sent before a relay died or failed its pass "
                "before marking them published).",
                [
                    (
                        f"sum by (job, subject) (rate(shopmesh_outbox_events_published_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{job}} {{subject}}",
                    ),
                    (
                        f"sum by (job, subject) (rate(shopmesh_outbox_events_deduplicated_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{job}} {{subject}} deduplicated",
                    ),
                ],
            ),
            (
                "Events consumed",
                "reqps",
                "What each consumer did with the events it took: applied, duplicate, retried, dead_lettered, "
                "dropped (not even parkable), handed_back (a newer release's subject, left for its replicas), retired.",
                [
                    (
                        f"sum by (consumer, outcome) (rate(shopmesh_events_consumed_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{consumer}} {{outcome}}",
                    )
                ],
            ),
            (
                "Oldest unpublished event",
                "s",
                "Age of the oldest event waiting in each outbox; growing: the relay cannot publish "
                "(alert ShopmeshOutboxStuck).",
                [(f"max by (job) (shopmesh_outbox_oldest_unpublished_age_seconds{{{SELECTOR}}})", "{{job}}")],
            ),
            (
                "Unpublished events",
                "short",
                "Events waiting in each outbox, as the relay holding its lock saw them at its last pass (counted up "
                "to 10000: at least that many); growing: events are written faster than they leave, or the relay "
                "cannot publish (alert ShopmeshOutboxStuck).",
                [(f"max by (job) (shopmesh_outbox_unpublished_events{{{SELECTOR}}})", "{{job}}")],
            ),
            (
                "Since an outbox relay last passed",
                "s",
                "Seconds since the relay holding each outbox's lock last completed a pass (every few seconds); "
                "growing: nothing leaves the outbox, and the oldest unpublished age beside is that old "
                "(alert ShopmeshOutboxRelayStalled).",
                [(f"time() - max by (job) (shopmesh_outbox_relay_pass_timestamp_seconds{{{SELECTOR}}})", "{{job}}")],
            ),
            (
                "Outbox relay failures",
                "short",
                "Relay passes that failed per second (NATS or the database away), per service; their events wait, "
                "in order, for the next pass. Rising while no relay passes: its passes fail; flat: it hangs (alert "
                "ShopmeshOutboxRelayStalled).",
                [
                    (
                        f"sum by (job) (rate(shopmesh_outbox_relay_failures_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}}",
                    )
                ],
            ),
            (
                "Events set aside",
                "short",
                "Events NATS refuses for good (over the server's max_payload or the stream's max message size) that "
                "the relay holding each outbox's lock set aside, as it counted them at its last pass: not published, "
                "they wait in the outbox for an operator to re-send or delete them; the events behind them went on. "
                "Should be 0 (alert ShopmeshOutboxEventsSetAside).",
                [(f"max by (job) (shopmesh_outbox_set_aside_events{{{SELECTOR}}})", "{{job}}")],
            ),
            (
                "Stream full",
                "short",
                "1 while each service's events stream refuses its relay as full (a size limit under discard new; "
                "acknowledged messages count until they age out): events wait in the outbox. Should be 0 (alert "
                "ShopmeshOutboxStreamFull).",
                [(f"max by (job) (shopmesh_outbox_stream_full{{{SELECTOR}}})", "{{job}}")],
            ),
            (
                "Consumer backlog",
                "short",
                "Events each consumer has not applied yet (alert ShopmeshConsumerBacklog).",
                [(f"max by (consumer) (shopmesh_events_consumer_backlog{{{SELECTOR}}})", "{{consumer}}")],
            ),
            (
                "Dead letters waiting",
                "short",
                "Events each consumer parked that nobody has replayed or discarded (alert ShopmeshDeadLetters; "
                "shopmesh-deadletters).",
                [(f"max by (consumer) (shopmesh_events_dead_letters{{{SELECTOR}}})", "{{consumer}}")],
            ),
            (
                "Events dropped",
                "short",
                "Events each consumer lost in the last 15 minutes: after the last attempt NATS refused even a dead "
                "letter without the payload, so they were acknowledged unapplied and are on no dead-letter stream; "
                "each logged at ERROR with its event id, subject, stream and sequence. Should be 0 (alert "
                "ShopmeshEventsDropped).",
                [
                    (
                        f"sum by (consumer) (increase(shopmesh_events_dropped_total{{{SELECTOR}}}[15m]))",
                        "{{consumer}}",
                    )
                ],
            ),
            (
                "Events lost from the stream",
                "short",
                "Messages each stream deleted in the last 15 minutes before the consumer acknowledged them (a size "
                "limit under discard old, or the max age): never applied; each loss logged at ERROR with the "
                "sequences. Should be 0 (alert ShopmeshEventsLost).",
                [
                    (
                        f"sum by (stream, consumer) (increase(shopmesh_events_lost_total{{{SELECTOR}}}[15m]))",
                        "{{stream}} {{consumer}}",
                    )
                ],
            ),
            (
                "Since a consumer last reached NATS",
                "s",
                "Seconds since any replica of each consumer last read its state from NATS (every 30 s); growing: "
                "it consumes nothing, and its backlog and dead letters above are that old "
                "(alert ShopmeshConsumerCutOff).",
                [
                    (
                        f"time() - max by (consumer) "
                        f"(shopmesh_events_consumer_nats_read_timestamp_seconds{{{SELECTOR}}})",
                        "{{consumer}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Dependencies and e-mail",
        [
            (
                "Open circuit breakers",
                "short",
                "1 while a service's breaker in front of a dependency is not closed: open (calls to it fail "
                "fast) or half-open (a probe call decides) (alert ShopmeshCircuitOpen).",
                [
                    (
                        f'max by (job, dependency) (shopmesh_client_breaker_state{{{SELECTOR}, state!="closed"}})',
                        "{{job}} → {{dependency}}",
                    )
                ],
            ),
            (
                "Spans lost",
                "short",
                "Spans per second each service lost on the way to the tracing collector (global.otel.endpoint): "
                "failed to export, retries included, or dropped by its batch queue, full. Their traces are "
                "missing, the calls unaffected (alert ShopmeshSpansNotExported).",
                [
                    (
                        f"sum by (job) (rate(shopmesh_spans_export_failed_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} export failed",
                    ),
                    (
                        f"sum by (job) (rate(shopmesh_spans_dropped_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} dropped, queue full",
                    ),
                ],
            ),
            (
                "E-mail delivery attempts",
                "reqps",
                "What each attempt to send an e-mail ended as: sent, retrying, failed (alert ShopmeshEmailsFailed). "
                "Retrying with nothing sent is the relay down or refusing our settings (alert "
                "ShopmeshEmailsNotGoingOut).",
                [
                    (
                        f"sum by (outcome) (rate(shopmesh_notifications_delivery_attempts_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{outcome}}",
                    )
                ],
            ),
            (
                "E-mails not sent on purpose",
                "reqps",
                "Order e-mails notifications chose not to send: a cancellation the customer was already answered "
                "with by PlaceOrder, or a cancellation beyond the per-address cap (RECIPIENT_MAILS_PER_HOUR, its "
                "burst). A steady recipient_cap rate is an address mailed over and over: its WARNING line names the "
                "account.",
                [
                    (
                        f"sum by (reason) (rate(shopmesh_notifications_suppressed_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{reason}}",
                    )
                ],
            ),
        ],
    ),
    (
        # prometheus-client's process and GC collectors and the chassis' task count (docs/chassis.md), per pod: a
        # leak shows on the pod that has it, which a sum over the service's pods would dilute.
        "Processes",
        [
            (
                "Resident memory",
                "bytes",
                "Memory each service's pods hold (RSS), what the pod's memory limit counts. Climbing for hours "
                "under a steady load: a leak, before the OOM kill.",
                [(f"max by (job, pod) (process_resident_memory_bytes{{{SELECTOR}}})", "{{pod}}")],
            ),
            (
                "Open file descriptors, share of the limit",
                "percentunit",
                "Descriptors each pod holds open (sockets, database and NATS connections, files) over its limit "
                "(process_max_fds, the soft RLIMIT_NOFILE): at 100 % every accept, connect and open fails (alert "
                "ShopmeshFileDescriptorsNearLimit, above 80 % for 10 minutes).",
                [
                    (
                        f"max by (job, pod) (process_open_fds{{{SELECTOR}}} / process_max_fds{{{SELECTOR}}})",
                        "{{pod}}",
                    )
                ],
            ),
            (
                "CPU",
                "short",
                "CPU seconds each pod uses a second (user and system: 1 is one core). Near the pod's CPU limit: "
                "throttled, its calls slow (alert ShopmeshSlowCalls).",
                [(f"sum by (job, pod) (rate(process_cpu_seconds_total{{{SELECTOR}}}[$__rate_interval]))", "{{pod}}")],
            ),
            (
                "asyncio tasks",
                "short",
                "Tasks of each pod's event loop not done yet (handlers, streams held, background loops), counted "
                "by the loop every 5 s. Climbing while the calls in flight do not: tasks leak.",
                [(f"max by (job, pod) (shopmesh_asyncio_tasks{{{SELECTOR}}})", "{{pod}}")],
            ),
            (
                "Garbage collections",
                "short",
                "Runs of the garbage collector a second, by generation, per service; and objects it found "
                "uncollectable (should be 0). Generation 2 runs far above the usual: the heap churns, and each "
                "such run pauses the event loop.",
                [
                    (
                        f"sum by (job, generation) (rate(python_gc_collections_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} generation {{generation}}",
                    ),
                    (
                        f"sum by (job) (rate(python_gc_objects_uncollectable_total{{{SELECTOR}}}[$__rate_interval]))",
                        "{{job}} uncollectable",
                    ),
                ],
            ),
            (
                "Garbage-collection pauses, p99",
                "s",
                "How long a garbage collection paused its pod's event loop, 99th percentile by generation, per "
                "service (shopmesh_python_gc_pause_seconds). Generation 2 in the tens of milliseconds: every call "
                "in flight waits that long, and the checkout's p99 shows it.",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, job, generation) "
                        f"(rate(shopmesh_python_gc_pause_seconds_bucket{{{SELECTOR}}}[$__rate_interval])))",
                        "{{job}} generation {{generation}}",
                    )
                ],
            ),
            (
                "Time paused for garbage collection",
                "percentunit",
                "Share of each pod's time its garbage collections paused its Python threads (the event loop's among "
                "them): collection pauses summed over all generations, per second.",
                [
                    (
                        f"sum by (job, pod) (rate(shopmesh_python_gc_pause_seconds_sum{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{pod}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Sign-ups",
        [
            (
                "Password-strength estimates failed",
                "reqps",
                "Register's password-strength estimates that failed, by cause: broken (the estimating process died "
                "under one and under its retry, or cannot start: alert ShopmeshPasswordStrengthFailing, paged at "
                "the first) and error (the estimate raised: ShopmeshPasswordStrengthErrors, past 2 in 10 minutes) "
                "each fail a Register while users reports SERVING; timeout (a warm-up slower than WARM_UP_SECONDS) "
                "and stopped (asked of a stopping pod) do not. Should be 0.",
                [
                    (
                        f"sum by (cause) (rate(shopmesh_users_password_strength_failures_total{{{SELECTOR}}}"
                        "[$__rate_interval]))",
                        "{{cause}}",
                    )
                ],
            ),
        ],
    ),
]


def dashboard() -> Dashboard:
    panels: list[object] = []
    y = 0
    for title, row in ROWS:
        panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        for index, (panel_title, unit, description, queries) in enumerate(row):
            panels.append(
                TimeSeries(
                    title=panel_title,
                    description=description,
                    dataSource=DATASOURCE,
                    unit=unit,
                    targets=[
                        Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
                        for i, (expr, legend) in enumerate(queries)
                    ],
                    gridPos=GridPos(h=8, w=12, x=12 * (index % 2), y=y + 8 * (index // 2)),
                )
            )
        y += 8 * ((len(row) + 1) // 2)
    variables = [
        Template(name="datasource", label="Data source", query="prometheus", type="datasource"),
        Template(
            name="namespace",
            label="Namespace",
            dataSource=DATASOURCE,
            query="label_values(grpc_server_handled_total, namespace)",
            default="shopmesh",
        ),
        Template(
            name="service",
            label="Service",
            dataSource=DATASOURCE,
            query='label_values(grpc_server_handled_total{namespace="$namespace"}, job)',
            includeAll=True,
            multi=True,
            allValue=".*",
            default="$__all",
        ),
    ]
    return Dashboard(
        title="shopmesh",
        uid="shopmesh-overview",
        description="The whole shop: SLOs, gRPC calls, checkouts, events, dependencies, e-mail, processes "
        "(docs/operations.md).",
        tags=["shopmesh"],
        timezone="utc",
        refresh="30s",
        panels=panels,
        templating=Templating(list=variables),
    ).auto_panel_ids()


def rendered() -> str:
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def queries() -> list[str]:
    """Every PromQL expression of the dashboard's panels (tests/k8s checks them)."""
    return [expr for _title, expr, _legend in panel_queries()]


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, PromQL expression, legend) of every query of the dashboard's panels."""
    return [
        (panel, expr, legend)
        for _title, row in ROWS
        for panel, _unit, _description, exprs in row
        for expr, legend in exprs
    ]


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        argv,
        __doc__,
        lambda: {OUTPUT: rendered()},
        root=ROOT,
        source="what k8s/dashboards.py writes",
        remedy="make dashboards",
    )


if __name__ == "__main__":
    sys.exit(main())
