"""Connecting to a port a server may not listen on yet without taking the port from it: the launcher's readiness
probes and the test helpers' waits (`shopmesh_chassis.testing.accepts_connections`) dial such ports."""

from __future__ import annotations

import socket
import struct
from typing import Any, Protocol


class ConnectedSocket(Protocol):
    """A socket.socket, or the asyncio.TransportSocket of a stream (`writer.get_extra_info("socket")`)."""

    def getsockname(self) -> Any: ...
    def getpeername(self) -> Any: ...
    def setsockopt(self, level: int, optname: int, value: bytes, /) -> None: ...


def connected_to_a_server(sock: ConnectedSocket) -> bool:
    """Whether `sock`, just connected, reached a server: not when the connection is reset already (whoever
    accepted it is gone), nor when it reached itself.

    Linux may give a connect to a port nobody listens on yet, as its own end, that very port (the ports the stack
    and the tests use lie in the ephemeral range connects are served from): the connection reaches itself and
    looks accepted, and the socket, held or in TIME_WAIT for a minute once closed, keeps the server from binding
    its port. Such a socket is made to reset when it closes (SO_LINGER 0), which frees the port at once. Once a
    server listens there, no connect can get the port."""
    try:
        reached_itself = bool(sock.getsockname() == sock.getpeername())
    except OSError:
        return False
    if reached_itself:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return not reached_itself
