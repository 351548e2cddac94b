"""OpenTelemetry tracing: a tracer provider per process, W3C trace-context propagation, OTLP export.

Spans are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, through a batch processor whose
queue drops spans when full: a missing or slow collector never blocks or fails a request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Counter, Meter, NoOpCounter, NoOpMeter, NoOpMeterProvider
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.semconv._incubating.metrics.otel_metrics import OTEL_SDK_PROCESSOR_SPAN_PROCESSED
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

# W3C trace context alone (`traceparent`, `tracestate`), whatever else the global propagator carries: what is
# stored with a row for work that continues the trace later (`stored_trace_context`, `stored_context`).
_W3C = TraceContextTextMapPropagator()


# Set by the server interceptor on the parent context of a call whose caller is not trusted to decide
# sampling (ServiceSettings.follows_trace_decision_of): its traceparent's "sampled" is a request, drawn again.
UNVOUCHED_PARENT = otel_context.create_key("shopmesh-unvouched-trace-parent")


class _CallersDecision(Sampler):
    """For a sampled remote parent: the caller's decision, unless the parent is UNVOUCHED_PARENT; then a
    draw at the ratio, as for a call without a traceparent. A random draw, not TraceIdRatioBased's: that
    one reads the trace id, which such a caller writes, and an id whose low bits are zeros is always kept."""

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        unvouched = otel_context.get_value(UNVOUCHED_PARENT, parent_context) is True
        if unvouched and random.random() >= self._ratio:
            return SamplingResult(Decision.DROP, None, parent.trace_state)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)

    def get_description(self) -> str:
        return f"CallersDecision{{unvouched drawn at {self._ratio}}}"


class _LinkedDecision(Sampler):
    """For a trace started with links (the outbox relay's send span, linked to its event's create span): as the
    linked traces were decided, recorded when any of them is; without links, drawn at the ratio. Else, below
    1, the send of a recorded checkout's event would be drawn apart from it, and mostly missing."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not links:
            return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return f"LinkedDecision{{else {self._ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """What a service records when it exports: a trace it starts, at `ratio` (one started with links, as the
    linked traces were decided); a call whose caller sent a traceparent, as the caller decided (its "not
    sampled" always; its "sampled" drawn again at `ratio` when the caller is not trusted to decide, see
    UNVOUCHED_PARENT)."""
    return ParentBased(_LinkedDecision(ratio), remote_parent_sampled=_CallersDecision(ratio))


class _LostSpans:
    """Spans this process lost, for a counter of metrics.py (shopmesh_spans_export_failed_total,
    shopmesh_spans_dropped_total): one count for the process, as its tracer provider is one, whichever
    server's registry shows it."""

    def __init__(self) -> None:
        # The batch processor's worker and a flush may export at once; any thread ending a span may drop one.
        self._lock = threading.Lock()
        self._spans = 0

    def add(self, spans: int) -> None:
        with self._lock:
            self._spans += spans

    @property
    def spans(self) -> int:
        return self._spans


FAILED_EXPORTS = _LostSpans()
# Spans the batch processor dropped unexported, its queue full (the collector slower than the spans come, or
# away while the exporter retries): the SDK logs only its first "Queue full" line in 20 s.
DROPPED_SPANS = _LostSpans()


class _DroppedSpanCounter(NoOpCounter):
    """The SDK's own count of the spans its batch processor handled, of which only those dropped for a full
    queue (error.type "queue_full") are counted, in DROPPED_SPANS."""

    def add(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None:
        if attributes is not None and attributes.get(ERROR_TYPE) == "queue_full":
            DROPPED_SPANS.add(int(amount))


class _DroppedSpanMeter(NoOpMeter):
    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        if name == OTEL_SDK_PROCESSOR_SPAN_PROCESSED:
            return _DroppedSpanCounter(name, unit=unit, description=description)
        return super().create_counter(name, unit=unit, description=description)


class _DroppedSpanMeterProvider(NoOpMeterProvider):
    """The meter a batch processor reports its own metrics to, keeping only the dropped spans: the chassis
    exports Prometheus metrics (metrics.py), not OpenTelemetry ones, and needs no metrics SDK for one count."""

    def get_meter(
        self, name: str, version: str | None = None, schema_url: str | None = None, attributes: Attributes = None
    ) -> Meter:
        return _DroppedSpanMeter(name, version=version, schema_url=schema_url)


# One processor made at a time: the switch is the process's, and two setting and putting it back at once undo each
# other (the first done unsets it under the second, whose processor then counts no drops).
_SWITCH_LOCK = threading.Lock()


@contextmanager
def _sdk_internal_metrics() -> Iterator[None]:
    """The SDK's internal metrics on while a processor is made: it reports its drops only when
    OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED is true at its construction. Only there: on for the process, the
    tracer provider and the OTLP exporter would report their own through the global meter provider too, on
    every span, to nothing."""
    with _SWITCH_LOCK:
        before = os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED)
        os.environ[OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED] = "true"
        try:
            yield
        finally:
            if before is None:
                del os.environ[OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED]
            else:
                os.environ[OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED] = before


