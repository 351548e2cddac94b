"""Header hygiene: request headers dropped before anything reads them, gRPC's own headers dropped from an
HTTP/JSON request, which the gateway's gRPC server would otherwise answer with INTERNAL, and gRPC's retry pushback
from its answer; the services' internal markers dropped from every answer, the CORS headers added to every
answer the CORS filter gave none, and no-store and nosniff to every answer without its own."""

from __future__ import annotations

from typing import Any

from shopmesh_chassis.grpc_errors import RETRY_PUSHBACK

from .cors import readable_cross_origin

_HEADER_MUTATION_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
_HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"

# Request header names a gRPC server refuses as metadata keys (it answers INTERNAL, "Illegal header key"): HTTP
# allows `!#$%&'*+^`|~` in a name, gRPC only 0-9 a-z _ - . (Envoy has lowercased them). Pseudo-headers
# (":path") are not matched. RE2 has no lookahead: a name whose first character is not ':' and which holds a
# character outside gRPC's set.
INVALID_METADATA_NAME = r"[^:][0-9a-z_.\-]*[^0-9a-z_.\-].*|[^0-9a-z_.:\-].*"
# Binary metadata: a value that is not base64 is refused by the gRPC server (INTERNAL). The API reads none.
BINARY_METADATA_NAME = r".+-bin"
# gRPC's own headers, meaningless in an HTTP/JSON request (the transcoder frames the call itself), and
# refused by the gRPC server when malformed (INTERNAL): `grpc-timeout: soon`, `grpc-encoding: zip`.
GRPC_HEADER_NAME = r"grpc-.*"
# gRPC's headers of an answer, never of a request: from a client, the gRPC server parses them all the same and
# answers a malformed one (`grpc-status: zzz`) INTERNAL, a server error for the client's mistake. The API reads
# none. (grpc-status-details-bin goes as binary metadata.)
ANSWER_ONLY_GRPC_HEADERS = ("grpc-status", "grpc-message", RETRY_PUSHBACK)
# grpc-core's own metadata between a call and its transport (which compression to ask for), never sent on the
# wire by a gRPC client: from a client, the gateway's gRPC server answered any value INTERNAL "Error parsing
# 'grpc-internal-encoding-request' metadata", and kept the failed parse for later calls carrying it.
INTERNAL_GRPC_HEADERS = ("grpc-internal-encoding-request",)
# The services' markers among themselves (the chassis' `shopmesh-final-answer`, `shopmesh-shed`): the gateway
# relays a dependency's error with them, and they are no part of the public API, whose clients read the status.
INTERNAL_HEADER_NAME = r"shopmesh-.*"
# A proxy's name and its own headers (its timing of what is behind it, x-envoy-upstream-service-time) on an answer
# from the gateway's side: its sidecar adds none, but the edge does not count on every proxy between (docs/http-api.md
# promises no answer names the proxy or times the gateway). Envoy's health-checked cluster header is among them.
PROXY_HEADER_NAME = r"server|x-envoy-.*"
# Response headers every answer of the edge carries unless it has its own (header_hygiene).
ANSWER_DEFAULTS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
# The health check's answer names Envoy's node's cluster: nothing for a client.
_NO_HEALTH_CHECKED_CLUSTER = {"remove": "x-envoy-upstream-healthchecked-cluster"}


def no_grpc_headers() -> dict[str, Any]:
    """An HTTP/JSON route's header mutation: gRPC's own headers dropped from the request, and
    grpc-retry-pushback-ms from the answer."""
    return {
        "@type": _HEADER_MUTATION_PER_ROUTE,
        "mutations": {
            "request_mutations": [_remove_matching(GRPC_HEADER_NAME)],
            # gRPC's "do not retry" (or "retry after") for its channel's own retries: an HTTP client has no
            # such retries, and reads when to come back from the Status' RetryInfo (or Retry-After) instead. A
            # gRPC or gRPC-Web client of the edge keeps it: its channel honours it.
            "response_mutations": [{"remove": RETRY_PUSHBACK}],
        },
    }


def header_hygiene() -> dict[str, Any]:
    """Request headers dropped before anything reads them: a client's own x-envoy-original-path (the
    transcoder marks a request it rewrote with the path it came with; the local replies' mappers and the
    access log read it), cookies (the API reads none, but a browser sends every cookie of the host, of any
    app on it, with the storefront's calls: kilobytes of metadata for the gateway), and what would reach the
    gateway as metadata its gRPC server refuses with INTERNAL instead of a client's error (a name gRPC does
    not allow, binary metadata that may not be base64, gRPC's headers of an answer, grpc-core's internal
    ones). And the services' internal markers dropped from every answer, its headers and its trailers,
    whatever the client's protocol, and a proxy's name and headers (PROXY_HEADER_NAME) from its headers;
    ANSWER_DEFAULTS added to every answer that has none of its own."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _HEADER_MUTATION,
            "mutations": {
                "request_mutations": [
                    {"remove": "x-envoy-original-path"},
                    {"remove": "cookie"},
                    *({"remove": name} for name in (*ANSWER_ONLY_GRPC_HEADERS, *INTERNAL_GRPC_HEADERS)),
                    *(_remove_matching(regex) for regex in (INVALID_METADATA_NAME, BINARY_METADATA_NAME)),
                ],
                # The answer's CORS headers depend on the request's origin: a shared cache keeps one copy per
                # origin. Added here, before the CORS filter, to its answers to preflights too (which a virtual
                # host's response_headers_to_add never reaches), and to every other answer on the way out, the
                # edge's own included: so are the CORS headers of an answer the CORS filter gave none.
                "response_mutations": [
                    {
                        "append": {
                            "header": {"key": "vary", "value": "Origin"},
                            "append_action": "APPEND_IF_EXISTS_OR_ADD",
                        }
                    },
                    *({"append": header} for header in readable_cross_origin()),
                    # Unless an answer has its own (the storefront's files: no-cache), none is kept by any
                    # cache: the API's answers are a shopper's (orders, e-mails), and Chromium kept them in its
                    # disk cache after sign-out. Nor is one read as anything but its content type (a JSON
                    # error echoing a path with markup in it, opened as a page).
                    *(
                        {"append": {"header": {"key": key, "value": value}, "append_action": "ADD_IF_ABSENT"}}
                        for key, value in ANSWER_DEFAULTS.items()
                    ),
                    _remove_matching(INTERNAL_HEADER_NAME),
                    _remove_matching(PROXY_HEADER_NAME),
                ],
                # A gRPC answer with a body has its metadata in trailers (the chassis' errors are trailers-only,
                # in headers, but a relay's marker may come either way).
                "response_trailers_mutations": [_remove_matching(INTERNAL_HEADER_NAME)],
            },
        },
    }


def health_check_hygiene() -> dict[str, Any]:
    """The metrics listener's header_hygiene, which has no API to guard: its health check's answer without the
    header naming Envoy's cluster, as the public listener's."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {"@type": _HEADER_MUTATION, "mutations": {"response_mutations": [_NO_HEALTH_CHECKED_CLUSTER]}},
    }


def _remove_matching(regex: str) -> dict[str, Any]:
    return {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": regex}}}}
