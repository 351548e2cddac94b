"""A gRPC-Web call's frame and its encoding, as a client may get them wrong, with the real Envoy of `bootstrap()`
(docs/http-api.md): each mistake is refused by the edge before any call, trailers-only, with the code gRPC
itself gives it (INVALID_ARGUMENT for what is malformed, UNIMPLEMENTED for an encoding not taken) and a reason.
Forwarded, the gateway's gRPC server answered each INTERNAL, or carried the call out."""

from __future__ import annotations

import base64
import gzip
import zlib

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame, status_in_headers
from shopmesh_platform.http_api import (
    ACCEPTED_GRPC_ENCODINGS,
    INVALID_GRPC_FRAME_FLAG,
    INVALID_GRPC_FRAME_FLAG_MESSAGE,
    MALFORMED_GRPC_ENCODING,
    MALFORMED_GRPC_ENCODING_MESSAGE,
    MALFORMED_GRPC_WEB_TEXT,
    MALFORMED_GRPC_WEB_TEXT_MESSAGE,
    MISSING_GRPC_ENCODING,
    MISSING_GRPC_ENCODING_MESSAGE,
    PUBLIC_SERVICE,
    UNREADABLE_BODY_MESSAGE,
    UNSUPPORTED_GRPC_ENCODING,
    UNSUPPORTED_GRPC_ENCODING_MESSAGE,
)

from .conftest import RecordingShop

MESSAGE = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
COMPRESSED = 1


def call(url: str, body: bytes, *, text: bool = False, headers: dict[str, str] | None = None) -> httpx.Response:
    """ListProducts over gRPC-Web, binary or text (the body base64'd here)."""
    return httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts",
        content=base64.b64encode(body) if text else body,
        headers={
            **GRPC_WEB_HEADERS,
            **({"content-type": "application/grpc-web-text"} if text else {}),
            **(headers or {}),
        },
        timeout=30,
    )


def assert_refused(answer: httpx.Response, code: grpc.StatusCode, message: str, reason: str, field: str | None) -> None:
    """A trailers-only refusal of this code and message: a field violation of this reason (VALIDATION_FAILED)
    when `field` is not None, else an ErrorInfo of this reason."""
    assert answer.status_code == 200, answer.headers
    assert answer.content == b"", "trailers-only"
    status = status_in_headers(answer.headers)
    assert (status.code, status.message) == (code, message)
    if field is None:
        assert status.reason == reason
    else:
        assert status.reason == "VALIDATION_FAILED"
        assert [(v.field, v.reason) for v in status.field_violations] == [(field, reason)]


@pytest.mark.parametrize("encoding", [None, "identity"], ids=["no grpc-encoding", "identity"])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_a_message_flagged_compressed_without_a_compression_is_invalid_argument(
    edge: tuple[str, RecordingShop], encoding: str | None, text: bool
) -> None:
    # The gateway's gRPC server answered INTERNAL "Compression bit set but no encoding configured".
    url, shop = edge
    before = list(shop.calls)
    headers = {} if encoding is None else {"grpc-encoding": encoding}
    answer = call(url, frame(gzip.compress(MESSAGE), flags=COMPRESSED), text=text, headers=headers)
    assert_refused(
        answer, grpc.StatusCode.INVALID_ARGUMENT, MISSING_GRPC_ENCODING_MESSAGE, MISSING_GRPC_ENCODING, "grpc-encoding"
    )
    assert shop.calls == before, "refused at the edge: the gateway was not called"


@pytest.mark.parametrize("encoding", ["", "gzip;q=1", "gzip, deflate", "gzip gzip", "g\tzip"])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_a_malformed_grpc_encoding_is_invalid_argument(
    edge: tuple[str, RecordingShop], encoding: str, text: bool
) -> None:
    # The gateway's gRPC server answered INTERNAL "Error parsing 'grpc-encoding' metadata".
    url, shop = edge
    before = list(shop.calls)
    answer = call(url, frame(gzip.compress(MESSAGE), flags=COMPRESSED), text=text, headers={"grpc-encoding": encoding})
    assert_refused(
        answer,
        grpc.StatusCode.INVALID_ARGUMENT,
        MALFORMED_GRPC_ENCODING_MESSAGE,
        MALFORMED_GRPC_ENCODING,
        "grpc-encoding",
    )
    assert shop.calls == before, "refused at the edge: the gateway was not called"


@pytest.mark.parametrize("encoding", ["zzz", "snappy", "GZIP", "x-custom"])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_an_encoding_the_gateway_does_not_read_is_unimplemented_naming_those_it_does(
    edge: tuple[str, RecordingShop], encoding: str, text: bool
) -> None:
    # As a gRPC server answers one (PROTOCOL-HTTP2.md, "Compression"); the gateway's answered INTERNAL.
    url, shop = edge
    before = list(shop.calls)
    answer = call(url, frame(gzip.compress(MESSAGE), flags=COMPRESSED), text=text, headers={"grpc-encoding": encoding})
    assert_refused(
        answer, grpc.StatusCode.UNIMPLEMENTED, UNSUPPORTED_GRPC_ENCODING_MESSAGE, UNSUPPORTED_GRPC_ENCODING, None
    )
    assert answer.headers["grpc-accept-encoding"] == ",".join(ACCEPTED_GRPC_ENCODINGS)
    assert shop.calls == before, "refused at the edge: the gateway was not called"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", frame(gzip.compress(MESSAGE), flags=COMPRESSED)),
        ("deflate", frame(zlib.compress(MESSAGE), flags=COMPRESSED)),
        ("gzip", frame(MESSAGE)),
        ("identity", frame(MESSAGE)),
    ],
    ids=["gzip", "deflate", "gzip, uncompressed", "identity"],
)
def test_a_message_in_an_encoding_the_gateway_reads_is_called(
    edge: tuple[str, RecordingShop], encoding: str, body: bytes
) -> None:
    url, shop = edge
    answer = call(url, body, headers={"grpc-encoding": encoding})
    assert answer.status_code == 200, answer.headers
    assert b"grpc-status:0" in answer.content, (answer.headers, answer.content)
    assert shop.calls[-1] == ("ListProducts", "1")


