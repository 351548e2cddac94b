"""How large a request may be: a body over MAX_REQUEST_BYTES is refused (by the buffer filter, and on the
unbuffered routes by its declared length) and answered RESOURCE_EXHAUSTED with an ErrorInfo, to HTTP/JSON, gRPC
and gRPC-Web clients alike; headers over MAX_REQUEST_HEADERS_KIB are refused too."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .contract import PUBLIC_SERVICE
from .local_replies import ERROR_DOMAIN, answered_over_grpc, answered_over_http, error_info
from .matching import FILTER_CONFIG, GRPC, GRPC_WEB_TEXT, TRANSCODER_OFF

BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"

# A request body larger than this is refused (413) before it is transcoded or forwarded: no call of the API
# needs more. (With Envoy 1.40 the transcoder's own max_request_body_size let a larger unary JSON body
# through; the buffer filter does not.)
MAX_REQUEST_BYTES = 1024 * 1024
# The longest content-length of a gRPC-Web text request (base64, padded) whose decoded body is within
# MAX_REQUEST_BYTES, as the buffer filter measures it after the gRPC-Web filter: 4 characters per 3 bytes begun.
# The decoded body is the gRPC frames, headers and all, as in binary mode. Padding makes it 1 or 2 bytes lenient.
MAX_REQUEST_BASE64_BYTES = 4 * -(-MAX_REQUEST_BYTES // 3)
# The ErrorInfo reason of the RESOURCE_EXHAUSTED a gRPC or gRPC-Web client gets for a request over
# MAX_REQUEST_BYTES, and its message. Envoy's own answer is UNKNOWN "Payload Too Large" (gRPC's mapping of a 413,
# meant for a client reading a proxy that speaks no gRPC); a gRPC server answers a message over its limit
# RESOURCE_EXHAUSTED, so a client handles both alike.
REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
REQUEST_TOO_LARGE_MESSAGE = f"the request is larger than the edge takes: {MAX_REQUEST_BYTES} bytes (1 MiB) at most"
# A request whose headers (its path and query string included) are larger is refused (431) before anything
# reads it. Envoy's own default, stated because the gateway's gRPC server must take what the edge forwards as
# metadata: these headers and the transcoder's copy of the path (x-envoy-original-path), so at most about twice
# this (shopmesh_chassis.server.MAX_METADATA_BYTES).
MAX_REQUEST_HEADERS_KIB = 60
# A request with more headers than this is refused too, here rather than past the edge: 431 to HTTP/1.1 (a
# browser, curl), a reset stream to HTTP/2 (Envoy's answer to either limit). Envoy's own default, stated: what the
# edge forwards has a few more (x-forwarded-for, x-request-id, traceparent, its copy of the path...), which the
# gateway's sidecar and the gateway take (shopmesh_platform.mesh.envoy.MAX_HEADERS_COUNT).
MAX_REQUEST_HEADERS_COUNT = 100
# A request's headers must have arrived whole within this of their first byte (Envoy's edge guidance), or the
# edge answers 408 and calls nothing: a client trickling them holds a stream for no call.
REQUEST_HEADERS_TIMEOUT = "10s"
# A client's connection with no request under way is closed after this (Envoy's default is an hour, and a
# connection that never sends a byte meets no other timeout). Above the gap between a page's calls and a
# shopper's clicks, so a browser seldom reconnects (its own keep-alive is 2 to 5 min, and it reopens a
# connection the server closed at no cost but a TCP handshake, retrying a request that met the close), and above
# a cloud load balancer's usual idle timeout (60 s), which must close first so that it never sends a request on
# a connection the edge is closing. Near the cap on connections it is shortened to seconds
# (mesh.envoy.IDLE_TIMEOUT_AT_CAP).
IDLE_TIMEOUT = "75s"
# HTTP/2: the streams one connection may have open at once, and how much a client may send ahead of what the
# edge has read, per stream and per connection (Envoy's edge guidance; its defaults, 2^31 - 1 streams and a
# 256 MiB window per stream, let one connection hold any number of bodies and more than the buffer filter's
# limit of each). A body still reaches MAX_REQUEST_BYTES: the window reopens as the edge reads it.
MAX_CONCURRENT_STREAMS = 100
INITIAL_STREAM_WINDOW_BYTES = 64 * 1024
INITIAL_CONNECTION_WINDOW_BYTES = 1024 * 1024
# How much a connection's socket buffers hold before Envoy stops reading from it (Envoy's edge guidance; its
# default is 1 MiB each way): what the buffer filter keeps of a body is the stream's, up to MAX_REQUEST_BYTES.
PER_CONNECTION_BUFFER_BYTES = 32 * 1024
# That limit is also each stream's own, and the transcoder holds a unary answer whole to turn it into JSON: it
# is given its own bound, so a page of products (up to 100 of 5000-character descriptions, about 0.5 MiB) is not
# Envoy's 500 "Response not transcoded". The bound is the largest answer a gRPC client of the API reads at
# gRPC's defaults (its 4 MiB limit of a received message), which is also the most the gateway takes from a
# service (its channels keep that default): an HTTP/JSON client gets whatever a gRPC one would. It is a bound
# on a stream's buffer, not on the connection's: a slow reader still holds PER_CONNECTION_BUFFER_BYTES of its
# socket's, and the heap's bound (below) covers many such answers at once.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# The memory limit of the edge's container on Kubernetes by default (the gateway's chart:
# helm/shopmesh-lib/templates/_config.tpl, httpApi.resources), and the bound on Envoy's heap `make run` gives
# it, as the chart derives it from whatever limit the container has (max_heap_bytes).
EDGE_MEMORY_LIMIT_MIB = 128
# The share of its container's memory limit Envoy's heap is bounded to: the rest is for what is not heap, above
# all the binary's own pages (about 54 MiB resident, which the container's memory counts), and for the heap's
# growth between two readings of it. The overload manager acts on the bound (mesh.envoy.overload_manager).
HEAP_SHARE_DIVISOR = 2


def max_heap_bytes(memory_limit_bytes: int) -> int:
    """The bound on the edge's Envoy's heap in a container of this memory limit (the chart's
    shopmesh-lib.httpApi-heap computes the same)."""
    return memory_limit_bytes // HEAP_SHARE_DIVISOR


MAX_HEAP_BYTES = max_heap_bytes(EDGE_MEMORY_LIMIT_MIB * 1024 * 1024)


def declared_too_large() -> list[dict[str, Any]]:
    """gRPC or gRPC-Web for a method of ShopService's that unknown_method_forwarded would take, whose
    content-length says it is over MAX_REQUEST_BYTES: refused on its headers (413, which gRPC and gRPC-Web
    clients get as RESOURCE_EXHAUSTED, grpc_too_large, as the buffer filter answers the other methods). Unbuffered,
    that route has no limit of the edge's own: Envoy 1.40 bounds a streamed body only by buffering it (a route's
    request_body_buffer_limit is how much it buffers, not a limit on what it forwards). A declared length is
    binding (Envoy's codecs refuse a body that differs from it), and a browser's gRPC-Web client declares one; a gRPC
    client streaming without one is held to the gateway's own limit of a message (GRPC_MAX_RECEIVE_MESSAGE_BYTES,
    1 MiB) instead. gRPC-Web's text mode declares the length of its base64, which the buffer filter never sees
    (it comes after the gRPC-Web filter, which decodes it): held to MAX_REQUEST_BASE64_BYTES, so a call refused
    here is one the buffer filter would refuse on another method."""
    return [
        _refused_as_too_large([GRPC_WEB_TEXT, _content_length_over(MAX_REQUEST_BASE64_BYTES)]),
        _refused_as_too_large([GRPC, {**GRPC_WEB_TEXT, "invert_match": True}, _content_length_over(MAX_REQUEST_BYTES)]),
    ]


def _content_length_over(limit: int) -> dict[str, Any]:
    return {"name": "content-length", "range_match": {"start": limit + 1, "end": 2**63 - 1}}


def _refused_as_too_large(headers: list[dict[str, Any]]) -> dict[str, Any]:
    """A call of ShopService's with these headers, refused as too large (declared_too_large)."""
    return {
        "match": {"prefix": f"/{PUBLIC_SERVICE}/", "headers": headers},
        "direct_response": {"status": 413, "body": {"inline_string": "Payload Too Large"}},
        "typed_per_filter_config": {
            **TRANSCODER_OFF,
            "envoy.filters.http.buffer": {"@type": FILTER_CONFIG, "disabled": True},
        },
    }


def http_too_large() -> dict[str, Any]:
    """The 413 of an HTTP/JSON request over MAX_REQUEST_BYTES (the buffer filter's), with the message and the
    ErrorInfo a gRPC client gets for it (grpc_too_large), in place of Envoy's "Payload Too Large"."""
    return answered_over_http(
        413,
        "local_reply_413_http",
        grpc_code.RESOURCE_EXHAUSTED,
        REQUEST_TOO_LARGE_MESSAGE,
        error_info(REQUEST_TOO_LARGE, {"max_request_bytes": str(MAX_REQUEST_BYTES)}),
    )


def grpc_too_large() -> dict[str, Any]:
    """The 413 of a gRPC or gRPC-Web call over MAX_REQUEST_BYTES (the buffer filter's, declared_too_large's) as
    RESOURCE_EXHAUSTED, naming the limit, with the ErrorInfo the services give in grpc-status-details-bin."""
    info = error_details_pb2.ErrorInfo(
        reason=REQUEST_TOO_LARGE, domain=ERROR_DOMAIN, metadata={"max_request_bytes": str(MAX_REQUEST_BYTES)}
    )
    return answered_over_grpc(
        413, "local_reply_413_grpc", grpc_code.RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE_MESSAGE, [info]
    )
