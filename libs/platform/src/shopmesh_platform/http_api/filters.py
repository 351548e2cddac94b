"""The edge's HTTP filters that are no topic of their own: the health check, compression, the gRPC-JSON
transcoder, gRPC-Web and the router."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .contract import PUBLIC_SERVICE
from .matching import method_in
from .request_limits import MAX_RESPONSE_BYTES
from .routes import method_not_allowed

_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
GRPC_WEB = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
_HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
_GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# JSON answers at least this long are gzipped for a client that accepts it (a page of products: ~2 KiB, a
# quarter of it compressed); shorter ones are not worth the CPU.
COMPRESS_FROM_BYTES = 1024
# What is worth it: the API's JSON, the storefront's page, style and script.
COMPRESSED_TYPES = ("application/json", "text/html", "text/css", "text/javascript")

# Answered by Envoy itself (200, or 503 once it drains), on the public listener (clients, load balancers, `make
# run`'s wait) and on the metrics listener, outside the cap on connections: the kubelet's probes on Kubernetes.
HEALTH_PATH = "/healthz"
HEALTH_METHODS = ["GET", "HEAD"]


def compressor() -> dict[str, Any]:
    """gzip for JSON answers and the storefront's files when the client's Accept-Encoding allows it; requests
    are left as they are."""
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": {
            "@type": _COMPRESSOR,
            "response_direction_config": {
                "common_config": {
                    "min_content_length": COMPRESS_FROM_BYTES,
                    # (Envoy 1.40 deprecates the plain `content_type` list for these matchers.)
                    "content_type_matcher": [{"prefix": prefix} for prefix in COMPRESSED_TYPES],
                }
            },
            "request_direction_config": {
                "common_config": {"enabled": {"default_value": False, "runtime_key": "request_compressor_enabled"}}
            },
            "compressor_library": {"name": "gzip", "typed_config": {"@type": _GZIP}},
        },
    }


def health_check() -> dict[str, Any]:
    """GET and HEAD of HEALTH_PATH answered by Envoy itself; any other method goes on to health_routes' 405."""
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": _HEALTH_CHECK,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}, method_in(HEALTH_METHODS)],
        },
    }


def health_routes() -> list[dict[str, Any]]:
    """405 for a method health_check does not answer (TRACE, DELETE, PUT...: each was its 200), but OPTIONS, as
    the edge's other own paths."""
    return [method_not_allowed(HEALTH_PATH, re.escape(HEALTH_PATH), HEALTH_METHODS)]


def transcoder(descriptor: Path) -> dict[str, Any]:
    return {
        "@type": _TRANSCODER,
        "proto_descriptor": str(descriptor),
        "services": [PUBLIC_SERVICE],
        # Field names as proto3's JSON mapping has them (lowerCamelCase), zero values printed: a client
        # reads `"inStock": false`, not a missing key.
        "print_options": {"always_print_primitive_fields": True, "always_print_enums_as_ints": False},
        # The status and its details as the JSON body, with the HTTP status of the gRPC code.
        "convert_grpc_status": True,
        "request_validation_options": {
            # A path the API does not have is a 404 from the edge, not a call with a guessed method.
            "reject_unknown_method": True,
            # `?pageSise=5` is a client's mistake, answered 400, not silently ignored.
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
        # `?query=french+press` is "french press", as HTML forms and URLSearchParams encode a space.
        "query_param_unescape_plus": True,
        # Its own bound on the answer it holds whole (MAX_RESPONSE_BYTES): without one it is the stream's buffer
        # limit, which is the connection's (PER_CONNECTION_BUFFER_BYTES, 32 KiB).
        "max_response_body_size": MAX_RESPONSE_BYTES,
    }
