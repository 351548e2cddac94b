"""The answers the edge makes itself to an HTTP/JSON client, with the real Envoy of `bootstrap()`
(docs/http-api.md, "The edge's own errors"): each a google.rpc.Status in JSON, in the shape the transcoder gives
the gateway's errors (`details` there, empty or not), with a message a client can act on."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame, status_details, status_in_headers
from shopmesh_platform.http_api import (
    GATEWAY_UNAVAILABLE_MESSAGE,
    MAX_REQUEST_BYTES,
    PUBLIC_SERVICE,
    REQUEST_TOO_LARGE,
    REQUEST_TOO_LARGE_MESSAGE,
)

from .conftest import (
    COME_BACK_LATER,
    GATEWAY_RETRY_DELAY,
    Edge,
    RecordingShop,
    running_edge,
)


def raw_answer(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer to these bytes, sent as they are (no client library sends
    HTTP/1.0, a request target that is no path, or a fragment)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        # Every request here asks for (or is answered with) `connection: close`: the answer ends with it.
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def status_in(content_type: str, body: bytes) -> dict[str, Any]:
    assert content_type == "application/json", body
    status: dict[str, Any] = json.loads(body)
    assert set(status) == {"code", "message", "details"}, status
    assert status["message"], status
    return status


@pytest.mark.parametrize(
    ("request_bytes", "http_status", "code", "told"),
    [
        # Envoy's own text: "Upgrade Required", as text/plain.
        (b"GET /v1/products HTTP/1.0\r\n\r\n", 426, grpc_code.UNIMPLEMENTED, "HTTP/1.1"),
        # Envoy's own answer: no body, no content type.
        (
            b"GET /v1/products HTTP/1.1\r\nhost: shop\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            403,
            grpc_code.PERMISSION_DENIED,
            "WebSocket",
        ),
        # Envoy's own messages here are empty.
        (
            b"GET /v1/products#top HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n",
            400,
            grpc_code.INVALID_ARGUMENT,
            "'#'",
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n",
            404,
            grpc_code.UNIMPLEMENTED,
            "/v1/products",
        ),
        # A request HTTP/1.1 cannot parse keeps Envoy's reason, in the same shape.
        (
            b"GET /v1/products HTTP/1.1\r\nhost: shop\r\nbad header: x\r\n\r\n",
            400,
            grpc_code.INVALID_ARGUMENT,
            "Bad Request",
        ),
        # A status LOCAL_REPLY_CODES does not list (a transfer encoding HTTP/1.1 lacks): gRPC's code for it,
        # with Envoy's reason (Envoy's own: text/plain).
        (
            b"POST /v1/login HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\n",
            501,
            grpc_code.UNKNOWN,
            "Not Implemented",
        ),
    ],
)
def test_a_request_envoy_refuses_before_any_route_is_a_status_saying_what_to_do(
    edge: tuple[str, RecordingShop], request_bytes: bytes, http_status: int, code: int, told: str
) -> None:
    url, shop = edge
    shop.calls.clear()
    answered, headers, body = raw_answer(url, request_bytes)
    assert answered == http_status, body
    status = status_in(headers.get("content-type", ""), body)
    assert (status["code"], status["details"]) == (code, []), status
    assert told in status["message"], status
    assert shop.calls == []


def test_a_json_body_over_the_limit_is_a_413_with_the_limit_and_the_reason_grpc_clients_get(
    edge: tuple[str, RecordingShop],
) -> None:
    url, shop = edge
    shop.calls.clear()
    answer = httpx.post(
        url + "/v1/login", json={"email": "x@example.com", "password": "p" * MAX_REQUEST_BYTES}, timeout=10
    )
    assert answer.status_code == 413, answer.text
    status = status_in(answer.headers["content-type"], answer.content)
    assert (status["code"], status["message"]) == (grpc_code.RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE_MESSAGE)
    [info] = status["details"]
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": REQUEST_TOO_LARGE,
        "domain": "shopmesh.gateway",
        "metadata": {"max_request_bytes": str(MAX_REQUEST_BYTES)},
    }
    assert "grpc-status" not in answer.headers
    assert shop.calls == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "http_status", "code"),
    [
        ("GET", "/v1/nothing", {}, 404, grpc_code.UNIMPLEMENTED),
        ("DELETE", "/v1/orders", {}, 405, grpc_code.UNIMPLEMENTED),
        ("GET", "/v1/products?pageSise=2", {}, 400, grpc_code.INVALID_ARGUMENT),
        ("GET", "/v1/products?pageSize=two", {}, 400, grpc_code.INVALID_ARGUMENT),
        (
            "POST",
            "/v1/login",
            {"content": b'{"email": ', "headers": {"content-type": "application/json"}},
            400,
            grpc_code.INVALID_ARGUMENT,
        ),
        # A body of another type is read as JSON all the same, and refused as JSON that is not.
        ("POST", "/v1/login", {"data": {"email": "x@example.com"}}, 400, grpc_code.INVALID_ARGUMENT),
        ("GET", "/v1/products", {"headers": {"x-padding": "a" * 70 * 1024}}, 431, grpc_code.RESOURCE_EXHAUSTED),
        # Not a preflight (no Access-Control-Request-Method): a path the API lacks.
        ("OPTIONS", "/v1/nothing", {"headers": {"origin": "https://shop.example"}}, 404, grpc_code.UNIMPLEMENTED),
    ],
)
def test_every_other_refusal_of_the_edges_has_the_shape_of_the_gateways_errors(
    edge: tuple[str, RecordingShop], method: str, path: str, kwargs: dict[str, Any], http_status: int, code: int
) -> None:
    url, shop = edge
    shop.calls.clear()
    answer = httpx.request(method, url + path, timeout=10, **kwargs)
    assert answer.status_code == http_status, answer.text
    status = status_in(answer.headers["content-type"], answer.content)
    assert (status["code"], status["details"]) == (code, []), status
    assert shop.calls == []


def test_a_preflight_for_a_path_the_api_lacks_is_still_answered_by_the_cors_filter(
    edge: tuple[str, RecordingShop],
) -> None:
    # A browser reads the real call's 404 Status; the preflight itself is CORS's, not an error.
    url, _ = edge
    answer = httpx.options(
        url + "/v1/nothing",
        headers={"origin": "https://shop.example", "access-control-request-method": "GET"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "https://shop.example"
    assert answer.content == b""


@pytest.fixture(scope="module")
def impatient_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The edge with a request timeout of its own (the edge has none: its stream idle timeout, 5 min, ends a
    request that stops arriving), so that a request whose body never completes is answered in this test."""

    def request_timeout(manager: dict[str, Any]) -> None:
        manager["request_timeout"] = "1s"

    with running_edge(tmp_path_factory.mktemp("impatient-edge"), request_timeout) as edge:
        yield edge


