"""Prometheus metrics for gRPC servers, in go-grpc-prometheus' names and labels (status codes spelled as
Python's grpc does: NOT_FOUND, not NotFound) beside the chassis' own count of shed calls
(`shopmesh_grpc_server_shed_total`, same labels), and for the event side of a service (outbox relay,
consumers) under `shopmesh_`.

Each server gets its own registry (several servers can share a test process), served over HTTP on a
separate port by prometheus-client, with prometheus-client's process and runtime series beside them and the
chassis' histogram of garbage-collection pauses (`add_runtime_collectors`), and the count of the event loop's
tasks (`shopmesh_asyncio_tasks`). A service that relays or consumes events makes its `ServerMetrics` first,
hands `.outbox` to its relay and `.events` to its consumers, and passes the same object to `app.serve`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shopmesh_chassis.breaker import BreakerState, CircuitBreaker
from shopmesh_chassis.tracing import DROPPED_SPANS, FAILED_EXPORTS

# Buckets sized for RPCs: 0.5 ms up to 30 s, the edge's bound on every public call: checkout's path may take
# 25 s (docs/http-api.md), and a call past the last bound lands in +Inf, where a quantile reads that bound
# (a 14.8 s PlaceOrder read as a p99 of 10 s). The charts' latency SLO reads its threshold's bucket, so the
# library chart lists these bounds too (shopmesh-lib.latencyBuckets, which tests/k8s/test_slo.py keeps equal):
# change both, or a threshold the chart accepts selects a bucket no service exports.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
)

# How often a serving process' event loop counts its tasks for shopmesh_asyncio_tasks: well inside any scrape
# interval, and a count of a few thousand tasks every 5 s costs the loop nothing it would notice.
TASK_COUNT_INTERVAL_SECONDS = 5.0


# Collection pauses: a young generation's take tens of microseconds, a full collection of a large heap up to
# a second (the 50-170 ms that made app.freeze_startup_heap worth it sit in the middle).
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """prometheus-client's own process and runtime collectors, as its default registry carries them: RSS,
    virtual memory, CPU seconds, open file descriptors and their limit, start time (process_*, read from
    /proc at each scrape), the interpreter (python_info) and the garbage collector's runs and objects by
    generation (python_gc_*); and the chassis' histogram of the collector's pauses by generation
    (shopmesh_python_gc_pause_seconds), which prometheus-client does not measure. Fixed series, no
    per-request label."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    GC_PAUSES.install()
    registry.register(GC_PAUSES)


class GcPauseCollector(Collector):
    """How long each garbage collection paused the interpreter (it holds the GIL throughout: the event loop and
    every other Python thread wait), by generation, timed by a `gc.callbacks` pair and read as a histogram at
    scrape time. One per process, as the garbage collector is, registered with each server's registry.

    Counted in plain lists rather than a prometheus-client Histogram: a collection runs inside whatever code
    allocated, and that may be a scrape's thread holding the lock of one of the histogram's own values (its
    read), which the callback would then wait on for ever, with the event loop behind it the next time it
    collects (prometheus/client_python#363, why its own GC collector dropped its callbacks). Collections never
    overlap (they hold the GIL, and none starts during another), so the callback needs no lock; a scrape's
    copy of a generation's counts is whole, and its sum at most a collection apart from them."""

    name = "shopmesh_python_gc_pause_seconds"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        generations = len(gc.get_threshold())
        # Per generation, the collections per bucket of GC_PAUSE_BUCKETS (not cumulative), the last +Inf's.
        self._counts = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(generations)]
        self._sums = [0.0] * generations
        self._bounds = [*map(floatToGoString, GC_PAUSE_BUCKETS), "+Inf"]

    def install(self) -> None:
        """Time the process' collections from now on; once, however many servers the process runs."""
        if self.on_collection not in gc.callbacks:
            gc.callbacks.append(self.on_collection)

    def on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        paused = self._clock() - self._started
        generation = info["generation"]
        # bisect_left: a pause equal to a bound counts in that bound's bucket, as Prometheus' le means.
        self._counts[generation][bisect_left(GC_PAUSE_BUCKETS, paused)] += 1
        self._sums[generation] += paused

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            self.name,
            "How long each garbage collection paused the process' Python threads (the event loop's among them), "
            "by generation. A full (generation 2) collection walks every object the process holds that is not "
            "frozen: a long one pauses every call in flight.",
            labels=("generation",),
        )
        for generation, (counts, paused) in enumerate(zip(self._counts, self._sums, strict=True)):
            cumulative = itertools.accumulate(list(counts))  # list(): one copy, whole, of what the callback adds to
            family.add_metric(
                (str(generation),), list(zip(self._bounds, map(float, cumulative), strict=True)), sum_value=paused
            )
        yield family


