"""Tracing: the chassis' server span continues the caller's W3C trace, carries OpenTelemetry's RPC
attributes and status, and records nothing when nothing would export it."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, ParentBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.breaker import BreakerConfig, CircuitBreaker
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, free_port, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleSettings, binding
from shopmesh_chassis.tracing import (
    UNVOUCHED_PARENT,
    _sdk_internal_metrics,
    batch_processor,
    configure_tracing,
    sampler,
    shutdown_tracing,
)

from .conftest import Holding, sample_settings

ECHO = "/shopmesh.sample.v1.SampleService/Echo"
FAIL = "/shopmesh.sample.v1.SampleService/Fail"


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # samples everything, as with an exporter configured at ratio 1.0
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
async def traced_stub(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> AsyncIterator[sample_pb2_grpc.SampleServiceStub]:
    provider, _ = exported
    async with (
        serve_in_process(sample_settings(), [binding()], tracer_provider=provider) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None), tracer_provider=provider) as ch,
    ):
        yield sample_pb2_grpc.SampleServiceStub(ch.channel)


def _server_spans(exporter: InMemorySpanExporter) -> list[trace.Span]:
    return [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]  # type: ignore[misc]


async def test_server_span_continues_the_callers_trace_with_rpc_attributes(
    traced_stub: sample_pb2_grpc.SampleServiceStub, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = exported
    with provider.get_tracer("test").start_as_current_span("caller") as caller:
        await traced_stub.Echo(sample_pb2.EchoRequest(message="hi"))

    (server,) = _server_spans(exporter)
    client = next(s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CLIENT)
    assert server.name == ECHO
    assert server.context.trace_id == caller.get_span_context().trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.attributes is not None
    assert dict(server.attributes) | {"net.peer.port": "any"} == {
        "rpc.system": "grpc",
        "rpc.service": "shopmesh.sample.v1.SampleService",
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
        "net.peer.ip": "127.0.0.1",
        "net.peer.port": "any",
        "net.peer.name": "localhost",
    }
    assert server.status.status_code is trace.StatusCode.UNSET


@pytest.mark.parametrize(
    ("kind", "code", "is_error"),
    [
        (sample_pb2.ERROR_KIND_INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, False),  # the client's mistake
        (sample_pb2.ERROR_KIND_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, True),
        (sample_pb2.ERROR_KIND_UNEXPECTED, grpc.StatusCode.INTERNAL, True),
    ],
)
async def test_server_span_records_the_status_and_marks_server_failures_as_errors(
    traced_stub: sample_pb2_grpc.SampleServiceStub,
    exported: tuple[TracerProvider, InMemorySpanExporter],
    kind: int,
    code: grpc.StatusCode,
    is_error: bool,
) -> None:
    _, exporter = exported
    with pytest.raises(grpc.aio.AioRpcError):
        await traced_stub.Fail(sample_pb2.FailRequest(kind=kind), wait_for_ready=False)
    # The status reaches the client as the handler aborts; the span ends a moment later, as it unwinds.
    # (UNAVAILABLE is retried by the channel: one span per attempt, alike.)
    server = (await eventually(lambda: _server_spans(exporter), "the server span of Fail exported"))[-1]
    assert server.name == FAIL
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == code.value[0]
    assert (server.status.status_code is trace.StatusCode.ERROR) is is_error
    # An unexpected exception is on the span, for whoever reads the trace; the client saw only INTERNAL.
    assert any(e.name == "exception" for e in server.events) is (code is grpc.StatusCode.INTERNAL)


def test_without_an_exporter_nothing_is_recorded_but_trace_ids_still_exist() -> None:
    provider = configure_tracing("sample", endpoint=None)
    assert provider.sampler is ALWAYS_OFF
    span = provider.get_tracer("test").start_span("work")
    assert not span.is_recording()
    assert span.get_span_context().is_valid  # logs and INTERNAL errors still quote a trace id


def test_with_an_exporter_the_callers_sampling_decision_is_followed() -> None:
    provider = configure_tracing("sample", endpoint="http://127.0.0.1:1", sampler_ratio=0.25)
    try:
        assert isinstance(provider.sampler, ParentBased)
    finally:
        provider.shutdown()


async def test_health_checks_are_not_traced(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    async with (
        serve_in_process(sample_settings(), [binding()], tracer_provider=provider) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        await sample_pb2_grpc.SampleServiceStub(channel).Echo(sample_pb2.EchoRequest(message="hi"))
        # The Echo span is exported once its call ends; a health span would have been before it.
        await eventually(lambda: _server_spans(exporter), "the Echo span exported")
    assert [span.name for span in _server_spans(exporter)] == [ECHO]


def test_a_stopping_process_gives_up_exporting_to_a_collector_that_never_answers() -> None:
    # A listener that never accepts: the exporter's connection hangs in the backlog, as with a collector
    # behind a dropped route.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        # An export gives up after 1 s: well past the 0.5 s the stop waits, and soon over once the test is.
        provider = configure_tracing("sample", f"http://127.0.0.1:{port}", export_timeout=1.0)
        with provider.get_tracer("test").start_as_current_span("queued"):
            pass
        assert shutdown_tracing(provider, timeout=0.5) is False, "the export was still waiting"
        # The shutdown goes on in its thread until the export gives up, counting its span in the process-wide
        # shopmesh_spans_export_failed_total: let it end here, not in whichever test reads the counter next.
        for stopping in [thread for thread in threading.enumerate() if thread.name == "otel-shutdown"]:
            stopping.join(timeout=30)
            assert not stopping.is_alive(), "the export never gave up"


def test_a_stopping_process_without_an_exporter_shuts_tracing_down_at_once() -> None:
    assert shutdown_tracing(configure_tracing("sample", None), timeout=5) is True


@pytest.mark.parametrize(
    "metadata",
    [
        (("traceparent", "garbage"),),
        (("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"),),
        (("traceparent", "00-abc-def-01"), ("tracestate", "=,=;" + "x" * 9000)),
    ],
)
async def test_a_call_with_a_malformed_trace_context_is_served_in_a_trace_of_its_own(
    exported: tuple[TracerProvider, InMemorySpanExporter], metadata: tuple[tuple[str, str], ...]
) -> None:
    provider, exporter = exported
    async with (
        serve_in_process(sample_settings(), [binding()], tracer_provider=provider) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None, tracing=False)) as channel,
    ):
        reply = await sample_pb2_grpc.SampleServiceStub(channel.channel).Echo(
            sample_pb2.EchoRequest(message="hi"), metadata=metadata
        )
    assert reply.message == "hi"
    [span] = _server_spans(exporter)
    assert span.parent is None


@pytest.mark.parametrize(("vouched", "decision"), [(True, Decision.RECORD_AND_SAMPLE), (False, Decision.DROP)])
def test_a_sampled_parent_nobody_vouches_for_is_drawn_again_whatever_its_trace_id(
    vouched: bool, decision: Decision
) -> None:
    # Low 64 bits all zero: the id TraceIdRatioBased keeps at any ratio above 0, and a caller picks its trace id.
    caller = SpanContext(0xABC << 64, 0x1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = trace.set_span_in_context(NonRecordingSpan(caller))
    if not vouched:
        parent = otel_context.set_value(UNVOUCHED_PARENT, True, parent)
    result = sampler(1e-9).should_sample(parent, caller.trace_id, "call", trace.SpanKind.SERVER)
    assert result.decision is decision


class _EdgeSettings(SampleSettings):
    def follows_trace_decision_of(self, peer: str) -> bool:
        return peer.startswith("ipv4:127.")


async def test_an_internal_service_asks_nothing_of_a_callers_peer_and_an_edge_service_asks_its_settings() -> None:
    # The default answer is always True: a callback would cost a context.peer() on every traced call for it.
    internal = ChassisServer(sample_settings(), [binding()])
    assert internal.interceptor.follows_trace_decision_of is None
    edge_settings = load_settings(_EdgeSettings, grpc_port=0, metrics_port=-1)
    edge = ChassisServer(edge_settings, [binding()])
    assert edge.interceptor.follows_trace_decision_of == edge_settings.follows_trace_decision_of


async def test_a_call_its_caller_cancels_still_exports_its_client_span_and_the_server_span_hangs_off_it(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # As the gateway's TaskGroup cancels a page's other calls when one fails: the trace must stay whole
    # exactly when someone reads it, with the server's span under the client's, not a root of its own.
    provider, exporter = exported
    holding = Holding("hold")  # released never: held until its caller cancels it
    async with (
        serve_in_process(sample_settings(), [binding(holding)], tracer_provider=provider) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None), tracer_provider=provider) as ch,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(ch.channel)
        held = asyncio.ensure_future(stub.Echo(sample_pb2.EchoRequest(message="hold"), timeout=120))
        async with asyncio.timeout(30):
            await holding.arrived.wait()
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        [client] = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
        [server_span] = await eventually(lambda: _server_spans(exporter), "the server span of the cancelled call")
    assert client.name == ECHO
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert server_span.parent is not None
    assert server_span.parent.span_id == client.context.span_id


async def _refused_by_an_open_breaker(target: str, provider: TracerProvider) -> grpc.aio.AioRpcError:
    """An Echo to `target` that its open breaker refuses: its CIRCUIT_OPEN error."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_timeout_seconds=3600))
    breaker.record_failure()
    async with ResilientChannel(target, [DESCRIPTOR], breaker=breaker, tracer_provider=provider) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sample_pb2_grpc.SampleServiceStub(ch.channel).Echo(sample_pb2.EchoRequest(message="hi"))
    return refused.value


