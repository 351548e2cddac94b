from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, SampleSettings, binding

# The metric labels of the sample service's Echo.
ECHO = {"grpc_type": "unary", "grpc_service": "shopmesh.sample.v1.SampleService", "grpc_method": "Echo"}


# A call Holding holds (see the `holding` fixture).
SLOW = sample_pb2.EchoRequest(message="slow")


def sample_settings(**overrides: Any) -> SampleSettings:
    return load_settings(SampleSettings, **{"grpc_port": 0, "metrics_port": -1, **overrides})


class Holding(SampleServicer):
    """Echo holds each call whose message is `held` until the test releases them or its caller cancels it, and
    says when one arrived and when one was cancelled; other calls are answered as SampleServicer answers them."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        if request.message == self.held:
            self.arrived.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return await super().Echo(request, context)


def sample(server: ChassisServer, name: str, method: dict[str, str] = ECHO, **labels: str) -> float:
    """A metric's value in `server`'s registry for `method`'s labels (Echo's unless given) and `labels`; 0 when
    the series is not there."""
    return server.metrics.registry.get_sample_value(name, {**method, **labels}) or 0.0


async def held_in_handlers(
    server: ChassisServer, stub: sample_pb2_grpc.SampleServiceStub, count: int
) -> list[asyncio.Future[sample_pb2.EchoResponse]]:
    """`count` SLOW calls (held by a `Holding` servicer), returned once all of them are in their handler."""
    busy = [asyncio.ensure_future(stub.Echo(SLOW, timeout=30)) for _ in range(count)]

    def all_in_their_handler() -> bool:
        for call in busy:
            if call.done():
                # Refused on the way in (a slot an earlier call never gave back): its error, at once.
                raise AssertionError(f"a held call ended: {call.result()}")
        return sample(server, "grpc_server_in_flight_requests") == count

    await eventually(all_in_their_handler, "the held calls in their handler")
    return busy


@pytest.fixture
def holding() -> Holding:
    """Holds each SLOW call: the server stays full for as long as a test needs, however slowly it runs."""
    return Holding(SLOW.message)


@pytest.fixture
def servicer() -> SampleServicer:
    return SampleServicer()


@pytest.fixture
async def server(servicer: SampleServicer) -> AsyncIterator[ChassisServer]:
    async with serve_in_process(sample_settings(), [binding(servicer)]) as running:
        yield running


@pytest.fixture
async def channel(server: ChassisServer) -> AsyncIterator[ResilientChannel]:
    async with ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as ch:
        yield ch


@pytest.fixture
def stub(channel: ResilientChannel) -> sample_pb2_grpc.SampleServiceStub:
    return sample_pb2_grpc.SampleServiceStub(channel.channel)
