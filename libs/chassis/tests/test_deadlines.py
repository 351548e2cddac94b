"""Every outbound call has a deadline, and it never outlives the inbound call that made it."""

from __future__ import annotations

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import call_context
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer


async def test_calls_without_a_deadline_get_the_default(server: ChassisServer) -> None:
    options = ClientOptions(default_timeout_seconds=3.0, breaker=None)
    async with ResilientChannel(server.address, [DESCRIPTOR], options) as channel:
        response = await sample_pb2_grpc.SampleServiceStub(channel.channel).Echo(sample_pb2.EchoRequest())
    # Not "<= 3.0": gRPC core rounds the encoded grpc-timeout up (see the next test).
    assert 2.0 < response.deadline_remaining_seconds <= 3.1


async def test_outbound_call_inherits_the_shorter_inbound_deadline(
    stub: sample_pb2_grpc.SampleServiceStub, server: ChassisServer
) -> None:
    # The relay's own client channel would give the downstream call 5 s; the inbound call has 1 s.
    relayed = await stub.Relay(
        sample_pb2.RelayRequest(target=server.address, echo=sample_pb2.EchoRequest(message="m")), timeout=1.0
    )
    assert relayed.echo.message == "m"
    # Far below the channel's 5 s. Not "<= 1.0": gRPC core encodes the grpc-timeout header lossily and
    # rounds up (src/core/lib/transport/timeout_encoding.h: "encoding may round up arbitrarily"); 1.0087 s
    # has been seen downstream of a 1 s inbound deadline.
    assert 0 < relayed.echo.deadline_remaining_seconds <= 1.1


async def test_outbound_call_is_cut_off_by_the_deadline_it_inherits_when_the_inbound_one_expires(
    stub: sample_pb2_grpc.SampleServiceStub, server: ChassisServer, servicer: SampleServicer
) -> None:
    # The caller's own 0.5 s ends the call for the caller whatever happens downstream; what the relay did
    # with its downstream call shows only on the downstream server.
    slow = sample_pb2.EchoRequest(message="downstream", behaviour=sample_pb2.Behaviour(sleep_ms=5_000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Relay(sample_pb2.RelayRequest(target=server.address, echo=slow), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ending = await eventually(lambda: servicer.echo_endings.get("downstream"), "the downstream call ended")
    # Cut off rather than left to sleep its 5 s out, under the inbound call's deadline rather than the relay
    # channel's 5 s: so the deadline alone ends it, even where no cancellation reaches it. Not "<= 0.5":
    # gRPC core rounds the encoded grpc-timeout up (see the test above).
    assert ending.outcome == "cancelled"
    assert ending.deadline_seconds is not None
    assert 0 < ending.deadline_seconds <= 0.6


@pytest.mark.parametrize("value", ["usr_é", "usr_x\nfoo", "usr_\x7f"])
async def test_a_call_carrying_metadata_grpc_cannot_send_fails_at_once_instead_of_hanging(
    server: ChassisServer, servicer: SampleServicer, value: str
) -> None:
    # grpc.aio failed it in a task nobody awaited ("Task exception was never retrieved"): the call waited for
    # its deadline, or for ever without one. A token's subject forwarded as x-user-id did that at the gateway.
    # A call that hung would end at its 30 s deadline as DEADLINE_EXCEEDED: INTERNAL is the failure at once.
    options = ClientOptions(default_timeout_seconds=30.0, breaker=None)
    async with ResilientChannel(server.address, [DESCRIPTOR], options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sample_pb2_grpc.SampleServiceStub(channel.channel).Echo(
                sample_pb2.EchoRequest(), metadata=(("x-user-id", value),)
            )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "x-user-id" in (caught.value.details() or "")
    assert servicer.echo_endings == {}  # refused before it was sent


async def test_a_call_made_within_a_share_of_the_time_gets_that_share_as_its_deadline(server: ChassisServer) -> None:
    # The gateway's optional recommendations: a share of the client's time, ending DEADLINE_EXCEEDED (which the
    # breaker judges), not a timer of the caller's own (which would end the call cancelled).
    options = ClientOptions(default_timeout_seconds=30.0, breaker=None)
    async with ResilientChannel(server.address, [DESCRIPTOR], options) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        with call_context.deadline_within(2.0):
            response = await stub.Echo(sample_pb2.EchoRequest())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Echo(sample_pb2.EchoRequest(behaviour=sample_pb2.Behaviour(sleep_ms=5_000)))
        outside = await stub.Echo(sample_pb2.EchoRequest())
    assert 0 < response.deadline_remaining_seconds <= 2.1
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outside.deadline_remaining_seconds > 20
