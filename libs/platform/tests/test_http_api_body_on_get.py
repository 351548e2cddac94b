"""A GET (or the HEAD called as it) with a body is refused (400, VALIDATION_FAILED) on every GET route the
contract has: the transcoder read the body into the request and bound the query over it, so the call was made
with fields no URL showed (docs/http-api.md, "Routes"). A GET without a body, or with `content-length: 0`, is
called as ever. The real Envoy of `bootstrap()` in front of a gateway that only records the calls it gets."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from shopmesh_platform.http_api import BODY_ON_GET, api_paths

from .conftest import RecordingShop
from .test_http_api_head import curl_http2

GET_PATHS = sorted(
    re.sub(r"\{[^}]+\}", "x_1", template) for template, methods in api_paths().items() if "GET" in methods
)
BODY = b'{"category":"kitchen","pageSize":2}'


def test_the_contract_has_get_routes_to_refuse_a_body_on() -> None:
    # The parametrized tests below run on each: none would be a test of nothing.
    assert "/v1/products" in GET_PATHS
    assert "/v1/orders/x_1" in GET_PATHS


def _chunks() -> Iterator[bytes]:
    yield BODY


@pytest.mark.parametrize("path", GET_PATHS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_get_with_a_body_is_refused_and_calls_nothing(
    edge: tuple[str, RecordingShop], path: str, framing: str
) -> None:
    url, shop = edge
    shop.calls.clear()
    # httpx sends a generator's body chunked (transfer-encoding), bytes with their content-length.
    content = BODY if framing == "content-length" else _chunks()
    refused = httpx.request(
        "GET", url + path, content=content, headers={"content-type": "application/json"}, timeout=10
    )
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"] == "application/json"
    status = refused.json()
    assert status["code"] == 3, status
    [info, bad_request] = status["details"]
    assert info["reason"] == "VALIDATION_FAILED", status
    [violation] = bad_request["fieldViolations"]
    assert violation["reason"] == BODY_ON_GET, status
    assert "field" not in violation, status
    assert shop.calls == []


def test_a_head_with_a_body_is_refused_too(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    refused = httpx.request("HEAD", url + "/v1/products", content=BODY, timeout=10)
    assert refused.status_code == 400, refused.headers
    # A HEAD's answer has no body to read the reason in: its headers are the same request's as a GET, whose
    # refusal names BODY_ON_GET (the length of that body, not of the 400 any other check would answer).
    as_get = httpx.request("GET", url + "/v1/products", content=BODY, timeout=10)
    assert f'"{BODY_ON_GET}"' in as_get.text, as_get.text
    assert refused.content == b""
    assert (refused.headers["content-type"], refused.headers["content-length"]) == (
        as_get.headers["content-type"],
        str(len(as_get.content)),
    ), refused.headers
    assert shop.calls == []


def test_a_query_does_not_win_over_a_body_any_more_the_request_is_refused(edge: tuple[str, RecordingShop]) -> None:
    # The same field in the query and the body: the transcoder bound the query's over the body's.
    url, shop = edge
    shop.calls.clear()
    refused = httpx.request("GET", url + "/v1/products?pageSize=3", content=b'{"pageSize":2}', timeout=10)
    assert refused.status_code == 400, refused.text
    assert f'"{BODY_ON_GET}"' in refused.text, refused.text
    assert shop.calls == []


def test_a_get_without_a_body_or_with_an_empty_one_is_called(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    assert httpx.get(url + "/v1/products?pageSize=2", timeout=10).status_code == 200
    # What a client sending an empty body declares (a browser's fetch sends no content-length for a GET).
    empty = httpx.request("GET", url + "/v1/products?pageSize=2", headers={"content-length": "0"}, timeout=10)
    assert empty.status_code == 200, empty.text
    assert shop.calls == [("ListProducts", "2"), ("ListProducts", "2")]


def test_a_content_length_of_zeros_is_no_body(edge: tuple[str, RecordingShop]) -> None:
    # Written on the socket: a client library would not send a length of "00".
    url, shop = edge
    shop.calls.clear()
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(
            b"GET /v1/products?pageSize=1 HTTP/1.1\r\nhost: shop\r\ncontent-length: 00\r\nconnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert shop.calls == [("ListProducts", "1")]


def test_a_get_with_a_body_of_no_declared_length_over_http2_is_refused(edge: tuple[str, RecordingShop]) -> None:
    # HTTP/2 needs no content-length (nor has chunks): the body is DATA frames, seen only as a body. The real
    # curl, its Content-Length header taken out.
    url, shop = edge
    shop.calls.clear()
    answer = curl_http2(
        url + "/v1/products",
        "--request",
        "GET",
        "--data-binary",
        BODY.decode(),
        "--header",
        "Content-Length:",
        "--trace-ascii",
        "-",
    )
    sent_headers = answer.stdout.split("=> Send header", 1)[1].split("=> Send data", 1)[0]
    assert "content-length" not in sent_headers.lower(), answer.stdout
    assert f'"{BODY_ON_GET}"' in answer.stdout, answer.stdout
    assert shop.calls == []


def test_a_body_longer_than_a_connections_buffer_is_refused_as_a_body_on_a_get(
    edge: tuple[str, RecordingShop],
) -> None:
    # Longer than the connection's 32 KiB buffer, shorter than the edge's 1 MiB: a GET's body, not a request
    # too large (which would tell the client it was over 1 MiB).
    url, shop = edge
    shop.calls.clear()
    refused = httpx.request("GET", url + "/v1/products", content=b" " * 40_000, timeout=10)
    assert refused.status_code == 400, refused.text
    assert f'"{BODY_ON_GET}"' in refused.text, refused.text
    assert shop.calls == []
