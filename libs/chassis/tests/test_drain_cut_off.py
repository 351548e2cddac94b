"""A drain whose grace ends with calls still in flight says so, naming how many and which methods: grpc cancels
them (their callers get UNAVAILABLE) and the log said only "stopped", as after a clean stop."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import binding

from .conftest import ECHO as ECHO_LABELS
from .conftest import Holding, sample_settings

ECHO = "/shopmesh.sample.v1.SampleService/Echo"
IN_FLIGHT = "grpc_server_in_flight_requests"
BOUND_SECONDS = 30.0


def drain_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shopmesh.server" and r.levelno >= logging.WARNING]


async def test_a_grace_that_ends_with_calls_in_flight_logs_one_warning_naming_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    servicer = Holding(held="held")
    settings = sample_settings(shutdown_grace_seconds=0.3, drain_delay_seconds=0)
    async with (
        serve_in_process(settings, [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        calls = [stub.Echo(sample_pb2.EchoRequest(message="held"), timeout=BOUND_SECONDS) for _ in range(2)]
        async with asyncio.timeout(BOUND_SECONDS):
            # Both in the handler, not still on their way.
            await eventually(lambda: server.metrics.registry.get_sample_value(IN_FLIGHT, ECHO_LABELS) == 2, "2 held")
            await server.drain()
            codes = [await call.code() for call in calls]
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
    [warning] = drain_warnings(caplog)
    assert (warning.calls_cut_off, warning.grpc_methods) == (2, [ECHO])  # type: ignore[attr-defined]
    assert "2 calls in flight" in warning.getMessage()
    assert f"{ECHO} (2)" in warning.getMessage()


async def test_a_drain_whose_calls_finish_within_the_grace_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    servicer = Holding(held="held")
    settings = sample_settings(
        shutdown_grace_seconds=BOUND_SECONDS, shutdown_hooks_budget_seconds=BOUND_SECONDS + 10, drain_delay_seconds=0
    )
    async with (
        serve_in_process(settings, [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        call = sample_pb2_grpc.SampleServiceStub(channel).Echo(
            sample_pb2.EchoRequest(message="held"), timeout=BOUND_SECONDS
        )
        async with asyncio.timeout(BOUND_SECONDS):
            await servicer.arrived.wait()
            drain = asyncio.create_task(server.drain())
            await asyncio.sleep(0.1)  # in flight as the drain waits for it
            assert not drain.done()
            servicer.release.set()
            assert (await call).message == "held"
            await drain
    assert drain_warnings(caplog) == []