async def test_a_request_whose_body_never_arrives_is_a_deadline_exceeded_saying_so_and_logged_with_it(
    impatient_edge: Edge,
) -> None:
    # Envoy's own answer was text/plain "request timeout"; then a Status of gRPC's code for a 408 without
    # grpc-status, UNKNOWN (http-grpc-status-mapping.md), which tells a client nothing. The edge's time for the
    # request ran out: DEADLINE_EXCEEDED, and no call made of it (docs/http-api.md).
    body = b'{"email": "x@example.com", '
    request = (
        b"POST /v1/login HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body) + 100, body)
    )
    answered, headers, answer = raw_answer(impatient_edge.url, request)
    assert answered == 408, answer
    status = status_in(headers.get("content-type", ""), answer)
    assert status["code"] == grpc_code.DEADLINE_EXCEEDED, status
    assert "did not arrive" in status["message"], status
    assert status["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "REQUEST_TIMEOUT",
            "domain": "shopmesh.gateway",
            "metadata": {},
        }
    ], status
    assert impatient_edge.shop.calls == []

    def logged() -> dict[str, Any] | None:
        lines = [json.loads(line) for line in impatient_edge.access_log.read_text().splitlines()]
        timed_out = [line for line in lines if line["http_status"] == 408]
        return timed_out[-1] if timed_out else None

    line = await eventually(logged, "the edge's access log line of the request that timed out")
    assert line["grpc_status"] == "DeadlineExceeded", line


