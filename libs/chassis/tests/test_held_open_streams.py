"""`testing.refused_with_the_stream_held_open`: what the edge tests judge a refusal "at once" by."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import refused_with_the_stream_held_open


async def _answer(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    # On its headers: the helper sends no request.
    yield b"answer"
    async for _ in requests:
        pass


async def _refuse_after_the_last_request(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for _ in requests:
        pass
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "refused after the request's end")
    yield b""  # never reached: makes this a generator, as a streaming handler is


@pytest.fixture
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    handlers = {
        "Answer": grpc.stream_stream_rpc_method_handler(_answer),
        "RefuseAfterTheLastRequest": grpc.stream_stream_rpc_method_handler(_refuse_after_the_last_request),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Streams", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_method_refused_on_its_headers_is_returned_as_the_refusal(server: ChassisServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        refused = await refused_with_the_stream_held_open(channel, "/shopmesh.sample.v1.SampleService/Nope")
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED, refused


async def test_a_refusal_that_waits_for_the_requests_end_meets_the_deadline_instead(address: str) -> None:
    # The point of holding the stream open: a refusal that needs the client's side closed never comes.
    async with grpc.aio.insecure_channel(address) as channel:
        refused = await refused_with_the_stream_held_open(channel, "/test.Streams/RefuseAfterTheLastRequest", 1.0)
    assert refused.code() == grpc.StatusCode.DEADLINE_EXCEEDED, refused


async def test_a_stream_that_answers_is_not_taken_for_a_refusal(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(AssertionError, match="was not refused: it answered b'answer'"):
            await refused_with_the_stream_held_open(channel, "/test.Streams/Answer")
