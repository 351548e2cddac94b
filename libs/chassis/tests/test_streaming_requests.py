"""Streaming calls' requests get the rules unary ones get: a body that is no message, text that is not UTF-8 and a
NUL character are INVALID_ARGUMENT with details. The interceptor passed streaming handlers through: grpcio
answered a corrupt body UNKNOWN "Unexpected <class 'DecodeError'>: ..." without details, and health Watch
took a name with a NUL for one it does not serve, which Check refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer

from .conftest import sample, sample_settings

WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# A client-streaming method of this test's own (shopmesh's contracts have none).
COLLECT = "/shopmesh.test.Streams/Collect"
# A server-streaming one that writes once more after its caller has gone (a Watch whose update was on its way).
TICK = "/shopmesh.test.Streams/Tick"


async def _collect(requests: AsyncIterator[sample_pb2.EchoRequest], context: Any) -> sample_pb2.EchoResponse:
    return sample_pb2.EchoResponse(message=",".join([request.message async for request in requests]))


async def _tick(request: sample_pb2.EchoRequest, context: Any) -> None:
    await context.write(sample_pb2.EchoResponse(message="first"))
    try:
        await asyncio.sleep(30)  # until its caller cancels it (the test does at once)
    except asyncio.CancelledError:
        await context.write(sample_pb2.EchoResponse(message="after the caller left"))
        raise


def _register_with_collect(servicer: Any, server: grpc.aio.Server) -> None:
    sample_pb2_grpc.add_SampleServiceServicer_to_server(servicer, server)
    collect = grpc.stream_unary_rpc_method_handler(
        _collect,
        request_deserializer=sample_pb2.EchoRequest.FromString,
        response_serializer=sample_pb2.EchoResponse.SerializeToString,
    )
    tick = grpc.unary_stream_rpc_method_handler(
        _tick,
        request_deserializer=sample_pb2.EchoRequest.FromString,
        response_serializer=sample_pb2.EchoResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("shopmesh.test.Streams", {"Collect": collect, "Tick": tick}),)
    )


@pytest.fixture
async def streams() -> AsyncIterator[ChassisServer]:
    binding = ServiceBinding(DESCRIPTOR, SampleServicer(), _register_with_collect)
    async with serve_in_process(sample_settings(), [binding]) as server:
        yield server


async def _refusal(call: Callable[[], Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    return details_of(caught.value)


async def _streamed_refusal(channel: grpc.aio.Channel, method: str, body: bytes) -> ErrorDetails:
    """The answer of `method` to one request message of `body`'s bytes, however the method streams."""
    if method == WATCH:
        watch = channel.unary_stream(method)
        return await _refusal(lambda: _read_all(watch(body, timeout=5)))
    if method == REFLECTION:
        reflection = channel.stream_stream(method)
        return await _refusal(lambda: _read_all(reflection(iter([body]), timeout=5)))
    return await _refusal(lambda: channel.stream_unary(method)(iter([body]), timeout=5))


async def _read_all(call: Any) -> list[Any]:
    return [response async for response in call]


