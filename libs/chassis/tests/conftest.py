from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, SampleSettings, binding

# The metric labels of the sample service's Echo.
ECHO = {"grpc_type": "unary", "grpc_service": "shopmesh.sample.v1.SampleService", "grpc_method": "Echo"}


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