# What the edge's own 429s and 503s ask a client to wait: in the Status (RetryInfo) and in HTTP (Retry-After,
# whole seconds), alike.
EDGE_RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
EDGE_RETRY_AFTER = "1"


def assert_come_back_later(answer: httpx.Response, http_status: int) -> None:
    """An answer of the edge's own telling the client to come back later, and when."""
    assert answer.status_code == http_status, answer.text
    status = status_in(answer.headers["content-type"], answer.content)
    assert status["code"] == grpc_code.UNAVAILABLE, status
    assert status["details"] == [EDGE_RETRY_INFO], status
    assert answer.headers.get("retry-after") == EDGE_RETRY_AFTER, answer.headers


@pytest.fixture(scope="module")
def edge_without_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with running_edge(tmp_path_factory.mktemp("edge-without-gateway"), gateway_away=True) as edge:
        yield edge


@pytest.mark.parametrize("path", ["/v1/products", "/v1/orders/ord_1"])
def test_the_gateway_away_is_a_503_saying_when_to_come_back(edge_without_gateway: Edge, path: str) -> None:
    answer = httpx.get(edge_without_gateway.url + path, timeout=10)
    assert_come_back_later(answer, 503)
    # Envoy's own reason stays the message.
    assert "upstream connect error" in answer.json()["message"], answer.text


def test_the_gateway_away_tells_a_grpc_client_when_to_come_back_in_status_details_agreeing_with_its_status(
    edge_without_gateway: Edge,
) -> None:
    # Envoy's own answer was a bare UNAVAILABLE with its reset's reason: no RetryInfo, nothing saying when.
    with (
        grpc.insecure_channel(urlsplit(edge_without_gateway.url).netloc) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(page_size=1), timeout=10)
    assert_grpc_client_told_to_come_back(refused.value)


