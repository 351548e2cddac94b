from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shopmesh.sample.v1 import sample_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, SampleSettings, binding


def sample_settings(**overrides: Any) -> SampleSettings:
    return load_settings(SampleSettings, **{"grpc_port": 0, "metrics_port": -1, **overrides})


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
