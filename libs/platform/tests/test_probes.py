"""The stack's readiness probes: a probe dialled before its server listens never takes the server's port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from shopmesh_chassis.testing import DiallingFromItsTarget, free_ports
from shopmesh_platform import probes


def bind_as_servers_do(port: int) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server, gRPC and Envoy bind
        server.bind(("127.0.0.1", port))
        server.listen()


PROBES: dict[str, Callable[[int], bool]] = {
    "listening": lambda port: probes.listening("127.0.0.1", port),
    "accepts": lambda port: asyncio.run(probes.accepts("127.0.0.1", port)),
    "http_ok": lambda port: asyncio.run(probes.http_ok("127.0.0.1", port, "/ready")),
}


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
def test_a_probe_that_reaches_itself_says_no_and_leaves_the_port_to_the_server_it_waits_for(
    monkeypatch: pytest.MonkeyPatch, probe: Callable[[int], bool]
) -> None:
    """The stack polls a child's port while the child starts; Linux may give such a connect, as its own end, the
    port it dials (the stack's ports lie in the ephemeral range): the connection reaches itself and looks accepted
    (`listening`: a port taken; `accepts`: a sink ready), and once closed holds the port in TIME_WAIT for a
    minute, so the child cannot bind it."""
    [port] = free_ports(1)
    with monkeypatch.context() as patched:
        patched.setattr(socket, "socket", DiallingFromItsTarget)
        assert probe(port) is False
    bind_as_servers_do(port)
