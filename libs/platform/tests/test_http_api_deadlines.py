"""A gRPC-Web client's deadline at the edge, with the real Envoy of `bootstrap()` (docs/http-api.md): a
grpc-timeout not of gRPC's form is refused before any call, and the edge's bound of a call, when it runs out,
is DEADLINE_EXCEEDED, not a status a client retries at once."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame, status_in_headers
from shopmesh_platform.http_api import (
    DEADLINE_RAN_OUT_MESSAGE,
    MALFORMED_GRPC_TIMEOUT,
    MALFORMED_GRPC_TIMEOUT_MESSAGE,
    PUBLIC_SERVICE,
)
from shopmesh_platform.http_api.local_replies import REQUEST_TIMEOUT_MESSAGE

from .conftest import Edge, RecordingShop, running_edge

MESSAGE = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
FRAME = frame(MESSAGE)


@pytest.mark.parametrize("timeout", ["zzz", "1.5S", "123456789S", "5s", "-1S", "S", "5S,5S"])
def test_a_grpc_timeout_not_of_grpcs_form_is_refused_before_any_call(
    edge: tuple[str, RecordingShop], timeout: str
) -> None:
    url, shop = edge
    before = list(shop.calls)
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts", content=FRAME, headers={**GRPC_WEB_HEADERS, "grpc-timeout": timeout}
    )
    assert answer.status_code == 200, answer.headers
    status = status_in_headers(answer.headers)
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_GRPC_TIMEOUT_MESSAGE)
    assert status.reason == "VALIDATION_FAILED"
    assert [(v.field, v.reason) for v in status.field_violations] == [("grpc-timeout", MALFORMED_GRPC_TIMEOUT)]
    assert status.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert shop.calls == before, "refused at the edge: the gateway was not called"


def test_a_grpc_timeout_of_grpcs_form_is_forwarded(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/ListProducts", content=FRAME, headers={**GRPC_WEB_HEADERS, "grpc-timeout": "20S"}
    )
    assert answer.status_code == 200, answer.headers
    assert b"grpc-status:0" in answer.content, (answer.headers, answer.content)
    assert shop.calls[-1] == ("ListProducts", "1")


@pytest.fixture(scope="module")
def edge_whose_gateway_never_answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The edge in front of a gateway that takes connections (the kernel completes them in its backlog) and
    never answers a call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        with running_edge(tmp_path_factory.mktemp("edge-gateway-never-answers"), gateway_port=port) as edge:
            yield edge


def test_a_deadline_the_edge_ends_is_deadline_exceeded(edge_whose_gateway_never_answers: Edge) -> None:
    # Envoy's own answer was HTTP 504 with the gRPC-Web filter's UNAVAILABLE, "downstream duration timeout",
    # which a client retries at once.
    answer = httpx.post(
        f"{edge_whose_gateway_never_answers.url}/{PUBLIC_SERVICE}/ListProducts",
        content=FRAME,
        headers={**GRPC_WEB_HEADERS, "grpc-timeout": "100m"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.headers
    status = status_in_headers(answer.headers)
    assert (status.code, status.message) == (grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_RAN_OUT_MESSAGE)


def test_a_deadline_that_ends_before_the_request_has_arrived_is_deadline_exceeded(
    edge_whose_gateway_never_answers: Edge,
) -> None:
    # The body never arrives whole: Envoy's answer was HTTP 408, which the gRPC-Web filter made UNKNOWN.
    host, port = edge_whose_gateway_never_answers.url.removeprefix("http://").rsplit(":", 1)
    head = (
        f"POST /{PUBLIC_SERVICE}/ListProducts HTTP/1.1\r\nhost: shop\r\ncontent-type: application/grpc-web+proto\r\n"
        f"x-grpc-web: 1\r\ngrpc-timeout: 100m\r\ncontent-length: {len(FRAME) + 10}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head.encode() + FRAME)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
    status_line, *lines = answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert status_line.split()[1] == "200", answer
    status = status_in_headers(headers)
    assert (status.code, status.message) == (grpc.StatusCode.DEADLINE_EXCEEDED, REQUEST_TIMEOUT_MESSAGE)
    assert status.reason == "REQUEST_TIMEOUT", "no call was made"
