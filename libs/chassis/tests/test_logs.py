"""Logs: JSON lines with trace ids, written by a thread of their own so a blocked stderr never blocks
the event loop, and nothing queued is lost at exit."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import logs
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.logs import MAX_PENDING_LINES, RepeatLimitFilter, configure_logging, flush_logs
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.testing import free_port, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, binding
from shopmesh_chassis.tracing import configure_tracing, shutdown_tracing

from .conftest import sample_settings


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    flush_logs()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_line_is_json_with_the_callers_trace_and_span_ids() -> None:
    out = io.StringIO()
    configure_logging("sample", stream=out)
    span = TracerProvider().get_tracer("test").start_span("work")

    with trace.use_span(span, end_on_exit=True):
        logging.getLogger("shopmesh.test").info("order %s confirmed", "ord_1", extra={"order_id": "ord_1"})
    flush_logs()  # the writer thread has written everything once this returns
    line = json.loads(out.getvalue().strip())
    assert line["message"] == "order ord_1 confirmed"
    assert line["service"] == "sample"
    assert line["order_id"] == "ord_1"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


# 2026-12-05T14:39:33.904 UTC, 20:09:33.904 in the zone above.
_CREATED = 1_796_481_573.904


@pytest.mark.usefixtures("away_from_utc")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_lines_time_is_iso_8601_in_utc_with_its_marker_whatever_the_local_zone(fmt: str) -> None:
    """The logging module writes local time without an offset: off UTC, lines disagreed with `make traces`
    and the tracing backend (UTC), and across pods set to different zones, with nothing to say so."""
    out = io.StringIO()
    configure_logging("sample", fmt=fmt, stream=out)
    record = logging.makeLogRecord(
        {"name": "shopmesh.test", "levelno": logging.INFO, "levelname": "INFO", "msg": "order confirmed"}
    )
    record.created, record.msecs = _CREATED, 904.0
    logging.getLogger("shopmesh.test").handle(record)
    flush_logs()
    line = out.getvalue().strip()
    written = json.loads(line)["time"] if fmt == "json" else line.split()[0]
    assert written == "2026-12-05T14:39:33.904Z"


def test_a_blocked_stderr_does_not_block_the_caller_and_lost_lines_are_counted() -> None:
    read_end, write_end = os.pipe()
    blocked = os.fdopen(write_end, "w", buffering=1)
    configure_logging("sample", stream=blocked)
    log = logging.getLogger("shopmesh.test")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logs._NonBlockingQueueHandler)
    # Nobody reads the pipe. Far more than it holds (64 KiB) plus the queue: with a direct write the
    # caller would hang at the first full pipe. It returns; the writer thread is the one that waits.
    done = threading.Event()

    def flood() -> None:
        for i in range(MAX_PENDING_LINES + 2000):
            log.info("line %d", i)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(timeout=60), "logging blocked the caller"
    assert handler.dropped > 0

    written: list[bytes] = []
    reader = threading.Thread(target=lambda: written.extend(iter(lambda: os.read(read_end, 65536), b"")), daemon=True)
    reader.start()  # the pipe drains, the writer thread catches up
    for _ in range(600):
        if handler.queue.empty():  # type: ignore[attr-defined]
            break
        time.sleep(0.05)
    log.info("after the jam")
    flush_logs()
    blocked.close()
    reader.join(timeout=30)
    os.close(read_end)
    lines = [json.loads(line) for line in b"".join(written).decode().splitlines()]
    assert [line["message"] for line in lines][-1] == "after the jam"
    # Every line the flood lost is counted on a line that got through after it.
    lost = MAX_PENDING_LINES + 2000 - sum(1 for line in lines if str(line["message"]).startswith("line "))
    assert lost > 0
    assert sum(int(line.get("dropped_log_lines", 0)) for line in lines) == lost


def test_lines_still_queued_at_exit_are_written() -> None:
    program = (
        "import logging\n"
        "from shopmesh_chassis.logs import configure_logging\n"
        "configure_logging('sample')\n"
        "for i in range(2000): logging.getLogger('x').info('line %d', i)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert messages == [f"line {i}" for i in range(2000)]


def test_a_callers_malformed_tracestate_is_no_log_line_and_keeps_its_traceparent() -> None:
    out = io.StringIO()
    configure_logging("sample", stream=out)
    carrier = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "=,=;forged line\nINJECTED"}
    context = propagate.extract(carrier)
    flush_logs()
    assert out.getvalue() == ""
    assert trace.get_current_span(context).get_span_context().trace_id == int("a" * 32, 16)


async def test_oversized_traceparents_on_many_calls_are_served_and_logged_once() -> None:
    out = io.StringIO()
    configure_logging("sample", stream=out)
    oversized = (("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 600),)
    calls = 40
    async with (
        serve_in_process(sample_settings(), [binding()], tracer_provider=TracerProvider()) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None, tracing=False)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for i in range(calls):
            reply = await stub.Echo(sample_pb2.EchoRequest(message=f"hi {i}"), metadata=oversized)
            assert reply.message == f"hi {i}"
    flush_logs()
    warned = [line for line in map(json.loads, out.getvalue().splitlines()) if "traceparent" in line["message"]]
    # One line per minute at most: the calls above take far less than a minute on any machine, but the bound
    # allows for a second window rather than relying on that.
    assert 1 <= len(warned) <= 2, warned
    assert {line["logger"] for line in warned} == {"opentelemetry.trace.propagation.tracecontext"}


def test_a_repeated_warning_is_held_back_for_its_window_and_the_next_one_counts_what_was_held() -> None:
    now = [0.0]
    limit = RepeatLimitFilter(window=60.0, clock=lambda: now[0])

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (512,), None)

    first = record("otel", "header exceeded %d")
    assert limit.filter(first)
    assert not hasattr(first, "suppressed_log_lines")
    assert [limit.filter(record("otel", "header exceeded %d")) for _ in range(5)] == [False] * 5
    # Another message, or the same one from another logger, has a window of its own.
    assert limit.filter(record("otel", "other header exceeded %d"))
    assert limit.filter(record("elsewhere", "header exceeded %d"))
    now[0] = 60.0
    after = record("otel", "header exceeded %d")
    assert limit.filter(after)
    assert after.suppressed_log_lines == 5  # type: ignore[attr-defined]
    assert not limit.filter(record("otel", "header exceeded %d"))


def test_a_repeat_limit_filter_counts_at_most_its_cap_of_templates_and_lets_the_rest_through() -> None:
    """A library that formatted each caller's header into its message would make every header a template of its
    own: past MAX_REPEAT_KEYS the filter stops remembering new ones (its table stays bounded) and lets them
    through, rather than growing with what callers send."""
    repeat_filter = logs.RepeatLimitFilter(window=60.0, clock=lambda: 0.0)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.x", logging.WARNING, __file__, 1, message, None, None)

    for i in range(logs.MAX_REPEAT_KEYS):
        assert repeat_filter.filter(record(f"header {i}"))
    assert not repeat_filter.filter(record("header 0")), "a template it counts is still held back"
    assert all(repeat_filter.filter(record("one more header")) for _ in range(3)), "past the cap: let through"
    assert len(repeat_filter._seen) == logs.MAX_REPEAT_KEYS


def test_a_collector_away_is_counted_per_span_lost_and_logged_once_a_minute_not_per_export() -> None:
    """A collector outage: every batch's export fails, each after a retry. The OTLP exporter logged a WARNING
    (transient error, retrying) and an ERROR (failed to export) for every batch, every few seconds for the
    outage's length, and nothing in /metrics said spans were being lost. Now its lines come once a minute per
    template, and shopmesh_spans_export_failed_total counts the spans whose export failed."""
    out = io.StringIO()
    configure_logging("sample", stream=out)
    metrics = ServerMetrics()
    before = metrics.registry.get_sample_value("shopmesh_spans_export_failed_total")
    assert before is not None, "the counter is exported before any failure, at 0 for a new process"
    # Nobody listens there: each attempt is refused at once (UNAVAILABLE). Within 2 s the exporter retries
    # once (backing off ~1 s) and gives up at the next, whose back-off outlasts its timeout.
    provider = configure_tracing("sample", f"http://127.0.0.1:{free_port()}", export_timeout=2.0)
    tracer = provider.get_tracer("test")
    batches = 3
    for _ in range(batches):
        tracer.start_span("work").end()
        provider.force_flush(timeout_millis=10_000)
    shutdown_tracing(provider)
    assert metrics.registry.get_sample_value("shopmesh_spans_export_failed_total") == before + batches
    flush_logs()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    exporter = [line for line in lines if line["logger"] == "opentelemetry.exporter.otlp.proto.grpc.exporter"]
    failed = [line for line in exporter if line["message"].startswith("Failed to export")]
    retried = [line for line in exporter if line["message"].startswith("Transient error")]
    # The batches take seconds: one window of 60, and the bound allows for a second rather than rely on it.
    assert 1 <= len(failed) <= 2, failed
    assert len(retried) <= 2, retried
    assert {line["level"] for line in failed} == {"ERROR"}