def batch_processor(exporter: SpanExporter, **options: int) -> BatchSpanProcessor:
    """A batch processor exporting through `exporter` (`options`: BatchSpanProcessor's sizes and delays, else
    the SDK's, from OTEL_BSP_*), counting the spans it loses: in FAILED_EXPORTS those of a batch that fails, in
    DROPPED_SPANS those dropped for a full queue."""
    with _sdk_internal_metrics():
        return BatchSpanProcessor(CountingSpanExporter(exporter), meter_provider=_DroppedSpanMeterProvider(), **options)


class CountingSpanExporter(SpanExporter):
    """`exporter`, counting in FAILED_EXPORTS the spans of each batch it fails to export (FAILURE, or an
    exception, re-raised): the exporter logs why, but a log line says nothing of how many spans are lost.
    Only a failed batch costs anything more."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:
            FAILED_EXPORTS.add(len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            FAILED_EXPORTS.add(len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


# How long one batch's export may take, its retries with back-off included, before its spans are given up.
EXPORT_TIMEOUT_SECONDS = 5.0


def configure_tracing(
    service_name: str,
    endpoint: str | None,
    sampler_ratio: float = 1.0,
    export_timeout: float = EXPORT_TIMEOUT_SECONDS,
) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        sampler=sampler(sampler_ratio) if endpoint else ALWAYS_OFF,
    )
    if endpoint:
        # Imported lazily: the exporter pulls in a second gRPC client stack we need only when used.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=export_timeout)
        provider.add_span_processor(batch_processor(exporter))
        log.info("exporting spans over OTLP", extra={"endpoint": endpoint})
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    # The first provider set wins for the process; tests that run several servers share it.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return provider


# How long a stopping process waits for its last spans to be exported: the batch processor's own shutdown
# waits up to 30 s, retrying, when the collector is away, which would hold every rollout past its drain.
EXPORT_ON_SHUTDOWN_SECONDS = 3.0


def shutdown_tracing(provider: TracerProvider, timeout: float = EXPORT_ON_SHUTDOWN_SECONDS) -> bool:
    """Export what is queued and stop, giving up after `timeout` (the spans still queued are lost, logged as
    such). In a daemon thread, so that an unfinished export does not keep the process from exiting."""
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning("spans not exported within %.0f s of stopping: the collector is away or slow", timeout)
        return False
    return True


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def stored_trace_context() -> dict[str, str]:
    """The current span's W3C trace context, `traceparent` and `tracestate` if any, to store with a row whose
    work goes on outside this span (notifications' sender mails what the consumer recorded): empty outside a
    span. Unsampled spans are stored too: their work then carries the trace id in its logs."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


def stored_context(carrier: Mapping[str, str]) -> Context:
    """The parent for work continuing a trace stored by `stored_trace_context`; a stored context that is
    missing or unreadable gives an empty one, and the work's span starts a trace of its own."""
    return _W3C.extract(carrier, context=Context())


def stored_context_column(carrier: Mapping[str, str]) -> str | None:
    """`carrier` (a `stored_trace_context`) as a row keeps it: a JSON object in an unbounded text column, so
    that no caller's `tracestate` can make the write fail; None (NULL) for an empty one."""
    return json.dumps(dict(carrier)) if carrier else None


def stored_context_from_column(stored: str | None) -> dict[str, str]:
    """The carrier `stored_context_column` kept; none for a value that is not one (a stored trace context is
    never a reason for the work to fail)."""
    try:
        carrier = json.loads(stored) if stored else {}
    except ValueError:
        return {}
    if not isinstance(carrier, dict):
        return {}
    return {key: value for key, value in carrier.items() if isinstance(key, str) and isinstance(value, str)}
