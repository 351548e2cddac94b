"""The stack's readiness probes: a probe dialled before its server listens never takes the server's port, and a
probe finds a server on an IPv6 host as on an IPv4 one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shopmesh_chassis.testing import DiallingFromItsTarget, free_ports
from shopmesh_platform import probes

IPV6_LOOPBACK = "::1"


def bind_as_servers_do(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server, gRPC and Envoy bind
        server.bind((host, port))
        server.listen()


def require_ipv6_loopback() -> None:
    """Fail, loudly, on a machine without ::1: these tests prove the probes work there, and a skip would pass."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind((IPV6_LOOPBACK, 0))
    except OSError as exc:
        pytest.fail(f"this machine has no IPv6 loopback ({IPV6_LOOPBACK}: {exc}); the IPv6 probe tests need one")


PROBES: dict[str, Callable[[str, int], bool]] = {
    "listening": probes.listening,
    "accepts": lambda host, port: asyncio.run(probes.accepts(host, port)),
    "http_ok": lambda host, port: asyncio.run(probes.http_ok(host, port, "/ready")),
}
HOSTS = {"ipv4": "127.0.0.1", "ipv6": IPV6_LOOPBACK}


@pytest.mark.parametrize("host", HOSTS.values(), ids=HOSTS.keys())
@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
def test_a_probe_that_reaches_itself_says_no_and_leaves_the_port_to_the_server_it_waits_for(
    monkeypatch: pytest.MonkeyPatch, probe: Callable[[str, int], bool], host: str
) -> None:
    """The stack polls a child's port while the child starts; Linux may give such a connect, as its own end, the
    port it dials (the stack's ports lie in the ephemeral range): the connection reaches itself and looks accepted
    (`listening`: a port taken; `accepts`: a sink ready), and once closed holds the port in TIME_WAIT for a
    minute, so the child cannot bind it."""
    if host == IPV6_LOOPBACK:
        require_ipv6_loopback()
    [port] = free_ports(1, host)
    with monkeypatch.context() as patched:
        patched.setattr(socket, "socket", DiallingFromItsTarget)
        assert probe(host, port) is False
    bind_as_servers_do(host, port)


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # A Host an IPv6 literal without brackets is no uri-host (RFC 9110): a strict server refuses it.
        host = self.headers.get("Host", "")
        if ":" in host and not host.startswith("["):
            self.send_response(400)
        else:
            self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # no request lines on the test's stderr


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def ready_server_on_ipv6_loopback() -> Iterator[int]:
    """An HTTP server on ::1 that answers 200 on /ready, as Envoy's admin and NATS' monitor do; yields its port."""
    require_ipv6_loopback()
    [port] = free_ports(1, IPV6_LOOPBACK)
    server = _IPv6Server((IPV6_LOOPBACK, port), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
def test_a_probe_finds_a_server_listening_on_the_ipv6_loopback(probe: Callable[[str, int], bool]) -> None:
    """A plan's host may be an IPv6 address: the probes dial it over IPv6 (an IPv4 socket cannot reach ::1)."""
    with ready_server_on_ipv6_loopback() as port:
        assert probe(IPV6_LOOPBACK, port) is True
    assert probe(IPV6_LOOPBACK, port) is False
