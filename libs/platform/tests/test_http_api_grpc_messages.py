"""A gRPC or gRPC-Web call of ShopService's whose body is not one whole request message is refused by the edge
at once, INVALID_ARGUMENT, with the real Envoy of `bootstrap()` (docs/http-api.md). The gateway's gRPC server
(grpc.aio) never answered such a call: it waited for its deadline (the edge's 30 s), then UNAVAILABLE."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.testing.grpc_web import frame, status_in_headers
from shopmesh_platform.http_api import INCOMPLETE_GRPC_MESSAGE, INCOMPLETE_GRPC_MESSAGE_TEXT, PUBLIC_SERVICE

from .conftest import RecordingShop

MESSAGE = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x00\x00",
        frame(MESSAGE)[:4],
        frame(MESSAGE, length=1000),
        frame(MESSAGE, length=1),
        frame(MESSAGE) + frame(MESSAGE),
        frame(MESSAGE) + b"\x00",
    ],
    ids=["empty", "3 bytes", "prefix cut", "length over the body", "length under the body", "two", "trailing"],
)
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_a_body_that_is_not_one_whole_message_is_refused_at_once(
    edge: tuple[str, RecordingShop], body: bytes, text: bool
) -> None:
    url, shop = edge
    before = list(shop.calls)
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts",
        content=base64.b64encode(body) if text else body,
        headers={"content-type": content_type, "x-grpc-web": "1"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.headers
    status = status_in_headers(answer.headers)
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT, INCOMPLETE_GRPC_MESSAGE_TEXT)
    assert status.reason == "VALIDATION_FAILED"
    assert [(v.field, v.reason) for v in status.field_violations] == [("", INCOMPLETE_GRPC_MESSAGE)]
    assert shop.calls == before, "refused at the edge: the gateway was not called"


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_one_whole_message_is_called(edge: tuple[str, RecordingShop], text: bool) -> None:
    url, shop = edge
    body = frame(MESSAGE)
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts",
        content=base64.b64encode(body) if text else body,
        headers={"content-type": "application/grpc-web-text" if text else "application/grpc-web+proto"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.headers
    assert "grpc-status" not in answer.headers, answer.headers
    assert shop.calls[-1] == ("ListProducts", "1")


def test_a_grpc_client_is_answered(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        answer = channel.unary_unary(f"/{PUBLIC_SERVICE}/ListProducts")(MESSAGE, timeout=30)
    assert len(shop_pb2.ListProductsResponse.FromString(answer).products) == 1
