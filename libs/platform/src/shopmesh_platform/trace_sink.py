"""A local trace collector that keeps every span it receives in a file: the OTLP endpoint of `make run`,
in place of a tracing backend (Jaeger, Tempo) that would need a container engine.

    python -m shopmesh_platform.trace_sink --host 127.0.0.1 --port 14317 --dir .data/traces

It answers OTLP/gRPC `TraceService/Export` (what the services' exporter sends) and appends each span as
one JSON line to `<dir>/spans.jsonl`: trace and span ids, parent, service, name, kind, start and end
(Unix nanoseconds), status and attributes. `python -m shopmesh_platform.traces` (`make traces`) reads them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .sink_process import run_sink, until_stopped
from .topology import LOCAL_TRACES_PORT

log = logging.getLogger("shopmesh.trace_sink")

SPANS_FILE = "spans.jsonl"


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
                }


class SpanFile(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / SPANS_FILE

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = [json.dumps(record, sort_keys=True) + "\n" for record in span_records(request)]
        # One write per export, appended: a reader never sees half a batch of lines from two writers.
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(lines))
        return trace_service_pb2.ExportTraceServiceResponse()


async def _serve(directory: Path, host: str, port: int) -> None:
    server = grpc.aio.server()
    # The generated (untyped) registration function of opentelemetry-proto.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(SpanFile(directory), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("trace sink listening on %s:%d (OTLP/gRPC), storing spans in %s", host, bound, directory / SPANS_FILE)
    await until_stopped()
    # The services flush their last spans as they stop, before the launcher stops the sink.
    await server.stop(grace=2)
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
