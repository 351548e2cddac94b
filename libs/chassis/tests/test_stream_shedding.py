"""Streaming calls (health Watch, server reflection) count against GRPC_MAX_CONCURRENT_RPCS as unary ones do, and
at most a tenth of it: past that share a stream is shed as a unary call is (RESOURCE_EXHAUSTED SERVER_OVERLOADED,
RetryInfo, trailers-only, counted shed), while unary calls are still served up to the rest of the limit. The
interceptor passed streams through uncounted: with gRPC core's overload protection off, streams opened and reset
at will (HTTP/2 rapid reset) had handlers running past any bound, and a long-lived Watch took no place at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.grpc_errors import answered_shed, details_of
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.server_interceptor import SHED_RETRY_AFTER_SECONDS, STREAMS_SHARE
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import binding

from .conftest import ECHO, Holding, sample_settings

LIMIT = 20
STREAMS = LIMIT // STREAMS_SHARE
SLOW = sample_pb2.EchoRequest(message="slow")
WATCH = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def holding() -> Holding:
    return Holding(SLOW.message)


@pytest.fixture
async def limited(holding: Holding) -> AsyncIterator[ChassisServer]:
    async with serve_in_process(sample_settings(grpc_max_concurrent_rpcs=LIMIT), [binding(holding)]) as server:
        yield server


def sample(server: ChassisServer, name: str, labels: dict[str, str], **more: str) -> float:
    return server.metrics.registry.get_sample_value(name, {**labels, **more}) or 0.0


async def open_watch(health: Any) -> Any:
    """A Watch in its handler: its first status read."""
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    return watch


async def refusal_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    # Trailers-only, like every error of the chassis.
    assert not await call.initial_metadata()
    return refused.value


def assert_shed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
    details = details_of(error)
    assert details.reason == "SERVER_OVERLOADED"
    assert details.retry_delay_seconds == pytest.approx(SHED_RETRY_AFTER_SECONDS)
    assert answered_shed(error)


async def test_streams_past_their_share_of_the_limit_are_shed_as_unary_calls_are_and_unary_calls_still_served(
    limited: ChassisServer, holding: Holding
) -> None:
    assert limited.interceptor.max_streams == STREAMS >= 1
    async with grpc.aio.insecure_channel(limited.address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        watches = [await open_watch(health) for _ in range(STREAMS)]

        assert_shed(await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        reflection = channel.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        assert_shed(await refusal_of(reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        await eventually(
            lambda: (
                sample(limited, "shopmesh_grpc_server_shed_total", WATCH) == 1
                and sample(limited, "grpc_server_handled_total", WATCH, grpc_code="RESOURCE_EXHAUSTED") == 1
            ),
            "the refused Watch counted shed",
        )

        # The watchers starve no unary call: the rest of the limit is theirs, and one more is shed.
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        unary = LIMIT - STREAMS
        busy = [asyncio.ensure_future(stub.Echo(SLOW, timeout=60)) for _ in range(unary)]
        await eventually(
            lambda: sample(limited, "grpc_server_in_flight_requests", ECHO) == unary, "the unary calls in handlers"
        )
        assert not any(call.done() for call in busy)
        with pytest.raises(grpc.aio.AioRpcError) as one_more:
            await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        assert_shed(one_more.value)

        # A stream ended gives its place back: once its handler has returned, a Watch is taken again...
        holding.release.set()
        await asyncio.wait_for(asyncio.gather(*busy), timeout=60)
        watches.pop().cancel()
        await eventually(_watch_taken(health), "a Watch served once one ended")
    await eventually(
        lambda: sample(limited, "shopmesh_grpc_server_shed_total", ECHO) == 1, "the refused Echo counted shed"
    )


def _watch_taken(health: Any) -> Any:
    async def taken() -> bool:
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        try:
            await watch.read()
        except grpc.aio.AioRpcError as refused:
            assert_shed(refused)
            return False
        finally:
            watch.cancel()
        return True

    return taken


async def test_a_stream_is_shed_while_unary_calls_hold_the_whole_limit(
    limited: ChassisServer, holding: Holding
) -> None:
    """One bound for every handler of the replica: streams are no way around it."""
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = [asyncio.ensure_future(stub.Echo(SLOW, timeout=60)) for _ in range(LIMIT)]
        await eventually(
            lambda: sample(limited, "grpc_server_in_flight_requests", ECHO) == LIMIT, "the unary calls in handlers"
        )
        health: Any = health_pb2_grpc.HealthStub(channel)
        assert_shed(await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        # Health Check, what probes ask, is still never shed.
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        holding.release.set()
        await asyncio.wait_for(asyncio.gather(*busy), timeout=60)
        watch = await open_watch(health)
        watch.cancel()
