"""Calls of methods the server does not have: answered UNIMPLEMENTED, and nothing of them kept."""

from __future__ import annotations

import gc
import tracemalloc

import grpc
import pytest

from shopmesh_chassis.server import ChassisServer

CALLS = 200
# A method name as long as the HTTP/JSON edge lets a client's request headers be (60 KiB): gRPC-Web and gRPC
# calls of /shopmesh.gateway.v1.ShopService/<anything> are forwarded to the gateway as they are.
NAME_BYTES = 50 * 1024


async def test_calls_of_unknown_methods_leave_no_memory_behind(server: ChassisServer) -> None:
    # Each distinct unknown method name was cached by the chassis' interceptor (as None) for the life of the
    # process: anyone who can reach a server, before any authentication or rate limit, could grow it without
    # bound (200 calls of 50 KiB names: 10 MiB kept; the gateway's pod has a memory limit).
    async with grpc.aio.insecure_channel(server.address, options=[("grpc.max_metadata_size", 256 * 1024)]) as channel:

        async def call_unknown(index: int) -> None:
            method = f"/shopmesh.sample.v1.SampleService/Nope{index}{'x' * NAME_BYTES}"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(method)(b"", timeout=10)
            assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED

        await call_unknown(-1)  # warm up whatever the first call allocates once
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for index in range(CALLS):
                await call_unknown(index)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    kept = after - before
    assert kept < CALLS * NAME_BYTES / 10, f"{kept / 2**20:.1f} MiB kept after {CALLS} calls of unknown methods"
