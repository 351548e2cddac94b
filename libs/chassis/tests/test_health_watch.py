"""An open health Watch stream (a client-side health checker, a mesh's probe) tells its watcher the server is
going, then ends with the drain: the library's Watch never ended, and held every drain for the whole grace."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.sample_service import binding

from .conftest import sample_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# Far longer than the test's own bounds: a drain that waited for it would fail the test, not slow it.
GRACE_SECONDS = 600.0
BOUND_SECONDS = 60.0


@contextlib.asynccontextmanager
async def served_for_a_drain() -> AsyncIterator[tuple[ChassisServer, grpc.aio.Channel, Any]]:
    """The sample service with no drain delay and a grace no test waits out; a channel to it and its health stub."""
    settings = sample_settings(
        shutdown_grace_seconds=GRACE_SECONDS, shutdown_hooks_budget_seconds=GRACE_SECONDS + 10, drain_delay_seconds=0
    )
    async with (
        serve_in_process(settings, [binding()]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield server, channel, health_pb2_grpc.HealthStub(channel)  # typeshed types the sync stub only


async def test_an_open_watch_hears_not_serving_then_ends_with_the_drain_instead_of_holding_it() -> None:
    async with served_for_a_drain() as (server, channel, health):
        overall = health.Watch(health_pb2.HealthCheckRequest(), timeout=BOUND_SECONDS * 2)
        sample = health.Watch(
            health_pb2.HealthCheckRequest(service="shopmesh.sample.v1.SampleService"), timeout=BOUND_SECONDS * 2
        )
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=BOUND_SECONDS * 2)
        assert [(await w.read()).status for w in (overall, sample, unknown)] == [SERVING, SERVING, SERVICE_UNKNOWN]
        # A watch still serves its purpose: another call on the same server is answered as before.
        echoed = await sample_pb2_grpc.SampleServiceStub(channel).Echo(sample_pb2.EchoRequest(message="hi"))
        assert echoed.message == "hi"
        drain = asyncio.create_task(server.drain())
        async with asyncio.timeout(BOUND_SECONDS):
            assert [(await w.read()).status for w in (overall, sample)] == [NOT_SERVING, NOT_SERVING]
            # A name the server does not serve stays unknown: the watcher heard all it will.
            assert [await w.read() for w in (overall, sample, unknown)] == [grpc.aio.EOF] * 3
            assert [await w.code() for w in (overall, sample, unknown)] == [grpc.StatusCode.OK] * 3
            await drain


async def test_a_watch_that_heard_unknown_then_serving_is_ended_only_after_it_heard_not_serving() -> None:
    """SERVICE_UNKNOWN is a last word only while it is the last status written: a name registered after its
    Watch opened is served, and end_watches must leave its stream open until NOT_SERVING went out on it."""
    async with served_for_a_drain() as (server, channel, health):
        late = health.Watch(health_pb2.HealthCheckRequest(service="late.Service"), timeout=BOUND_SECONDS * 2)
        async with asyncio.timeout(BOUND_SECONDS):
            assert (await late.read()).status == SERVICE_UNKNOWN
            await server.health.set("late.Service", SERVING)
            assert (await late.read()).status == SERVING
            # Asked to end before the drain's NOT_SERVING: a stream that last said SERVING stays open meanwhile
            # (the call answered here gives a wrongly ended stream all the time it needs to end).
            server.health.end_watches()
            echoed = await sample_pb2_grpc.SampleServiceStub(channel).Echo(sample_pb2.EchoRequest(message="hi"))
            assert echoed.message == "hi"
            drain = asyncio.create_task(server.drain())
            assert (await late.read()).status == NOT_SERVING
            assert await late.read() == grpc.aio.EOF
            assert await late.code() == grpc.StatusCode.OK
            await drain
