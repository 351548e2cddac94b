"""A call its caller cancels through a ResilientChannel is cancelled at the target as well: the target stops
working on it and gives its max-concurrent-RPCs slot back, rather than holding both until the call's deadline
(the gateway's TaskGroup cancels a page's other calls when one fails)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, binding

from .conftest import Holding, sample_settings

# Far beyond the wait for the target's cancellation below: a target that kept the call until its deadline
# fails that wait instead of passing late.
CALL_DEADLINE_SECONDS = 120.0
SEEN_WITHIN_SECONDS = 30.0


@pytest.fixture
def holding() -> Holding:
    return Holding("hold")  # released never: held until its caller cancels it


@pytest.fixture
async def one_slot(holding: Holding) -> AsyncIterator[ChassisServer]:
    async with serve_in_process(sample_settings(grpc_max_concurrent_rpcs=1), [binding(holding)]) as running:
        yield running


@pytest.mark.parametrize(
    "options",
    [
        ClientOptions(),
        ClientOptions(tracing=False),
        ClientOptions(breaker=None),
        ClientOptions(breaker=None, tracing=False),
    ],
    ids=["breaker-and-tracing", "breaker", "tracing", "bare"],
)
async def test_a_call_its_caller_cancels_is_cancelled_at_the_target_and_frees_its_slot(
    one_slot: ChassisServer, holding: Holding, options: ClientOptions
) -> None:
    async with ResilientChannel(one_slot.address, [DESCRIPTOR], options) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        held = asyncio.ensure_future(stub.Echo(sample_pb2.EchoRequest(message="hold"), timeout=CALL_DEADLINE_SECONDS))
        async with asyncio.timeout(SEEN_WITHIN_SECONDS):
            await holding.arrived.wait()
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        try:
            async with asyncio.timeout(SEEN_WITHIN_SECONDS):
                await holding.cancelled.wait()
        except TimeoutError:
            pytest.fail("the caller cancelled its call, and the target kept working on it")

        # Its one slot is free again: the next call is answered, not shed (the handler's end, which frees the
        # slot, may come a moment after its cancellation).
        async def answered() -> bool:
            try:
                return (await stub.Echo(sample_pb2.EchoRequest(message="next"), timeout=30)).message == "next"
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return False
                raise

        await eventually(answered, "the next call answered once the cancelled one freed its slot")
