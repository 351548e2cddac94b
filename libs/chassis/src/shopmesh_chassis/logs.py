"""Structured logs: one JSON object a line, carrying the service name and the current trace/span ids.

Records are formatted where they are logged (the trace ids live in the caller's context) and written
to stderr by a thread of their own (the standard library's QueueHandler / QueueListener): a write to
stderr is a system call that wakes whoever reads the pipe, and when that reader falls behind (a slow
log collector, a full pipe) it blocks. On the event loop's thread that would stop every call the
service is serving; here it only delays the log.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import QueueHandler, QueueListener
from typing import TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

# How many formatted lines may wait for the writer thread before new ones are dropped (and counted):
# memory stays bounded when stderr stays blocked.
MAX_PENDING_LINES = 10_000
# At exit, how long the queued lines may take to be written before the process leaves without them
# (stderr blocked for good must not keep a stopping service alive).
FLUSH_SECONDS = 5.0
# OpenTelemetry's W3C trace-context propagator warns on every header it refuses for its length (a
# `traceparent` past 512 characters, an oversized `tracestate`), and any client may send one on every call (the
# HTTP edge passes them on from the public): unbounded, a stranger decides how many lines each service writes.
# The propagator ignores such a header all the same (the call starts a trace of its own), so one line a minute
# says it happens, and the count says how often. The baggage propagator's logger is held to the same rule,
# though the chassis installs no baggage propagator today: one added later is covered from its first call.
PROPAGATION_LOGGERS = ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.baggage.propagation")
# The OTLP exporter logs a WARNING for each retry (`Transient error StatusCode.UNAVAILABLE ... retrying`) and an
# ERROR for each batch it gives up (`Failed to export traces ...`), and the batch processor a WARNING for each
# span its full queue drops: with the collector away, lines every few seconds (per span, under load) from every
# service for the outage's length. One line a minute per message says it lasts; shopmesh_spans_export_failed_total
# (metrics.py) counts the spans lost to failed exports.
EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter", "opentelemetry.sdk._shared_internal")
REPEAT_WINDOW_SECONDS = 60.0
# Templates a RepeatLimitFilter keeps count of. OpenTelemetry's are a handful of fixed strings; a release that
# formatted the caller's header into the message would make each header a key of its own, so past this many
# keys new ones are let through uncounted rather than remembered.
MAX_REPEAT_KEYS = 64


class RepeatLimitFilter(logging.Filter):
    """Lets one record through per logger and message template per `window` seconds and counts the others:
    the next one let through carries `suppressed_log_lines`, how many were held back before it.

    Keyed by the template (`record.msg`, before its arguments), not the formatted text: the templates are a
    fixed set in the library's code, so the table stays small whatever the callers send; it never holds more
    than MAX_REPEAT_KEYS of them (records of any further template are let through, not counted)."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()  # records come from the event loop and from worker threads alike
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (when one last got through, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        with self._lock:
            now = self._clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self._window:
                self._seen[key] = (seen[0], seen[1] + 1)
                return False
            if seen is not None or len(self._seen) < MAX_REPEAT_KEYS:
                self._seen[key] = (now, 0)
        if seen is not None and seen[1]:
            record.suppressed_log_lines = seen[1]  # a field of its own in the JSON line
        return True


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` of the active span (empty outside a span) to every record."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = self._service
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = ""
            record.span_id = ""
        return True


class _NonBlockingQueueHandler(QueueHandler):
    """Hands formatted records to the writer thread and never waits for it.

    When the queue is full the record is dropped; the next record that gets through carries
    `dropped_log_lines`, how many went missing before it."""

    def __init__(self, pending: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(pending)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if self.dropped:
            record.dropped_log_lines = self.dropped  # a field of its own in the JSON line
        prepared: logging.LogRecord = super().prepare(record)
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        else:
            self.dropped = 0


class _Writer(QueueListener):
    """The standard listener, with a bounded stop: `QueueListener.stop` would wait forever for a writer
    stuck on a blocked stderr, and its end-of-queue marker raises when the queue is full."""

    def __init__(self, pending: queue.Queue[logging.LogRecord | None], *handlers: logging.Handler) -> None:
        super().__init__(pending, *handlers)
        self._pending = pending

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._pending.put(None, timeout=FLUSH_SECONDS)  # None: the listener's end-of-queue marker
        thread.join(FLUSH_SECONDS)  # a daemon thread: the process can leave without it
        self._thread = None


_listener: _Writer | None = None


def _in_utc(formatter: logging.Formatter) -> logging.Formatter:
    """`formatter` writing `asctime` as ISO 8601 in UTC with its marker ("2026-12-05T14:39:33.904Z"), not the
    logging module's local time without an offset: a pod's or a laptop's zone would otherwise shift its lines
    against the other services', against `make traces` and against the tracing backend, with nothing to say so."""
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure_logging(service_name: str, level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (stderr) in the chosen format; replaces handlers set earlier."""
    global _listener
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(trace_id)s %(span_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(trace_id)s] %(message)s")
    formatter = _in_utc(formatter)
    pending: queue.Queue[logging.LogRecord | None] = queue.Queue(MAX_PENDING_LINES)
    handler = _NonBlockingQueueHandler(pending)
    handler.addFilter(TraceContextFilter(service_name))
    handler.setFormatter(formatter)  # QueueHandler.prepare formats here, in the caller's thread
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))  # the line, as formatted above
    if _listener is not None:
        _listener.stop()
    _listener = _Writer(pending, writer)
    _listener.start()
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # OpenTelemetry warns for every malformed tracestate it parses, quoting it, and any client may send one
    # (the gateway's HTTP edge takes trace context from the public): a log line per call, worded by a stranger.
    # The propagator drops such a tracestate all the same, and the call keeps its traceparent.
    logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
    limit_repeats(*PROPAGATION_LOGGERS, *EXPORT_LOGGERS)


def limit_repeats(*names: str, window: float = REPEAT_WINDOW_SECONDS) -> None:
    """Holds the loggers `names` to one line per message template a `window` (one RepeatLimitFilter for them all),
    replacing a limit they had: for warnings that a lasting condition would repeat on every call."""
    limit = RepeatLimitFilter(window)
    for name in names:
        logger = logging.getLogger(name)
        for earlier in [f for f in logger.filters if isinstance(f, RepeatLimitFilter)]:
            logger.removeFilter(earlier)  # configured again (tests, a restart in-process): one limit, not two
        logger.addFilter(limit)


def flush_logs() -> None:
    """Write every queued line and stop the writer thread (at exit; logging again restarts nothing)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(flush_logs)