@pytest.mark.parametrize("content_type", ["application/grpc-web+proto", "application/grpc-web-text"])
def test_the_gateway_away_tells_a_grpc_web_client_when_to_come_back_in_status_details_agreeing_with_its_status(
    edge_without_gateway: Edge, content_type: str
) -> None:
    # Envoy's own answer was HTTP 503 with the gRPC-Web filter's UNAVAILABLE and no details.
    framed = frame(b"")
    answer = httpx.post(
        f"{edge_without_gateway.url}/{PUBLIC_SERVICE}/ListProducts",
        content=base64.b64encode(framed) if content_type.endswith("-text") else framed,
        headers={"content-type": content_type, "x-grpc-web": "1"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.headers
    # Envoy's gRPC-Web filter types a trailers-only answer to either mode as binary: it has no body to encode.
    assert answer.headers["content-type"] == "application/grpc-web+proto", answer.headers
    assert answer.headers["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0]), answer.headers
    assert unquote(answer.headers["grpc-message"]) == GATEWAY_UNAVAILABLE_MESSAGE, answer.headers
    assert_edge_retry_info(status_details(answer.headers))
    assert status_in_headers(answer.headers).retry_delay_seconds == 1.0


@pytest.fixture(scope="module")
def edge_whose_gateway_never_accepts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The edge in front of a hung gateway: a listener whose accept queue is full (`listen(0)`, holding a
    connection nobody accepts), so the kernel drops the edge's SYN and Envoy's connect times out (its reason
    `connection_timeout`, flag UF). No connection was made, so no call."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    with contextlib.ExitStack() as held:
        held.enter_context(listener)
        # One connection fills a queue of listen(0); a second, never completed, makes sure of it.
        held.enter_context(socket.create_connection(address, timeout=10))
        waiting = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        waiting.setblocking(False)
        waiting.connect_ex(address)
        with running_edge(tmp_path_factory.mktemp("edge-gateway-never-accepts"), gateway_port=address[1]) as edge:
            yield edge


def test_a_connect_timeout_to_the_gateway_is_a_503_saying_when_to_come_back(
    edge_whose_gateway_never_accepts: Edge,
) -> None:
    # The connection was never made, so neither was the call: coming back is safe, a POST's too.
    answer = httpx.post(edge_whose_gateway_never_accepts.url + "/v1/orders", json={}, timeout=10)
    assert_come_back_later(answer, 503)
    assert "connection timeout" in answer.json()["message"], answer.text


def test_a_connect_timeout_to_the_gateway_tells_a_grpc_client_when_to_come_back(
    edge_whose_gateway_never_accepts: Edge,
) -> None:
    with (
        grpc.insecure_channel(urlsplit(edge_whose_gateway_never_accepts.url).netloc) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        shop_pb2_grpc.ShopServiceStub(channel).PlaceOrder(shop_pb2.PlaceOrderRequest(), timeout=10)
    assert_grpc_client_told_to_come_back(refused.value)


def assert_grpc_client_told_to_come_back(call: grpc.RpcError) -> None:
    """A gRPC client's refusal by the edge itself: UNAVAILABLE with the edge's message, and a Status in
    grpc-status-details-bin agreeing with both and saying when to come back (assert_edge_retry_info)."""
    assert call.code() == grpc.StatusCode.UNAVAILABLE, call
    assert call.details() == GATEWAY_UNAVAILABLE_MESSAGE, call
    # from_call refuses a Status whose code or message differs from grpc-status and grpc-message.
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    assert status is not None, call.trailing_metadata()  # type: ignore[attr-defined]
    assert_edge_retry_info(status)


def assert_edge_retry_info(status: status_pb2.Status) -> None:
    """The Status of a gRPC client's answer from the edge itself asking it to come back later: the HTTP/JSON
    client's RetryInfo of 1s, and its message and code those of grpc-message and grpc-status."""
    assert (status.code, status.message) == (grpc.StatusCode.UNAVAILABLE.value[0], GATEWAY_UNAVAILABLE_MESSAGE)
    [detail] = status.details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry), detail
    assert retry.retry_delay == duration_pb2.Duration(seconds=1)


def one_request_an_hour(manager: dict[str, Any]) -> None:
    """A local rate limit of one request an hour (the edge has none: this is one an operator would add, or a
    later release), first in the chain: the second request is Envoy's own 429, made before the CORS filter
    has read the request."""
    limit = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "edge_limit",
            "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "3600s"},
            "filter_enabled": {"default_value": {"numerator": 100}, "runtime_key": "edge_limit_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100}, "runtime_key": "edge_limit_enforced"},
        },
    }
    manager["http_filters"].insert(0, limit)


def read_until_a_request(connection: socket.socket) -> None:
    """Read HTTP/2 from the edge until a request's HEADERS frame has come (after the client preface, 24 bytes,
    each frame is its 9-byte header, its type at [3], then its payload)."""
    received = b""
    while True:
        while len(received) >= 24 + 9:
            length = int.from_bytes(received[24:27], "big")
            if received[27] == 0x1:
                return
            if len(received) < 24 + 9 + length:
                break
            received = received[:24] + received[24 + 9 + length :]
        chunk = connection.recv(65536)
        if not chunk:
            return
        received += chunk


@pytest.fixture(scope="module")
def edge_whose_gateway_hangs_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The edge in front of a gateway that takes each connection, reads the request on it, and closes it without
    an answer (a gateway killed during a call): Envoy's own 503, after the request reached the gateway."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopped = threading.Event()

    def hang_up() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10)
                with contextlib.suppress(OSError):
                    read_until_a_request(connection)

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with running_edge(
            tmp_path_factory.mktemp("edge-gateway-hangs-up"), gateway_port=listener.getsockname()[1]
        ) as edge:
            yield edge
    finally:
        stopped.set()
        thread.join(5)
        listener.close()


def test_a_503_after_the_request_reached_the_gateway_does_not_say_come_back(
    edge_whose_gateway_hangs_up: Edge,
) -> None:
    # The gateway may have carried the call out before its connection closed (an order placed, a card charged):
    # "retry in 1s" would invite a second one. The client decides, by the method and its idempotency key.
    answer = httpx.post(edge_whose_gateway_hangs_up.url + "/v1/orders", json={}, timeout=10)
    assert answer.status_code == 503, answer.text
    status = status_in(answer.headers["content-type"], answer.content)
    assert (status["code"], status["details"]) == (grpc_code.UNAVAILABLE, []), status
    assert "connection termination" in status["message"], status
    assert "retry-after" not in answer.headers, answer.headers
    with (
        grpc.insecure_channel(urlsplit(edge_whose_gateway_hangs_up.url).netloc) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        shop_pb2_grpc.ShopServiceStub(channel).PlaceOrder(shop_pb2.PlaceOrderRequest(), timeout=10)
    call = refused.value
    assert call.code() == grpc.StatusCode.UNAVAILABLE, call
    assert "connection termination" in call.details(), call  # type: ignore[attr-defined]
    assert "grpc-status-details-bin" not in dict(call.trailing_metadata()), call  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def rate_limited_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with running_edge(tmp_path_factory.mktemp("rate-limited-edge"), one_request_an_hour) as edge:
        yield edge


def test_a_local_rate_limit_of_the_edges_is_a_429_saying_when_to_come_back(rate_limited_edge: Edge) -> None:
    first = httpx.get(rate_limited_edge.url + "/v1/products?pageSize=1", timeout=10)
    assert first.status_code == 200, first.text
    assert_come_back_later(httpx.get(rate_limited_edge.url + "/v1/products?pageSize=1", timeout=10), 429)
    assert rate_limited_edge.shop.calls == [("ListProducts", "1")]


@pytest.mark.parametrize(("query", "http_status"), [("dependency away", 503), ("rate limited", 429)])
def test_the_gateways_own_come_back_later_passes_with_its_own_retry_info_untouched(
    edge: tuple[str, RecordingShop], query: str, http_status: int
) -> None:
    url, _ = edge
    answer = httpx.get(url + "/v1/products:search", params={"query": query}, timeout=10)
    assert answer.status_code == http_status, answer.text
    status = status_in(answer.headers["content-type"], answer.content)
    code, reason = COME_BACK_LATER[query]
    assert (status["code"], status["message"]) == (code.value[0], f"the gateway's own {code.name}"), status
    assert status["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "shopmesh.gateway",
            "metadata": {},
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{GATEWAY_RETRY_DELAY.seconds}s"},
    ], status
    # The edge adds nothing of its own to the gateway's answer.
    assert "retry-after" not in answer.headers, answer.headers


ORIGIN = "https://shop.example"


@pytest.fixture
def spent_rate_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """An edge of one_request_an_hour's whose one request is spent: its next answer is its own 429."""
    with running_edge(tmp_path_factory.mktemp("spent-rate-limit"), one_request_an_hour) as edge:
        assert httpx.get(edge.url + "/v1/products?pageSize=1", timeout=10).status_code == 200
        yield edge


@pytest.mark.parametrize(
    ("edge_fixture", "grpc_web", "headers", "http_status"),
    [
        # Envoy's local replies the CORS filter never saw: a local rate limit ahead of it; headers too large,
        # refused by the codec before any filter (a long URL, a page's many headers).
        ("spent_rate_limit", False, {}, 429),
        ("spent_rate_limit", True, {}, 429),
        ("edge_process", False, {"x-padding": "a" * 70 * 1024}, 431),
        # The gateway away: the router's reply, which the CORS filter sees, keeps one Access-Control-Allow-Origin.
        ("edge_without_gateway", False, {}, 503),
        ("edge_without_gateway", True, {}, 200),
    ],
)
def test_the_edges_own_refusals_are_readable_by_a_page_of_any_origin(
    request: pytest.FixtureRequest, edge_fixture: str, grpc_web: bool, headers: dict[str, str], http_status: int
) -> None:
    # Without Access-Control-Allow-Origin a browser hands the page a network error, not the edge's answer: its
    # 429 or 503 saying when to come back, its gRPC-Web status.
    edge: Edge = request.getfixturevalue(edge_fixture)
    headers = {"origin": ORIGIN, **headers, **(GRPC_WEB_HEADERS if grpc_web else {})}
    if grpc_web:
        answer = httpx.post(
            f"{edge.url}/{PUBLIC_SERVICE}/ListProducts", content=frame(b""), headers=headers, timeout=10
        )
    else:
        answer = httpx.get(edge.url + "/v1/products", headers=headers, timeout=10)
    assert answer.status_code == http_status, (answer.headers, answer.content)
    assert answer.headers.get_list("access-control-allow-origin") in ([ORIGIN], ["*"]), answer.headers
    exposed = {name.strip() for name in answer.headers.get("access-control-expose-headers", "").split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed, answer.headers
    # The answer depends on the origin: a shared cache keeps one copy per origin (docs/http-api.md, CORS).
    assert answer.headers.get_list("vary") == ["Origin"], answer.headers


@pytest.mark.parametrize(
    ("edge_fixture", "http_status"),
    [
        # A local rate limit ahead of the CORS filter: header_hygiene's headers (`readable_cross_origin`).
        ("spent_rate_limit", 429),
        # The gateway away: the router's reply, which the CORS filter sees: its policy's headers.
        ("edge_without_gateway", 503),
    ],
)
def test_the_edges_come_back_later_exposes_its_retry_after_to_a_page_of_any_origin(
    request: pytest.FixtureRequest, edge_fixture: str, http_status: int
) -> None:
    # A page that reads no JSON waits as Retry-After says (docs/http-api.md), which a browser hides from its
    # script unless exposed: a header outside CORS's safelist.
    edge: Edge = request.getfixturevalue(edge_fixture)
    answer = httpx.get(edge.url + "/v1/products", headers={"origin": ORIGIN}, timeout=10)
    assert_come_back_later(answer, http_status)
    exposed = {name.strip() for name in answer.headers.get("access-control-expose-headers", "").split(",")}
    assert "retry-after" in exposed, answer.headers


@pytest.mark.parametrize(
    ("method", "path", "http_status"),
    [
        # A method the path does not take: a cross-origin HEAD or GET comes without a preflight.
        ("DELETE", "/v1/orders", 405),
        # A query naming a path variable: a cross-origin GET comes without a preflight.
        ("GET", "/v1/orders/ord_1?orderId=ord_2", 400),
        # A query on a POST whose body is the whole request: so may a form's POST.
        ("POST", "/v1/orders?card.number=4242", 400),
    ],
)
def test_the_edges_direct_responses_are_readable_by_a_page_of_any_origin(
    edge_process: Edge, method: str, path: str, http_status: int
) -> None:
    # Answered by a route itself, which the CORS filter skips: the edge's answers carry
    # Access-Control-Allow-Origin all the same, once.
    answer = httpx.request(method, edge_process.url + path, headers={"origin": ORIGIN}, json={}, timeout=10)
    assert answer.status_code == http_status, (answer.headers, answer.content)
    assert answer.headers.get_list("access-control-allow-origin") == ["*"], answer.headers
    assert answer.headers.get_list("vary") == ["Origin"], answer.headers
