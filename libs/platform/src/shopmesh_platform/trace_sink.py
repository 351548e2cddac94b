"""A local trace collector that keeps every span it receives in a file: the OTLP endpoint of `make run`,
in place of a tracing backend (Jaeger, Tempo) that would need a container engine.

    python -m shopmesh_platform.trace_sink --host 127.0.0.1 --port 14317 --dir .data/traces

It answers OTLP/gRPC `TraceService/Export` (what the services' exporter sends) and appends each span as
one JSON line to `<dir>/spans.jsonl`: trace and span ids, parent, service, name, kind, start and end
(Unix nanoseconds), status, attributes and links. `python -m shopmesh_platform.traces` (`make traces`) reads them,
skipping a line that a sink killed mid-write left half written (a new sink ends that line before appending).
When the file reaches MAX_FILE_BYTES it becomes `spans.jsonl.1` (replacing the one before) and a new file
starts, so a stack left running under `make shoppers` keeps the latest spans in at most twice that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .sink_process import run_sink
from .topology import LOCAL_TRACES_PORT

log = logging.getLogger("shopmesh.trace_sink")

SPANS_FILE = "spans.jsonl"
# The older spans, once SPANS_FILE reached MAX_FILE_BYTES.
ROTATED_FILE = f"{SPANS_FILE}.1"
MAX_FILE_BYTES = 64 * 1024 * 1024


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field is None:
        return None
    if field in ("array_value", "kvlist_value"):
        return MessageToDict(getattr(value, field))
    return getattr(value, field)


def span_records(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[dict[str, Any]]:
    """One flat, JSON-ready record per span of an export request."""
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "?"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "service": service,
                    "name": span.name,
                    "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_").lower(),
                    "status_message": span.status.message,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    # The spans of other traces this one is linked to (the outbox relay's send span, to its
                    # event's create span): what `make traces` shows it under.
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links],
                }


def _end_torn_line(path: Path) -> None:
    """End the last line of `path` if a sink killed mid-write left it half written: appended to, it would
    take this sink's first spans down with it (the reader skips a line that holds no whole span)."""
    with contextlib.suppress(FileNotFoundError), path.open("rb+") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return
        file.seek(-1, os.SEEK_END)
        if file.read(1) != b"\n":
            file.write(b"\n")


class SpanFile(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, directory: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / SPANS_FILE
        _end_torn_line(self.path)
        # The standard library's size-based rotation, used as a file writer: one record per export.
        self._file = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=1, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        records = [json.dumps(record, sort_keys=True) for record in span_records(request)]
        if records:
            # One write per export, appended (and rotated only between exports): a reader never sees half
            # a batch.
            self._file.emit(logging.makeLogRecord({"msg": "\n".join(records)}))
        return trace_service_pb2.ExportTraceServiceResponse()

    def close(self) -> None:
        self._file.close()


async def _serve(directory: Path, host: str, port: int, stop: asyncio.Event) -> None:
    server = grpc.aio.server()
    # The generated (untyped) registration function of opentelemetry-proto.
    spans = SpanFile(directory)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("trace sink listening on %s:%d (OTLP/gRPC), storing spans in %s", host, bound, directory / SPANS_FILE)
    await stop.wait()
    # The services flush their last spans as they stop, before the launcher stops the sink.
    await server.stop(grace=2)
    spans.close()
    log.info("trace sink stopped")


def main(argv: Sequence[str] | None = None) -> int:
    return run_sink(
        _serve,
        argv,
        prog="python -m shopmesh_platform.trace_sink",
        description="A local OTLP/gRPC trace collector that stores every span it receives in a file.",
        port=LOCAL_TRACES_PORT,
        directory=".data/traces",
    )


if __name__ == "__main__":
    sys.exit(main())
