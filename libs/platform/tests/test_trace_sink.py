"""The trace sink's file: every exported span kept as a line, rotated by size so a long-running stack keeps
the latest spans in bounded space, and read back across the rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from shopmesh_platform.trace_sink import ROTATED_FILE, SPANS_FILE, SpanFile
from shopmesh_platform.traces import load


def export(trace: int, spans: int) -> trace_service_pb2.ExportTraceServiceRequest:
    """One export of `spans` spans of trace number `trace`, from the catalog."""
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="catalog"))])
    batch = [
        Span(
            trace_id=trace.to_bytes(16, "big"),
            span_id=(trace * 1000 + n + 1).to_bytes(8, "big"),
            name=f"/shopmesh.catalog.v1.CatalogService/GetProduct#{n}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=1_000 + n,
            end_time_unix_nano=2_000 + n,
        )
        for n in range(spans)
    ]
    scope = ScopeSpans(spans=batch)
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])]
    )


async def test_spans_rotate_by_size_and_are_read_back_from_both_files(tmp_path: Path) -> None:
    sink = SpanFile(tmp_path, max_bytes=4_000)
    context = cast(Any, None)
    try:
        for trace in range(1, 7):
            await sink.Export(export(trace, 5), context)
    finally:
        sink.close()
    current, rotated = tmp_path / SPANS_FILE, tmp_path / ROTATED_FILE
    assert rotated.is_file(), "the file never rotated"
    assert current.stat().st_size <= 4_000
    assert rotated.stat().st_size <= 4_000
    assert not (tmp_path / f"{SPANS_FILE}.2").exists(), "more than one old file is kept"
    traces = load(tmp_path)
    # The newest traces are there, whole (an export is never split between the files); the oldest went.
    assert traces[-1].trace_id == (6).to_bytes(16, "big").hex()
    assert all(len(t.spans) == 5 for t in traces)
    assert 2 <= len(traces) < 6
    lines = [line for path in (rotated, current) for line in path.read_text().splitlines()]
    assert len(lines) == 5 * len(traces), "a partial or empty line"


async def test_a_sink_started_after_one_killed_mid_write_keeps_its_own_spans_whole(tmp_path: Path) -> None:
    # The last run's sink stopped half-way through a line; this run's first export must not be glued to it.
    (tmp_path / SPANS_FILE).write_text('{"trace_id": "0001", "span_id": "00')
    sink = SpanFile(tmp_path)
    try:
        await sink.Export(export(7, 2), cast(Any, None))
    finally:
        sink.close()
    [trace] = load(tmp_path)
    assert trace.trace_id == (7).to_bytes(16, "big").hex()
    assert len(trace.spans) == 2


async def test_a_spans_links_are_kept_with_it(tmp_path: Path) -> None:
    request = export(1, 1)
    [sent] = request.resource_spans[0].scope_spans[0].spans
    sent.links.add(trace_id=(9).to_bytes(16, "big"), span_id=(99).to_bytes(8, "big"))
    sink = SpanFile(tmp_path)
    try:
        await sink.Export(request, cast(Any, None))
    finally:
        sink.close()
    [trace] = load(tmp_path)
    assert [span["links"] for span in trace.spans] == [
        [{"trace_id": (9).to_bytes(16, "big").hex(), "span_id": (99).to_bytes(8, "big").hex()}]
    ]
