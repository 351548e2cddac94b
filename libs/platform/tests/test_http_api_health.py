"""The edge's own /healthz at the real Envoy of `bootstrap()` (docs/http-api.md): on the public listener, for
clients and load balancers, and on the metrics listener, the kubelet's probes on Kubernetes, which a flood of
the public listener's connections must not reach. GET and HEAD only on both, as the edge's other own paths, and
nothing of Envoy's inner names."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shopmesh_platform.http_api import HEALTH_PATH

from .conftest import Edge, running_edge

# Where each listener is, on an Edge.
LISTENERS = {"public": lambda edge: edge.url, "metrics": lambda edge: edge.metrics_url}
# How long the test waits for any one answer or connection: an answer comes in milliseconds.
WAIT = 20
# The flood's connections stay open with their headers unfinished past the test's end, whatever its pace: the
# edge's own headers and request timeouts (10 s, 30 s) would close them.
FLOOD_HOLDS = "600s"


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_healthz_answers_get_and_head_without_naming_envoys_cluster(
    edge_process: Edge, listener: str, method: str
) -> None:
    answer = httpx.request(method, f"{LISTENERS[listener](edge_process)}{HEALTH_PATH}", timeout=WAIT)
    assert answer.status_code == 200, answer.headers
    assert not [name for name in answer.headers if name.startswith("x-envoy-")], answer.headers


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("method", ["TRACE", "DELETE", "PUT", "POST", "PATCH"])
def test_healthz_refuses_other_methods_405_naming_the_ones_it_takes(
    edge_process: Edge, listener: str, method: str
) -> None:
    before = list(edge_process.shop.calls)
    answer = httpx.request(method, f"{LISTENERS[listener](edge_process)}{HEALTH_PATH}", timeout=WAIT)
    assert answer.status_code == 405, (answer.status_code, answer.headers, answer.text)
    assert answer.headers["allow"] == "GET, HEAD"
    assert edge_process.shop.calls == before


def test_the_kubelets_probe_is_answered_while_a_flood_holds_every_connection_the_public_listener_may_have(
    tmp_path: Path,
) -> None:
    # A cap of the test's own (the edge's is 10,000), which the flood fills as a client that reopens connections
    # as fast as they are shed does: the public listener's /healthz, the probe's old place, then finds no room.
    cap = 8
    with running_edge(tmp_path, held_open, max_connections=cap) as edge, flooded(edge, cap):
        for method in ("GET", "HEAD"):
            answer = httpx.request(method, f"{edge.metrics_url}{HEALTH_PATH}", timeout=WAIT)
            assert answer.status_code == 200, (method, answer.status_code, answer.text)


def held_open(manager: dict[str, Any]) -> None:
    """A `configure` for running_edge: FLOOD_HOLDS in place of the timeouts that end a request whose headers
    never finish (the flood's)."""
    for setting in ("request_headers_timeout", "request_timeout"):
        assert setting in manager, f"the edge sets no {setting}"
        manager[setting] = FLOOD_HOLDS


@contextlib.contextmanager
def flooded(edge: Edge, cap: int) -> Iterator[None]:
    """Connections to the public listener, each holding a request whose headers never finish (no idle timeout
    sheds it), opened until the public listener's own /healthz finds none left: the cap is full."""
    host, port = urlsplit(edge.url).netloc.split(":")
    held: list[socket.socket] = []
    try:
        # Past the cap by a few: Envoy counts a connection as it accepts it, which may trail its connect.
        for _ in range(2 * cap):
            if not public_healthz_answers(edge):
                break
            connection = socket.create_connection((host, int(port)), timeout=WAIT)
            held.append(connection)
            connection.sendall(b"GET /v1/products HTTP/1.1\r\nhost: shop\r\n")
        else:
            raise AssertionError(f"the public listener still answered after {len(held)} connections held open")
        yield
    finally:
        for connection in held:
            connection.close()


def public_healthz_answers(edge: Edge) -> bool:
    try:
        return httpx.get(f"{edge.url}{HEALTH_PATH}", timeout=WAIT).status_code == 200
    except httpx.TransportError:
        # Closed as it was accepted (downstream_global_cx_overflow).
        return False