@pytest.mark.parametrize("method", [WATCH, REFLECTION, COLLECT], ids=["unary-stream", "stream-stream", "stream-unary"])
@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05ab", b"\xff\xff\xff\xff\xff"],
    ids=["truncated", "garbage"],
)
async def test_a_streaming_request_that_is_no_message_is_refused_as_a_unary_one_is(
    streams: ChassisServer, method: str, body: bytes
) -> None:
    async with grpc.aio.insecure_channel(streams.address) as channel:
        unary = await _refusal(lambda: channel.unary_unary("/shopmesh.sample.v1.SampleService/Echo")(body, timeout=5))
        streamed = await _streamed_refusal(channel, method, body)
    assert (unary.code, unary.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert streamed == unary


@pytest.mark.parametrize(
    ("method", "field"),
    [(WATCH, "service"), (REFLECTION, "host"), (COLLECT, "message")],
    ids=["unary-stream", "stream-stream", "stream-unary"],
)
async def test_a_streaming_requests_text_that_is_not_utf8_is_named_as_a_unary_ones_is(
    streams: ChassisServer, method: str, field: str
) -> None:
    async with grpc.aio.insecure_channel(streams.address) as channel:
        # Field 1 of each request type is text, not UTF-8 here.
        streamed = await _streamed_refusal(channel, method, b"\x0a\x02\xff\xfe")
    assert (streamed.code, streamed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_UTF8")
    assert [(v.field, v.reason) for v in streamed.field_violations] == [(field, "NOT_UTF8")]


async def test_a_client_stream_of_valid_messages_reaches_its_handler(streams: ChassisServer) -> None:
    async with grpc.aio.insecure_channel(streams.address) as channel:
        collect = channel.stream_unary(
            COLLECT,
            request_serializer=sample_pb2.EchoRequest.SerializeToString,
            response_deserializer=sample_pb2.EchoResponse.FromString,
        )
        requests = iter([sample_pb2.EchoRequest(message="a"), sample_pb2.EchoRequest(message="b")])
        assert (await collect(requests, timeout=5)).message == "a,b"


async def test_a_health_watch_of_a_name_with_a_nul_is_refused_as_check_refuses_it(streams: ChassisServer) -> None:
    request = health_pb2.HealthCheckRequest(service="shopmesh.sample.v1.SampleService\x00")
    async with grpc.aio.insecure_channel(streams.address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types the sync stub only
        checked = await _refusal(lambda: health.Check(request, timeout=5))
        watched = await _refusal(lambda: _read_all(health.Watch(request, timeout=5)))
    assert checked.reason == "NUL_CHARACTER"
    assert [(v.field, v.reason) for v in checked.field_violations] == [("service", "NUL_CHARACTER")]
    assert watched == checked
    # Counted as the client's mistake it is, as Check's refusal is.
    watch = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
    await eventually(
        lambda: sample(streams, "grpc_server_handled_total", watch, grpc_code="INVALID_ARGUMENT") == 1,
        "the refused Watch counted handled INVALID_ARGUMENT",
    )


async def test_a_refused_message_after_streamed_responses_ends_the_stream_with_the_refusal(
    streams: ChassisServer,
) -> None:
    listing = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    async with grpc.aio.insecure_channel(streams.address) as channel:
        call = channel.stream_stream(
            REFLECTION, response_deserializer=reflection_pb2.ServerReflectionResponse.FromString
        )
        responses = call(iter([listing, b"\xff\xff\xff\xff\xff"]), timeout=5)
        first = await responses.read()
        assert first.HasField("list_services_response")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await responses.read()
    refusal = details_of(caught.value)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


async def test_a_stream_whose_write_fails_because_its_caller_has_gone_is_counted_cancelled_not_unknown(
    streams: ChassisServer,
) -> None:
    """A write to a caller that has gone raises in the handler: counted UNKNOWN, a server error, each client that
    stopped a Watch counted against ShopmeshServerErrors. Its caller ended it: CANCELLED, as when it ends no
    write."""
    tick = {"grpc_type": "server_stream", "grpc_service": "shopmesh.test.Streams", "grpc_method": "Tick"}

    def handled(code: str) -> float:
        return sample(streams, "grpc_server_handled_total", tick, grpc_code=code)

    async with grpc.aio.insecure_channel(streams.address) as channel:
        call = channel.unary_stream(
            TICK,
            request_serializer=sample_pb2.EchoRequest.SerializeToString,
            response_deserializer=sample_pb2.EchoResponse.FromString,
        )(sample_pb2.EchoRequest(message="go"), timeout=30)
        assert (await call.read()).message == "first"
        call.cancel()
        await eventually(
            lambda: handled("CANCELLED") + handled("UNKNOWN") == 1, "the Tick its caller cancelled counted handled"
        )
    assert (handled("CANCELLED"), handled("UNKNOWN")) == (1, 0)
