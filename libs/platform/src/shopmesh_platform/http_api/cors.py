"""CORS: any origin is admitted (the API authenticates with a bearer token, which a browser never attaches by
itself), with the headers a page may send and read."""

from __future__ import annotations

from typing import Any

from .challenges import WWW_AUTHENTICATE
from .local_replies import RETRY_AFTER

CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"

_REQUEST_HEADERS = ("authorization", "content-type", "idempotency-key", "traceparent", "tracestate")
_GRPC_WEB_HEADERS = ("x-grpc-web", "x-user-agent", "grpc-timeout")
# A page's fetch reads a header outside CORS's safelist only when it is exposed: WWW-Authenticate, a 401's
# challenge (why its token was refused); Retry-After, when to come back after the edge's own 429 or 503, for a
# page that reads no JSON.
_EXPOSED_HEADERS = (
    "idempotency-key",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    WWW_AUTHENTICATE,
    RETRY_AFTER,
)


def readable_cross_origin() -> list[dict[str, Any]]:
    """The CORS headers of a forwarded answer, for every answer the CORS filter gave none (header_hygiene adds
    them on the way out): a route's direct response (which the filter skips), and a local reply made before the
    filter read the request (a request the codec refuses, headers too large, a local rate limit ahead of it).
    A gRPC-Web status comes in headers (a trailers-only answer), which a page reads only when they are exposed.
    Added only where absent: where the CORS filter ran, its own (the origin echoed) stay, the one copy."""
    return [
        {"header": {"key": name, "value": value}, "append_action": "ADD_IF_ABSENT"}
        for name, value in (
            ("access-control-allow-origin", "*"),
            ("access-control-expose-headers", ", ".join(_EXPOSED_HEADERS)),
        )
    ]


def cors_policy() -> dict[str, Any]:
    return {
        "@type": _CORS_POLICY,
        "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": ", ".join((*_REQUEST_HEADERS, *_GRPC_WEB_HEADERS)),
        "expose_headers": ", ".join(_EXPOSED_HEADERS),
        "max_age": "600",
    }
