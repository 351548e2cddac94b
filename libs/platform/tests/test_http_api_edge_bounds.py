"""What a request may hold of the edge while it is unfinished, at the real Envoy of `bootstrap()`: a request
must arrive whole (headers, then the rest) within the edge's timeouts or be answered 408 with no call made, an
HTTP/2 connection is offered a bounded number of streams and window, and Envoy's heap is watched against a bound
beyond which it refuses requests, and idle connections are let go within seconds near the cap on connections.
The timeouts are the edge's own, shortened in the test's configuration."""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shopmesh_platform.http_api import (
    IDLE_TIMEOUT,
    INITIAL_CONNECTION_WINDOW_BYTES,
    INITIAL_STREAM_WINDOW_BYTES,
    MAX_CONCURRENT_STREAMS,
    PER_CONNECTION_BUFFER_BYTES,
    REQUEST_HEADERS_TIMEOUT,
    ROUTE_TIMEOUT,
    HttpApi,
    bootstrap,
    descriptor_set,
)

from .conftest import LONG_DESCRIPTIONS, LONGEST_DESCRIPTION, Edge, running_edge

# The test's own timeouts, in place of the edge's (which are tens of seconds).
SHORT = 1
# How long the test waits for the edge's answer: far past SHORT, far short of the edge's own timeouts (the 5 min
# stream idle timeout, which answered a held body before the request timeout existed).
WAIT = 20


def shortened(setting: str, value: str) -> Any:
    """A `configure` for running_edge: the connection manager's `setting`, which the edge must have, shortened."""

    def configure(manager: dict[str, Any]) -> None:
        assert setting in manager, f"the edge sets no {setting}"
        manager[setting] = value

    return configure


