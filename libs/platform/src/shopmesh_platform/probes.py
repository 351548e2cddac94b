"""How the stack tells that a process it started is ready, or that a port or a socket is taken: plain TCP and
Unix socket connects and an HTTP/1.1 GET, each bounded, answering yes or no. (A service's readiness is its
gRPC health, dialled at its address: host:port, or behind a sidecar its socket, `unix:<path>`.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from shopmesh_chassis.sockets import connected_to_a_server
from shopmesh_chassis.testing import accepts_connections


def listening(host: str, port: int) -> bool:
    # A connect to a port nobody listens on may reach itself: that is no server (accepts_connections).
    return accepts_connections(host, port)


def unix_listening(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(str(path)) == 0


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to a server listening on host:port; None when none answers within a second.

    Polled while a child starts, a connect to its port may get that very port as its own end (the stack's ports
    lie in the kernel's ephemeral range) and reach itself: no server, and a socket that would hold the port the
    child is about to bind. Such a connection is reset, which frees the port at once (connected_to_a_server)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return None
    if connected_to_a_server(writer.get_extra_info("socket")):
        return reader, writer
    await _close(writer)
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def accepts(host: str, port: int) -> bool:
    connection = await _connect(host, port)
    if connection is None:
        return False
    await _close(connection[1])
    return True


async def http_ok(host: str, port: int, path: str) -> bool:
    connection = await _connect(host, port)
    if connection is None:
        return False
    # An IPv6 literal in brackets, as a Host header writes it (RFC 9110's uri-host).
    return await _get_ok(*connection, f"[{host}]" if ":" in host else host, path)


async def unix_http_ok(socket_path: Path, path: str) -> bool:
    """200 to a GET of `path` from the HTTP server on the Unix socket at `socket_path` (a sidecar's admin)."""
    try:
        connection = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1.0)
    except (OSError, TimeoutError):
        return False
    return await _get_ok(*connection, "localhost", path)


async def _get_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, path: str) -> bool:
    try:
        # HTTP/1.1: Envoy's admin interface refuses 1.0 (426).
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 1.0)
        return status_line.split()[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        await _close(writer)
