"""Traces with a collector of your own (`OTEL_EXPORTER_OTLP_ENDPOINT` set as the stack starts, no local trace
sink): the Envoys (the HTTP edge, and under the mesh every sidecar) export their spans there too, not only the
services, so an HTTP call's trace still starts at the edge and shows each hop through the mesh. The collector
here is the trace sink's span file served on a free port of the test's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from shopmesh_chassis.testing import eventually
from shopmesh_platform.stack import HTTP_API, Stack
from shopmesh_platform.trace_sink import SpanFile
from shopmesh_platform.traces import load

# The edge's call of the catalog, through the gateway: nothing more needs to run.
SERVICES = ["gateway", "catalog", "inventory"]


@pytest_asyncio.fixture
async def collector(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An OTLP/gRPC receiver on a free port: its `host:port`, and the folder of the spans it received."""
    folder = tmp_path / "collector"
    spans = SpanFile(folder)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", folder
    finally:
        await server.stop(grace=None)
        spans.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("mesh", "endpoint_form"),
    [pytest.param(False, "http://{}", id="edge"), pytest.param(True, "{}", id="mesh-bare-host-port")],
)
async def test_an_http_call_is_traced_from_the_edge_into_your_own_collector(
    tmp_path: Path,
    collector: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    mesh: bool,
    endpoint_form: str,
) -> None:
    address, folder = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint_form.format(address))
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with Stack.for_tests(tmp_path / "stack", services=SERVICES, http=True, mesh=mesh) as stack:
        assert stack.sinks == [], "the collector is the caller's: no trace sink"
        assert stack.http_url is not None
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=10) as http:
            response = await http.get("/v1/products/prod_chef_knife", headers={"traceparent": traceparent})
        assert response.status_code == 200, response.text

        def spans() -> list[dict[str, Any]] | None:
            found = [span for trace in load(folder) if trace.trace_id == trace_id for span in trace.spans]
            services = {span["service"] for span in found}
            wanted = {HTTP_API, "gateway", *(["gateway-sidecar"] if mesh else [])}
            return found if wanted <= services else None

        # Envoy exports every 5 s, the services as often: the trace is whole within a few seconds.
        trace = await eventually(lambda: asyncio.to_thread(spans), "the edge's and the gateway's spans", timeout=60)
    by_id = {span["span_id"]: span for span in trace}
    [edge] = [span for span in trace if span["service"] == HTTP_API]
    [gateway] = [span for span in trace if span["service"] == "gateway" and span["kind"] == "server"]
    parent = by_id[gateway["parent_span_id"]]
    if mesh:
        # The hop through the gateway's sidecar, between the edge and the gateway.
        assert (parent["service"], parent["kind"]) == ("gateway-sidecar", "server"), parent
        parent = by_id[parent["parent_span_id"]]
    assert parent["span_id"] == edge["span_id"]