GC_PAUSES = GcPauseCollector()


@dataclass
class MethodMetrics:
    """Pre-bound label children of one method: label lookups stay off the per-request path."""

    started: Counter
    handling: Histogram
    in_flight: Gauge
    shed: Counter
    _handled_family: Counter
    _labels: tuple[str, str, str]
    _handled: dict[grpc.StatusCode, Counter] = field(default_factory=dict)

    def handled(self, code: grpc.StatusCode) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled_family.labels(*self._labels, code.name)
            self._handled[code] = child
        return child


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """A registry made here (every service's) carries the process and runtime series too. One passed in is
        the caller's, and gets the chassis' own series only: a test reading them (promtool's simulations,
        tests/k8s) gets the same series each time, not the test process' changing memory and descriptors;
        `add_runtime_collectors` adds the others to it."""
        if registry is None:
            registry = CollectorRegistry()
            add_runtime_collectors(registry)
        self.registry = registry
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter("grpc_server_started", "RPCs started on the server.", labels, registry=self.registry)
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self._handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "grpc_server_in_flight_requests", "RPCs being handled now.", labels, registry=self.registry
        )
        # A counter of its own rather than a label on grpc_server_handled_total: go-grpc-prometheus' series keep
        # their names and labels, so every query summing them (dashboards, alerts, recording rules) means what
        # it did; a query about the server's failures adds this one.
        self._shed = Counter(
            "shopmesh_grpc_server_shed",
            "Calls answered RESOURCE_EXHAUSTED for want of this server's capacity: reason SERVER_OVERLOADED, shed "
            "at its GRPC_MAX_CONCURRENT_RPCS, a handler's own full queue (users' PASSWORD_HASHING_BUSY), or a "
            "dependency's shed answer relayed unchanged, whatever its reason (the gateway). The server "
            "failing its callers, unlike a rate limit's RESOURCE_EXHAUSTED; each is in "
            'grpc_server_handled_total{grpc_code="RESOURCE_EXHAUSTED"} too.',
            labels,
            registry=self.registry,
        )
        self.registry.register(SpanExportCollector())
        self._asyncio_tasks = Gauge(
            "shopmesh_asyncio_tasks",
            "Tasks of the service's event loop not done yet (handlers, streams, background loops, this count's "
            f"own), counted by the loop every {TASK_COUNT_INTERVAL_SECONDS:g} s. Climbing while the calls in "
            "flight do not: tasks leak.",
            registry=self.registry,
        )
        self._task_count: asyncio.Task[None] | None = None
        self._http: WSGIServer | None = None
        self._events: EventMetrics | None = None
        self._outbox: OutboxMetrics | None = None
        self._breakers: BreakerCollector | None = None

    def watch_breakers(self, dependency: str, breakers: Mapping[str, CircuitBreaker]) -> None:
        """Report the circuit breakers of the channel to `dependency` (a ResilientChannel's `.breakers`, one
        per method; none when the channel has no breaker)."""
        if not breakers:
            return
        if self._breakers is None:
            self._breakers = BreakerCollector()
            self.registry.register(self._breakers)
        self._breakers.watch(dependency, breakers)

    @property
    def events(self) -> EventMetrics:
        """The consumers' metrics in this registry, made on first use (services without consumers show none)."""
        if self._events is None:
            self._events = EventMetrics(self.registry)
        return self._events

    @property
    def outbox(self) -> OutboxMetrics:
        """The outbox relay's metrics in this registry, made on first use: only a service that runs a relay
        shows them (a consumer's relay-pass gauge at 0 drew decades on the dashboard's relay panel)."""
        if self._outbox is None:
            self._outbox = OutboxMetrics(self.registry)
        return self._outbox

    def for_method(self, full_method: str, rpc_type: str = "unary") -> MethodMetrics:
        service, _, method = full_method.lstrip("/").partition("/")
        labels = (rpc_type, service, method)
        return MethodMetrics(
            started=self._started.labels(*labels),
            handling=self._handling.labels(*labels),
            in_flight=self._in_flight.labels(*labels),
            # Made with the method's other series, at 0: rate() over a counter that appears at its first
            # increment misses that increment, and a server's first shed calls are the ones that matter.
            shed=self._shed.labels(*labels),
            _handled_family=self._handled,
            _labels=labels,
        )

    def in_flight(self) -> dict[str, int]:
        """The unary calls being handled now, by `/service/method`, read from the in-flight gauge (the drain's
        log line names the calls its grace cut off, counted as the dashboards count them)."""
        return {
            f"/{sample.labels['grpc_service']}/{sample.labels['grpc_method']}": int(sample.value)
            for family in self._in_flight.collect()
            for sample in family.samples
            if sample.value > 0
        }

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (a daemon thread); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def count_tasks(self, interval_seconds: float = TASK_COUNT_INTERVAL_SECONDS) -> None:
        """Count the running event loop's tasks now and every `interval_seconds` until `close` (on the loop).

        The loop counts them itself and the scrape reads the number: prometheus-client serves /metrics from a
        thread of its own, and asyncio's tasks belong to their loop's thread. asyncio.all_tasks() from the
        scrape's thread copies a WeakSet the loop adds to meanwhile ("Set changed size during iteration",
        which 3.11's all_tasks retries 1,000 times, then raises into the scrape) and reads each task's state
        unlocked; asking the loop at scrape time (call_soon_threadsafe) would hang the scrape behind a
        blocked loop, when its process series matter most. A Gauge's set and its scrape share the value's
        lock, so the scrape reads a whole count at most an interval old."""
        if self._task_count is not None:
            return
        self._task_count = asyncio.get_running_loop().create_task(self._count_tasks(interval_seconds))
        self._asyncio_tasks.set(len(asyncio.all_tasks()))  # the counting task's own included, from the first

    async def _count_tasks(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            self._asyncio_tasks.set(len(asyncio.all_tasks()))

    def close(self) -> None:
        if self._task_count is not None:
            self._task_count.cancel()
            self._task_count = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


# Where the outbox relay stops counting the events that wait (shopmesh_outbox_unpublished_events): the count
# reads the unpublished rows' index, and a backlog of a million would cost a million index entries a pass.
OUTBOX_COUNT_CAP = 10_000


class OutboxMetrics:
    """What an on-call engineer asks of an outbox: are events leaving, and is anything stuck in it. Made for
    a process that runs an OutboxRelay only: elsewhere its gauges would read 0, and a relay pass at 0 is
    one decades back on every panel and alert built on time() minus it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "shopmesh_outbox_events_published",
            "Events the outbox relay published and JetStream acknowledged as new, by subject.",
            ("subject",),
            registry=registry,
        )
        # A counter of its own rather than an outcome label on the one above: every query of that one (the
        # dashboard's, an operator's) goes on counting what reached the stream, without a matcher added to each.
        self.deduplicated = Counter(
            "shopmesh_outbox_events_deduplicated",
            "Events the outbox relay published again that JetStream already had (its PubAck said duplicate) and "
            "dropped, by subject: sent before a relay died or lost its pass before marking them published. Not "
            "in shopmesh_outbox_events_published_total. A steady rate: relay passes keep failing after sending.",
            ("subject",),
            registry=registry,
        )
        self.relay_failures = Counter(
            "shopmesh_outbox_relay_failures",
            "Relay passes that failed (NATS or the database away); their events wait for the next.",
            registry=registry,
        )
        self.oldest_unpublished = Gauge(
            "shopmesh_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest event the relay has read and not yet published; 0 when it has caught up. "
            "Growing means events are stuck in the outbox.",
            registry=registry,
        )
        self.unpublished = Gauge(
            "shopmesh_outbox_unpublished_events",
            "Events waiting in the outbox to be published, as this replica's relay saw them at its last pass "
            f"(what it read and could not send, and what waits behind it), counted up to {OUTBOX_COUNT_CAP} "
            f"({OUTBOX_COUNT_CAP}: at least that many); 0 when it has caught up, and on a replica that does not "
            "hold the relay lock. Growing: events are written faster than the relay publishes them, or it "
            "cannot publish (with the oldest-unpublished age growing).",
            registry=registry,
        )
        self.set_aside = Gauge(
            "shopmesh_outbox_set_aside_events",
            "Events the outbox relay set aside because NATS refuses them for good (larger than the server's "
            "max_payload or the stream's max message size), as the relay holding the lock counted them at its "
            "last pass; 0 on a replica that does not hold it. They are not published, and wait in the outbox "
            "for an operator to re-send or delete them (docs/operations.md); the events behind them went on.",
            registry=registry,
        )
        self.stream_full = Gauge(
            "shopmesh_outbox_stream_full",
            "1 while the stream refuses this replica's relay as full (a size limit under discard new: err_code "
            "10077, maximum messages or bytes exceeded), as its last pass found; 0 once a pass gets through, and on "
            "a replica that does not hold the relay lock. Messages every consumer acknowledged count toward the "
            "limit until they age out (max_age): raise the limit, or lower the max age. Nothing is lost.",
            registry=registry,
        )
        self.relay_pass = Gauge(
            "shopmesh_outbox_relay_pass_timestamp_seconds",
            "When this replica's outbox relay last completed a pass over the outbox (read it, published what "
            "it read, marked it), in Unix seconds; its start until the first. Only the replica holding the "
            "relay lock passes (on SQLite, the only one): the maximum over replicas is the leader's. Falling "
            "behind time(): no relay publishes (stuck, or failing every pass), and the oldest-unpublished age "
            "is as old as this.",
            registry=registry,
        )


class EventMetrics:
    """What an on-call engineer asks of a service's consumers: are events being handled, and is anything
    stuck (the relay's side is OutboxMetrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(
            "shopmesh_events_consumed",
            "Events a consumer took off its stream, by outcome: applied; duplicate (applied before, "
            "acknowledged again); retried (the handler failed, redelivered later); dead_lettered (parked "
            "after its last attempt); dropped (after its last attempt, NATS refused even a dead letter without "
            "its payload: acknowledged unparked, logged at ERROR); handed_back (a subject this release does "
            "not consume, a newer one's: redelivered later for a replica that does); retired (a subject this "
            "release retired: acknowledged unapplied).",
            ("consumer", "subject", "outcome"),
            registry=registry,
        )
        self.dropped = Counter(
            "shopmesh_events_dropped",
            "Events a consumer lost for good: after its last attempt NATS refused even a dead letter without "
            "the payload, so the event was acknowledged unparked and is on no stream of ours but its own "
            "(while that keeps it); each logged at ERROR with its event id, subject, stream and sequence. "
            "One series per consumer, at 0 from the consumer's start, so that increase() sees the first.",
            ("consumer",),
            registry=registry,
        )
        self.lost = Counter(
            "shopmesh_events_lost",
            "Messages the stream deleted before this consumer acknowledged them (a full stream under discard old, "
            "or its max age), so never applied: the stream's first sequence past the durable's ack floor. Seen "
            "when a replica starts consuming and at each read of its backlog; each replica counts what it sees, so "
            "two may count the same. With a durable that filters some of the stream's subjects, counted only "
            "while it is behind, and then the deleted messages of the other subjects count too; not at all when its "
            "service was down past the max age (nothing pending at its start, and JetStream keeps no trace of a "
            "deleted message's subject), nor when its stream lists none (a mirror) and it is caught up. Messages "
            "this replica's handlers hold are left out: they settle them. One series per "
            "consumer, at 0 from its start, so that increase() sees the first.",
            ("stream", "consumer"),
            registry=registry,
        )
        self.consumer_backlog = Gauge(
            "shopmesh_events_consumer_backlog",
            "Events on the stream this consumer has not applied yet: not delivered, or delivered and not "
            "acknowledged (being handled, or waiting for a retry). Read from NATS every 30 s; one value per "
            "durable, whichever replica reports it. Growing: the consumer falls behind.",
            ("consumer",),
            registry=registry,
        )
        self.consumer_nats_read = Gauge(
            "shopmesh_events_consumer_nats_read_timestamp_seconds",
            "When this replica last read its consumer's backlog and dead letters from NATS (every 30 s while it "
            "reaches NATS; its start until the first read), in Unix seconds. Falling behind time(): the replica "
            "reaches no NATS, consumes nothing, and its backlog and dead-letter gauges are as old as this.",
            ("consumer",),
            registry=registry,
        )
        self.dead_letters = Gauge(
            "shopmesh_events_dead_letters",
            "Messages this consumer parked on the DEADLETTER stream that nobody has replayed or discarded "
            "yet (shopmesh-deadletters); read from NATS every 30 s and after each park. Above 0: look.",
            ("consumer",),
            registry=registry,
        )


class SpanExportCollector(Collector):
    """The process' spans lost to failed exports (tracing.FAILED_EXPORTS) and to the batch queue being full
    (tracing.DROPPED_SPANS), read when Prometheus scrapes: at 0 from the start, so that the first losses make a
    rise an alert sees."""

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "shopmesh_spans_export_failed",
            "Spans the OTLP exporter failed to send to the collector (OTEL_EXPORTER_OTLP_ENDPOINT), retries "
            "included: lost. Spans dropped before an export are shopmesh_spans_dropped_total.",
            value=FAILED_EXPORTS.spans,
        )
        yield CounterMetricFamily(
            "shopmesh_spans_dropped",
            "Spans dropped unexported, the batch processor's queue being full (OTEL_BSP_MAX_QUEUE_SIZE, 2048 "
            "unless set): the collector slower than the spans come, or away while the exporter retries. Lost.",
            value=DROPPED_SPANS.spans,
        )