def connect(edge: Edge) -> socket.socket:
    host, port = urlsplit(edge.url).netloc.split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def answer_of(connection: socket.socket) -> bytes:
    """Everything the edge sends before it closes the connection (or WAIT ends)."""
    chunks = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_body(answer: bytes) -> tuple[str, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode()
    return status, json.loads(body) if body else {}


def test_the_edge_bounds_a_whole_request_by_the_calls_own_bound_and_an_idle_connection() -> None:

    api = HttpApi(
        host="127.0.0.1",
        port=1,
        admin_host="127.0.0.1",
        admin_port=2,
        gateway="127.0.0.1:3",
        descriptor=descriptor_set(),
    )
    [public] = [item for item in bootstrap(api)["static_resources"]["listeners"] if item["name"] == "http-api"]
    manager = public["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["request_timeout"] == ROUTE_TIMEOUT
    assert manager["request_headers_timeout"] == REQUEST_HEADERS_TIMEOUT
    assert manager["common_http_protocol_options"]["idle_timeout"] == IDLE_TIMEOUT


def test_a_body_that_never_arrives_whole_is_answered_408_at_the_request_timeout_and_calls_nothing(
    tmp_path: Path,
) -> None:
    with running_edge(tmp_path, shortened("request_timeout", f"{SHORT}s")) as edge, connect(edge) as connection:
        connection.sendall(
            b"POST /v1/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b" " * 500
        )
        status, body = status_and_body(answer_of(connection))
        assert status == "HTTP/1.1 408 Request Timeout", status
        assert body["details"][0]["reason"] == "REQUEST_TIMEOUT", body
        assert edge.shop.calls == []


def test_headers_that_never_arrive_whole_are_answered_408_at_the_headers_timeout(tmp_path: Path) -> None:
    with running_edge(tmp_path, shortened("request_headers_timeout", f"{SHORT}s")) as edge, connect(edge) as connection:
        connection.sendall(b"GET /v1/products HTTP/1.1\r\nhost: shop\r\n")
        status, _ = status_and_body(answer_of(connection))
        assert status == "HTTP/1.1 408 Request Timeout", status
        assert edge.shop.calls == []


def test_a_transcoded_answer_far_larger_than_a_connections_buffer_comes_back_whole(tmp_path: Path) -> None:
    # The transcoder holds a unary answer whole to turn it into JSON: bounded by the connection's buffer limit
    # (PER_CONNECTION_BUFFER_BYTES), a page of 100 products was Envoy's 500 "Response not transcoded".
    with running_edge(tmp_path) as edge:
        url = f"{edge.url}/v1/products?pageSize=100&category={LONG_DESCRIPTIONS}"
        with urllib.request.urlopen(url, timeout=WAIT) as answer:
            body = answer.read()
            status = answer.status
    assert len(body) > 10 * PER_CONNECTION_BUFFER_BYTES
    assert status == 200
    products = json.loads(body)["products"]
    assert len(products) == 100
    assert all(len(product["description"]) == LONGEST_DESCRIPTION for product in products)


def http2_settings(connection: socket.socket) -> tuple[dict[int, int], int]:
    """The server's SETTINGS and its connection window's first WINDOW_UPDATE (0: none) on an HTTP/2 connection
    opened with prior knowledge, as a gRPC client opens one."""
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + bytes([4, 0]) + bytes(4))
    data = b""
    settings: dict[int, int] | None = None
    window = 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and (settings is None or not window):
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            length, kind, flags, stream = int.from_bytes(data[:3], "big"), data[3], data[4], data[5:9]
            payload, data = data[9 : 9 + length], data[9 + length :]
            if kind == 4 and not flags & 1:
                settings = dict(struct.unpack(">HI", payload[i : i + 6]) for i in range(0, length, 6))
            elif kind == 8 and stream == bytes(4):
                window = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if settings is not None and window:
            break
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    assert settings is not None, "no SETTINGS from the edge"
    return settings, window


def test_an_http2_client_is_offered_a_bounded_number_of_streams_and_window(tmp_path: Path) -> None:
    with running_edge(tmp_path) as edge, connect(edge) as connection:
        settings, window_update = http2_settings(connection)
    # SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE; the connection's window opens from HTTP/2's
    # 65535 by the update.
    assert settings[3] == MAX_CONCURRENT_STREAMS, settings
    assert settings[4] == INITIAL_STREAM_WINDOW_BYTES, settings
    assert 65535 + window_update == INITIAL_CONNECTION_WINDOW_BYTES, window_update


def test_past_its_heap_bound_the_edge_refuses_requests_and_calls_nothing(tmp_path: Path) -> None:
    # A bound Envoy's heap is past from its start: the overload manager's actions are on from its first reading.
    with running_edge(tmp_path, max_heap_bytes=1024 * 1024) as edge:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{edge.admin_url}/stats?filter=overload", timeout=5) as stats:
                text = stats.read().decode()
            if "overload.envoy.overload_actions.stop_accepting_requests.active: 1" in text:
                break
            time.sleep(0.25)
        assert "overload.envoy.overload_actions.stop_accepting_requests.active: 1" in text, text
        assert "overload.envoy.overload_actions.reset_high_memory_stream.scale_percent: 100" in text, text
        for point in ("http1_server_abort_dispatch", "http2_server_go_away_and_close_on_dispatch"):
            assert f"overload.envoy.load_shed_points.{point}.scale_percent: 100" in text, text
        with connect(edge) as connection:
            connection.sendall(b"GET /v1/products HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
            answer = answer_of(connection)
        # Refused (stop_accepting_requests), or the connection closed as it sent (the load shed points).
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 Service Unavailable"), answer[:200]
        assert edge.shop.calls == []


def test_at_the_connection_cap_idle_connections_are_closed_within_seconds_and_a_new_client_is_served(
    tmp_path: Path,
) -> None:
    # A cap of the test's own: the edge's 10,000 idle connections, opened in about a second, shut every other
    # client out for the hour of Envoy's default idle timeout.
    cap = 20
    with running_edge(tmp_path, max_connections=cap) as edge:
        idle = [connect(edge) for _ in range(cap)]
        try:
            started = time.monotonic()
            # WAIT is far shorter than the edge's IDLE_TIMEOUT, which applies below the cap.
            held = [connection for connection in idle if not closed_by_edge(connection, started + WAIT)]
            assert held == [], f"{len(held)} of {cap} idle connections still open after {WAIT} s"
            with urllib.request.urlopen(f"{edge.url}/v1/products?pageSize=1", timeout=WAIT) as answer:
                assert answer.status == 200
        finally:
            for connection in idle:
                connection.close()


def closed_by_edge(connection: socket.socket, deadline: float) -> bool:
    """Whether the edge closes `connection` (its end of stream, or a reset) by `deadline`, sending nothing."""
    connection.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
