"""gRPC's message framing and trailers-only status, for tests that speak gRPC-Web (or gRPC) over plain HTTP:
an HTTP client such as httpx has no gRPC library to frame its messages or read the status of the answer."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from urllib.parse import unquote

import grpc
from google.rpc import status_pb2

from shopmesh_chassis.grpc_errors import ErrorDetails, details_from

# The flag of a gRPC-Web frame that carries the trailers (in the body, after the messages) rather than a message.
TRAILERS_FLAG = 0x80
# What the Envoy gRPC-Web filter takes as a binary gRPC-Web call.
GRPC_WEB_HEADERS = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
_PREFIX = struct.Struct(">BI")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def frame(message: bytes, length: int | None = None, *, flags: int = 0) -> bytes:
    """`message` length-prefixed as gRPC sends it; `length` declares another length than the message's, as a
    client whose body is cut short or runs over would; `flags` another flag byte (1: compressed,
    TRAILERS_FLAG: a frame no request may hold)."""
    return _PREFIX.pack(flags, len(message) if length is None else length) + message


def frames(body: bytes) -> list[tuple[int, bytes]]:
    """The (flags, payload) of each frame of a gRPC-Web answer's body, in order; a body that does not end on a
    frame's end fails the test."""
    found = []
    while body:
        assert len(body) >= _PREFIX.size, f"a frame's prefix cut short: {body!r}"
        flags, length = _PREFIX.unpack_from(body)
        end = _PREFIX.size + length
        assert len(body) >= end, f"a frame of {length} bytes cut short: {body!r}"
        found.append((flags, body[_PREFIX.size : end]))
        body = body[end:]
    return found


def details_bin(headers: Mapping[str, str]) -> bytes:
    """The grpc-status-details-bin header of a trailers-only answer, decoded: gRPC sends its base64 unpadded."""
    raw = headers["grpc-status-details-bin"]
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def status_details(headers: Mapping[str, str]) -> status_pb2.Status:
    """The google.rpc.Status of a trailers-only answer, from its grpc-status-details-bin header."""
    return status_pb2.Status.FromString(details_bin(headers))


def status_in_headers(headers: Mapping[str, str]) -> ErrorDetails:
    """The status of a trailers-only answer (in its headers), as details_of reads a gRPC call's."""
    code = _CODES[int(headers["grpc-status"])]
    metadata = [("grpc-status-details-bin", details_bin(headers))] if "grpc-status-details-bin" in headers else []
    return details_from(code, unquote(headers.get("grpc-message", "")), metadata)
