"""HEAD of the API's GETs (RFC 9110: the GET's status and headers, no body), with the real Envoy of
`bootstrap()` (docs/http-api.md)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from urllib.parse import urlsplit

import httpx
import pytest

from shopmesh_platform.http_api import COMPRESS_FROM_BYTES

from .conftest import MISSING, RecordingShop


def exchanged(url: str, *requests: tuple[str, str, dict[str, str]]) -> list[tuple[str, dict[str, str], bytes]]:
    """Sends these requests (method, path and query, headers) pipelined on one HTTP/1.1 connection and reads
    the answers: each answer's status line, headers and body, delimited by its content-length, the body of a
    HEAD's answer being none (RFC 9112). A byte an answer to HEAD sent as body would be read as the start of
    the next answer, and fail it."""
    address = urlsplit(url)
    wire = b"".join(
        f"{method} {target} HTTP/1.1\r\nhost: edge\r\n".encode()
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        + (b"connection: close\r\n" if index == len(requests) - 1 else b"")
        + b"\r\n"
        for index, (method, target, headers) in enumerate(requests)
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(wire)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    answers = []
    for method, _, _ in requests:
        head, separator, received = received.partition(b"\r\n\r\n")
        assert separator, f"an answer's head was cut short: {head!r}"
        status, *lines = head.decode().split("\r\n")
        headers = header_fields(lines)
        assert "chunked" not in headers.get("transfer-encoding", ""), "the reader expects content-length framing"
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        answers.append((status, headers, received[:length]))
        received = received[length:]
    assert received == b"", f"bytes after the last answer: {received[:200]!r}"
    return answers


def test_head_of_an_api_get_is_the_gets_status_and_headers_without_its_body(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    get_target = "/v1/products?pageSize=1"
    (head_status, head, head_body), (get_status, get, get_body) = exchanged(
        url, ("HEAD", get_target, {}), ("GET", get_target, {})
    )
    assert (head_status, get_status) == ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK")
    assert head_body == b""
    assert get_body.startswith(b'{"products":[{"id":"prod_0"')
    assert (head["content-type"], head["content-length"]) == (get["content-type"], get["content-length"])
    # The HEAD was the GET's call of the API, nothing else.
    assert shop.calls == [("ListProducts", "1"), ("ListProducts", "1")]


def test_head_of_an_answer_the_get_would_gzip_has_no_body_either(edge: tuple[str, RecordingShop]) -> None:
    # The compressor would frame a gzipped answer as chunks, whose last one is body a HEAD must not have: the
    # HEAD's answer is the identity one's headers, with its length.
    url, _ = edge
    gzip = {"accept-encoding": "gzip"}
    target = "/v1/products?pageSize=8"
    ((status, head, body), (_, get, _)) = exchanged(url, ("HEAD", target, gzip), ("GET", target, {}))
    assert (status, body) == ("HTTP/1.1 200 OK", b"")
    assert int(head["content-length"]) == int(get["content-length"]) >= COMPRESS_FROM_BYTES
    assert httpx.get(url + target, headers=gzip, timeout=10).headers["content-encoding"] == "gzip"


def test_head_of_a_missing_resource_is_the_gets_404_without_its_body(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    target = f"/v1/orders/{MISSING}_1"
    (head_status, head, head_body), (get_status, get, get_body) = exchanged(
        url, ("HEAD", target, {}), ("GET", target, {})
    )
    assert (head_status, get_status) == ("HTTP/1.1 404 Not Found", "HTTP/1.1 404 Not Found")
    assert (head_body, head["content-length"]) == (b"", get["content-length"])
    assert b'"code":5' in get_body


def test_head_is_allowed_where_get_is_and_refused_where_it_is_not(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    refused = httpx.delete(url + "/v1/orders/ord_1", timeout=10)
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
    # A path that takes only POST: HEAD is refused as GET is, and nothing is called.
    [(status, headers, body)] = exchanged(url, ("HEAD", "/v1/orders/ord_1:cancel", {}))
    assert (status, headers["allow"], body) == ("HTTP/1.1 405 Method Not Allowed", "POST", b"")
    assert shop.calls == []


def header_fields(lines: list[str]) -> dict[str, str]:
    """An answer's header lines (after its status line) by lower-case name."""
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def curl_http2(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """The real curl on cleartext HTTP/2 (prior knowledge: no upgrade from HTTP/1.1), headers on stdout."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not on PATH: install Debian's curl (README, Prerequisites); this test needs its HTTP/2")
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--http2-prior-knowledge", "--max-time", "10", *options, url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_head_over_http2_ends_its_stream_with_the_headers(edge: tuple[str, RecordingShop]) -> None:
    # Envoy's HTTP/2 codec, like its HTTP/1.1 one, sends whatever body the filters leave: the GET's DATA frames
    # on the HEAD's stream, which the client takes as a protocol error (curl: stream not closed cleanly).
    url, shop = edge
    shop.calls.clear()
    target = url + "/v1/products?pageSize=1"
    head = curl_http2(target, "--head")
    assert head.returncode == 0, head.stderr
    status, *lines = head.stdout.strip().splitlines()
    headers = header_fields(lines)
    assert status.strip() == "HTTP/2 200"
    # The HEAD's content-length is the GET's body's, as over HTTP/1.1.
    get = curl_http2(target, "--output", "/dev/null", "--write-out", "%{http_version} %{size_download}")
    assert (get.returncode, get.stdout) == (0, f"2 {headers['content-length']}"), get.stderr
    assert shop.calls == [("ListProducts", "1"), ("ListProducts", "1")]