@pytest.mark.parametrize("refused", ["GZIP", "zzz", "gzip;q=1", ""])
def test_a_refused_encoding_leaves_the_next_clients_compressed_call_served(
    edge: tuple[str, RecordingShop], refused: str
) -> None:
    # Forwarded, the gateway's gRPC server kept its failed parse in the HPACK table of the one connection the
    # edge keeps to it: the next gzip call, anyone's, was INTERNAL "Error parsing 'grpc-encoding' metadata".
    url, shop = edge
    call(url, frame(gzip.compress(MESSAGE), flags=COMPRESSED), headers={"grpc-encoding": refused})
    answer = call(url, frame(gzip.compress(MESSAGE), flags=COMPRESSED), headers={"grpc-encoding": "gzip"})
    assert answer.status_code == 200, answer.headers
    assert b"grpc-status:0" in answer.content, (answer.headers, answer.content)
    assert shop.calls[-1] == ("ListProducts", "1")


@pytest.mark.parametrize("flag", [0x80, 0x81, 0x02, 0xFF])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_a_frame_neither_a_message_nor_a_compressed_one_is_invalid_argument(
    edge: tuple[str, RecordingShop], flag: int, text: bool
) -> None:
    # A trailers frame (0x80) is the server's alone: the gateway's gRPC server carried the call out all the same.
    url, shop = edge
    before = list(shop.calls)
    answer = call(url, frame(MESSAGE, flags=flag), text=text)
    assert_refused(
        answer, grpc.StatusCode.INVALID_ARGUMENT, INVALID_GRPC_FRAME_FLAG_MESSAGE, INVALID_GRPC_FRAME_FLAG, ""
    )
    assert shop.calls == before, "refused at the edge: the gateway was not called"


@pytest.mark.parametrize(
    "body",
    [b"!!!!", b"AAAAAAI", base64.b64encode(frame(MESSAGE))[:-1] + b"*", b"AAAA AAA"],
    ids=["not base64", "not of 4-character groups", "a bad last character", "a space"],
)
def test_grpc_web_text_that_is_not_base64_is_invalid_argument(edge: tuple[str, RecordingShop], body: bytes) -> None:
    # The gRPC-Web filter's own answer was HTTP 400 and INTERNAL "Bad gRPC-web request, invalid base64 data.".
    url, shop = edge
    before = list(shop.calls)
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts",
        content=body,
        headers={"content-type": "application/grpc-web-text", "x-grpc-web": "1"},
        timeout=30,
    )
    assert_refused(
        answer, grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_GRPC_WEB_TEXT_MESSAGE, MALFORMED_GRPC_WEB_TEXT, ""
    )
    assert shop.calls == before, "refused at the edge: the gateway was not called"


def test_a_grpc_client_compressing_its_messages_is_served(edge: tuple[str, RecordingShop]) -> None:
    """grpcio compressing with gzip (its grpc-encoding: gzip): the edge refuses none of its calls."""
    url, shop = edge
    with grpc.insecure_channel(url.removeprefix("http://"), compression=grpc.Compression.Gzip) as channel:
        answer = channel.unary_unary(f"/{PUBLIC_SERVICE}/ListProducts")(MESSAGE, timeout=30)
    assert len(shop_pb2.ListProductsResponse.FromString(answer).products) == 1
    assert shop.calls[-1] == ("ListProducts", "1")


@pytest.mark.parametrize("body", [gzip.compress(b"{}"), b"not gzip"], ids=["gzip", "not gzip"])
def test_a_gzipped_json_body_is_the_clients_mistake_not_a_server_error(
    edge: tuple[str, RecordingShop], body: bytes
) -> None:
    """HTTP/JSON's Content-Encoding is not decoded: the body, whatever it holds, is no JSON (400, INVALID_ARGUMENT)."""
    url, shop = edge
    before = list(shop.calls)
    answer = httpx.post(
        f"{url}/v1/orders/ord_1:cancel",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "message": UNREADABLE_BODY_MESSAGE,
        "details": [],
    }
    assert shop.calls == before


@pytest.mark.parametrize("encoding", ["zzz", "gzip;q=1", ""])
def test_a_grpc_encoding_sent_with_http_json_is_dropped(edge: tuple[str, RecordingShop], encoding: str) -> None:
    """The transcoder frames an HTTP/JSON call itself: a client's grpc-encoding says nothing of it."""
    url, shop = edge
    answer = httpx.post(
        f"{url}/v1/orders/ord_1:cancel",
        content=b"{}",
        headers={"content-type": "application/json", "grpc-encoding": encoding},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert shop.calls[-1] == ("CancelOrder", "ord_1")