async def test_a_call_its_open_breaker_refuses_still_exports_its_client_span(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # The breaker, inside OpenTelemetry's interceptor, raises its CIRCUIT_OPEN before any call is made.
    provider, exporter = exported
    async with serve_in_process(sample_settings(), [binding()], tracer_provider=provider) as server:
        refused = await _refused_by_an_open_breaker(server.address, provider)
    assert refused.code() is grpc.StatusCode.UNAVAILABLE
    [client] = exporter.get_finished_spans()
    assert client.kind is trace.SpanKind.CLIENT
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert client.status.status_code is trace.StatusCode.ERROR


async def test_a_refused_calls_client_span_says_its_code_and_details_not_the_errors_whole_text(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # OpenTelemetry puts an AioRpcError's str() in the status: several lines, with gRPC's debug_error_string.
    provider, exporter = exported
    # Refused before any connection: no server is needed.
    refused = await _refused_by_an_open_breaker(f"127.0.0.1:{free_port()}", provider)
    [client] = exporter.get_finished_spans()
    assert client.status.description == f"UNAVAILABLE: {refused.details()}"
    assert refused.details().startswith("circuit open for ")


def _linked(sampled: bool) -> list[Link]:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return [Link(SpanContext(0xABC, 0x1, is_remote=True, trace_flags=flags))]


@pytest.mark.parametrize(
    ("ratio", "links", "decision"),
    [
        (0.0, _linked(sampled=True), Decision.RECORD_AND_SAMPLE),
        (1.0, _linked(sampled=False), Decision.DROP),
        (1.0, _linked(sampled=False) + _linked(sampled=True), Decision.RECORD_AND_SAMPLE),
    ],
)
def test_a_trace_started_with_links_is_recorded_as_the_linked_traces_were_whatever_the_ratio(
    ratio: float, links: list[Link], decision: Decision
) -> None:
    # The outbox relay's send span: a trace of its own, linked to its event's create span in the writer's trace.
    result = sampler(ratio).should_sample(None, 0xDEF << 64, "send", trace.SpanKind.CLIENT, links=links)
    assert result.decision is decision


class _StuckExporter(SpanExporter):
    """An exporter whose first export does not return until released: the collector hung on a batch."""

    def __init__(self) -> None:
        self.exporting = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        self.release.wait(timeout=30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_spans_the_full_batch_queue_drops_are_counted_one_each() -> None:
    """The batch processor drops a span that finds its queue full, and the SDK logs only its first "Queue full"
    line in 20 s: how many traces went missing was nowhere. shopmesh_spans_dropped_total counts each. With the
    exporter stuck on a batch of one span and a queue of 2, 10 more spans leave 8 dropped."""
    switch = os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED)
    registry = ServerMetrics().registry
    before = registry.get_sample_value("shopmesh_spans_dropped_total")
    assert before is not None, "exported at 0 before any drop"
    exporter = _StuckExporter()
    provider = TracerProvider()
    # A batch as soon as one span waits, none on a timer: the worker takes the first span, then sticks.
    provider.add_span_processor(
        batch_processor(exporter, max_queue_size=2, max_export_batch_size=1, schedule_delay_millis=600_000)
    )
    tracer = provider.get_tracer("test")
    try:
        tracer.start_span("taken").end()
        assert exporter.exporting.wait(timeout=10), "the worker never exported the first span"
        for index in range(10):
            tracer.start_span(f"queued or dropped {index}").end()
        assert registry.get_sample_value("shopmesh_spans_dropped_total") == before + 8
        assert registry.get_sample_value("shopmesh_spans_export_failed_total") is not None
    finally:
        exporter.release.set()
        provider.shutdown()
    # The two queued were exported once the exporter came back: nothing more counted as dropped.
    assert registry.get_sample_value("shopmesh_spans_dropped_total") == before + 8
    assert os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) == switch, "the SDK's switch is left as found"


def test_a_processor_made_while_another_is_being_made_sees_the_sdk_switch_on_and_leaves_it_as_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's internal-metrics switch is a process-wide variable, set around a processor's construction and
    put back. Two made at once undid each other: the first, done, unset it under the second, whose processor then
    counted no drops, and the second put back the "true" it had found, on for the process."""
    monkeypatch.delenv(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, raising=False)
    second_inside = threading.Event()
    first_done = threading.Event()
    seen: list[str | None] = []

    def make_the_second() -> None:
        with _sdk_internal_metrics():
            second_inside.set()
            first_done.wait(timeout=10)
            seen.append(os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED))

    second = threading.Thread(target=make_the_second)
    with _sdk_internal_metrics():
        second.start()
        # Without the lock the second is inside at once; with it, it waits for this one, and this wait runs out.
        second_inside.wait(timeout=1)
    first_done.set()
    second.join(timeout=10)
    assert not second.is_alive()
    assert seen == ["true"], "the second processor was made with the switch off"
    assert os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) is None, "the switch was left on"
