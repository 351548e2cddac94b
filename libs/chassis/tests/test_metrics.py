"""The metrics endpoint serves request counters, latency histograms and in-flight gauges."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.consumer import EventConsumer
from shopmesh_chassis.db import Database
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.outbox import OutboxRelay
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, binding

from .conftest import ECHO, Holding, sample_settings


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_endpoint_counts_requests_by_method_and_code() -> None:
    async with (
        serve_in_process(sample_settings(metrics_port=0), [binding()]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(3):
            await stub.Echo(sample_pb2.EchoRequest(message="m"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Fail(sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_NOT_FOUND))
        assert server.metrics_port
        metrics_port = server.metrics_port

        # The status reaches the client as the handler aborts; the counters move a moment later.
        async def counted_the_failure() -> str | None:
            text = await asyncio.to_thread(scrape, metrics_port)
            return text if 'grpc_code="NOT_FOUND",grpc_method="Fail"' in text else None

        text = await eventually(counted_the_failure, "the failed call counted")

    labels = 'grpc_method="Echo",grpc_service="shopmesh.sample.v1.SampleService",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 3.0' in text
    assert f"grpc_server_started_total{{{labels}}} 3.0" in text
    assert f"grpc_server_handling_seconds_count{{{labels}}} 3.0" in text
    assert f"grpc_server_in_flight_requests{{{labels}}} 0.0" in text
    assert (
        'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="Fail",'
        'grpc_service="shopmesh.sample.v1.SampleService",grpc_type="unary"} 1.0'
    ) in text


class SettingItsCode(SampleServicer):
    """Echo answers with a code set on the context, then returns a response or None, as grpc.aio lets a handler."""

    def __init__(self, returns: sample_pb2.EchoResponse | None) -> None:
        super().__init__()
        self.returns = returns

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse | None:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such echo")
        return self.returns


@pytest.mark.parametrize("returns", [sample_pb2.EchoResponse(), None], ids=["a-response", "none"])
async def test_a_unary_call_whose_handler_set_its_code_and_returned_is_answered_and_counted_under_that_code(
    returns: sample_pb2.EchoResponse | None,
) -> None:
    async with (
        serve_in_process(sample_settings(metrics_port=0), [binding(SettingItsCode(returns))]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(sample_pb2.EchoRequest(message="m"))
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        assert server.metrics_port
        metrics_port = server.metrics_port

        async def counted() -> str | None:
            text = await asyncio.to_thread(scrape, metrics_port)
            handled = [line for line in text.splitlines() if line.startswith("grpc_server_handled_total{")]
            return text if any('grpc_method="Echo"' in line for line in handled) else None

        text = await eventually(counted, "the call counted")

    labels = 'grpc_method="Echo",grpc_service="shopmesh.sample.v1.SampleService",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="NOT_FOUND",{labels}}} 1.0' in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}}' not in text


async def test_the_server_and_its_metrics_listen_on_an_ipv6_address() -> None:
    # GRPC_HOST / METRICS_HOST as a user writes them for an IPv6-only or dual-stack cluster.
    settings = sample_settings(grpc_host="::1", metrics_host="::1", metrics_port=0)
    async with (
        serve_in_process(settings, [binding()]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        assert server.address == f"[::1]:{server.port}"
        response = await sample_pb2_grpc.SampleServiceStub(channel.channel).Echo(sample_pb2.EchoRequest(message="v6"))
        assert response.message == "v6"
        assert server.metrics_port
        text = await asyncio.to_thread(scrape, server.metrics_port, "[::1]")
    assert 'grpc_server_started_total{grpc_method="Echo"' in text


async def test_a_call_whose_deadline_passes_in_the_handler_is_counted_as_deadline_exceeded() -> None:
    """The server was too slow for the caller's deadline: a server-side failure (ShopmeshServerErrors counts
    DEADLINE_EXCEEDED, docs/operations.md), not the caller's choice to cancel. Counted as CANCELLED, a
    service whose every call hangs past its callers' deadlines never raises that alert."""
    async with (
        serve_in_process(sample_settings(), [binding()]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        slow = sample_pb2.EchoRequest(message="slow", behaviour=sample_pb2.Behaviour(sleep_ms=2_000))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(slow, timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        def handled(code: str) -> float:
            sample = server.metrics.registry.get_sample_value("grpc_server_handled_total", {**ECHO, "grpc_code": code})
            return sample or 0.0

        await eventually(lambda: handled("DEADLINE_EXCEEDED") + handled("CANCELLED") > 0, "the call counted")
        assert handled("DEADLINE_EXCEEDED") == 1
        assert handled("CANCELLED") == 0


def handled(server: ChassisServer, code: str) -> float:
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", {**ECHO, "grpc_code": code}) or 0.0


class _HeadersLate:
    """A TCP relay in front of a server that, once told to, holds what the client sends next for `seconds`
    before passing it on, and passes everything after without delay: the next call's headers reach the server
    late, as on a loaded node, and the client's cancel at its deadline does not."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._hold: float | None = None
        self.port = 0

    def hold_next(self, seconds: float) -> None:
        self._hold = seconds

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_HeadersLate]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        async with asyncio.TaskGroup() as pumps:
            pumps.create_task(self._pump(client_reader, server_writer, holding=True))
            pumps.create_task(self._pump(server_reader, client_writer, holding=False))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, holding: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if holding and self._hold is not None:
                    # The bytes that come within the hold (the call's headers and message) go out together
                    # at its end, in order; TCP is a stream, so whatever comes after them waits no longer.
                    held, self._hold = self._hold, None
                    release = asyncio.get_running_loop().time() + held
                    while (left := release - asyncio.get_running_loop().time()) > 0:
                        with contextlib.suppress(TimeoutError):
                            chunk += await asyncio.wait_for(reader.read(65536), left)
                writer.write(chunk)
                await writer.drain()
        writer.close()


async def test_a_deadline_the_server_reckons_later_than_its_caller_is_still_counted_as_deadline_exceeded() -> None:
    """The caller's deadline passes first and its cancel reaches the handler while the server's own deadline,
    started when the late headers arrived, still shows time left: still the server's miss (a loaded node delays
    headers so; counted CANCELLED, its misses left the server-errors alert and the SLO exactly under load)."""
    late = DEADLINE_SKEW_TOLERANCE_SECONDS / 2
    servicer = Holding("slow")
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        _HeadersLate(server.port).running() as relay,
        ResilientChannel(f"127.0.0.1:{relay.port}", [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        # Connected first, so the hold delays the call's headers, not the connection's preface.
        await stub.Echo(sample_pb2.EchoRequest(message="warm"))
        relay.hold_next(late)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(sample_pb2.EchoRequest(message="slow"), timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        await eventually(lambda: servicer.cancelled.is_set(), "the handler cancelled")
        await eventually(
            lambda: handled(server, "DEADLINE_EXCEEDED") + handled(server, "CANCELLED") > 0, "the call counted"
        )
        assert handled(server, "DEADLINE_EXCEEDED") == 1
        assert handled(server, "CANCELLED") == 0


async def test_a_call_its_caller_cancels_long_before_its_deadline_is_counted_as_cancelled() -> None:
    servicer = Holding("slow")
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        # A deadline far longer than the test runs: the call ends by its caller's cancellation, nothing else.
        call = asyncio.ensure_future(stub.Echo(sample_pb2.EchoRequest(message="slow"), timeout=60))
        await eventually(lambda: servicer.arrived.is_set(), "the call at the server")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        await eventually(
            lambda: handled(server, "DEADLINE_EXCEEDED") + handled(server, "CANCELLED") > 0, "the call counted"
        )
        assert handled(server, "CANCELLED") == 1
        assert handled(server, "DEADLINE_EXCEEDED") == 0


OUTBOX_SERIES = [
    "shopmesh_outbox_oldest_unpublished_age_seconds",
    "shopmesh_outbox_relay_failures_created",
    "shopmesh_outbox_relay_failures_total",
    "shopmesh_outbox_relay_pass_timestamp_seconds",
    "shopmesh_outbox_set_aside_events",
    "shopmesh_outbox_stream_full",
    "shopmesh_outbox_unpublished_events",
]


def scraped_outbox_series(metrics: ServerMetrics) -> list[str]:
    port = metrics.serve("127.0.0.1", 0)
    try:
        text = scrape(port)
    finally:
        metrics.close()
    return sorted({line.split(" ")[0] for line in text.splitlines() if line.startswith("shopmesh_outbox_")})


class _NeverPublishes:
    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str]) -> bool:
        raise AssertionError("the relay is never started")


async def _never_handles(session: object, event: object) -> None:
    raise AssertionError("the consumer is never started")


def test_a_consume_only_service_exports_no_outbox_series_and_a_publisher_does(tmp_path: Path) -> None:
    # A relay-pass gauge at 0 in a service with no relay drew "last passed 56 years ago" on the dashboard.
    consumer_only = ServerMetrics()
    EventConsumer(
        Database(f"sqlite:///{tmp_path / 'consumer.db'}"),
        "nats://127.0.0.1:1",
        durable="notifications",
        stream="ORDERS",
        stream_subjects=["orders.v1.>"],
        subjects=["orders.v1.placed"],
        handler=_never_handles,
        metrics=consumer_only.events,
    )
    assert scraped_outbox_series(consumer_only) == []

    publisher = ServerMetrics()
    OutboxRelay(Database(f"sqlite:///{tmp_path / 'publisher.db'}"), _NeverPublishes(), metrics=publisher.outbox)
    assert scraped_outbox_series(publisher) == OUTBOX_SERIES