class BreakerCollector(Collector):
    """The state of each watched client circuit breaker, read when Prometheus scrapes: nothing is added to
    the call path."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        # A breaker keeps time on its own clock (monotonic); Prometheus compares timestamps with time().
        self._wall_clock = wall_clock
        self._breakers: dict[str, Mapping[str, CircuitBreaker]] = {}

    def watch(self, dependency: str, breakers: Mapping[str, CircuitBreaker]) -> None:
        self._breakers[dependency] = breakers

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "shopmesh_client_breaker_state",
            "1 for the current state of the circuit breaker in front of each method of each dependency: "
            "closed (calls go out), open (calls fail fast with UNAVAILABLE), half_open (a probe call decides).",
            labels=("dependency", "method", "state"),
        )
        probe_failed = GaugeMetricFamily(
            "shopmesh_client_breaker_probe_failed",
            "1 while the circuit breaker in front of each method of each dependency is not closed and its last "
            "probe call failed: the dependency still failed when last tried, however long ago (a method called "
            "rarely probes rarely); 0 once a call gets through again, and for a breaker not probed since it "
            "opened.",
            labels=("dependency", "method"),
        )
        probe_failed_at = GaugeMetricFamily(
            "shopmesh_client_breaker_probe_failed_timestamp_seconds",
            "When a probe call of the circuit breaker in front of each method of each dependency last failed, in "
            "Unix seconds; 0 before any. probe_failed with this recent: the dependency was still failing lately; "
            "with this old, it may have come back since, with no call to find it so.",
            labels=("dependency", "method"),
        )
        opened = CounterMetricFamily(
            "shopmesh_client_breaker_opened",
            "Times the circuit breaker in front of each method of each dependency opened.",
            labels=("dependency", "method"),
        )
        for dependency, breakers in sorted(self._breakers.items()):
            # sorted() copies the items in one go: the call path adds the breaker of a method it meets first.
            for method, breaker in sorted(breakers.items()):
                current = breaker.observed_state()
                for candidate in BreakerState:
                    state.add_metric((dependency, method, candidate.value), 1.0 if candidate is current else 0.0)
                opened.add_metric((dependency, method), float(breaker.opened))
                probe_failed.add_metric((dependency, method), 1.0 if breaker.probe_failed else 0.0)
                failed_at = breaker.probe_failed_at
                probe_failed_at.add_metric(
                    (dependency, method),
                    0.0 if failed_at is None else self._wall_clock() - (breaker.clock() - failed_at),
                )
        yield state
        yield probe_failed
        yield probe_failed_at
        yield opened
