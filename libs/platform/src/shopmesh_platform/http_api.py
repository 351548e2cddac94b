"""The public API over HTTP/JSON and gRPC-Web: an Envoy in front of the gateway (docs/http-api.md).

Browsers and plain HTTP clients cannot speak gRPC (HTTP/2 trailers). This Envoy takes, on one port:

- **HTTP/JSON** (HTTP/1.1 or HTTP/2): `GET /v1/products/{product_id}`, `POST /v1/orders`, ... as the
  `google.api.http` annotations of shopmesh/gateway/v1/shop.proto map them. Envoy's gRPC-JSON transcoder
  turns each into a call of ShopService, reading the API's descriptor set (generated beside the stubs,
  `shopmesh/gateway/v1/shop.binpb`), and the answer back into JSON. An error becomes its HTTP status
  (INVALID_ARGUMENT → 400, UNAUTHENTICATED → 401, NOT_FOUND → 404, ...) with the google.rpc.Status as the
  JSON body, details included (field violations, ErrorInfo, RetryInfo). A query parameter or path the
  API does not have is refused by Envoy itself (400, 404), never guessed at, and so is a query parameter
  naming a path variable (400), which the transcoder would take over the path, and any query on a route
  whose body is the whole request (`body: "*"`, every POST: 400), which the transcoder would bind anyway;
  a path it has, asked with a method it does not take there, is a 405 with `Allow`. A GET's path takes HEAD:
  the GET, answered without its body.
- **gRPC-Web** (`application/grpc-web+proto` and the other three types Envoy's filter takes, GRPC_CONTENT_TYPE),
  which browser gRPC clients send; and **gRPC** itself.
- **`GET /openapi.json`**: the API's OpenAPI document (shopmesh_platform.openapi, generated with the
  contracts), answered by Envoy itself, for Swagger UI and client generators.
- **`GET /`**: the storefront (docs/storefront.md), a page and its script that shop through this same
  HTTP/JSON API from a browser, answered by Envoy itself from the files in `shopmesh_platform/storefront`.

Request headers go to the gateway as gRPC metadata (`authorization`, `idempotency-key`, `traceparent`);
the gateway's response metadata comes back as response headers (`idempotency-key`). Only ShopService is
reachable through it: health, reflection and every internal service stay off the public port. CORS admits
any origin: the API authenticates with a bearer token, which a browser never attaches by itself, so a
foreign page gains nothing a script of its own could not do.

The same configuration serves `make run` (the gateway at its local address) and Kubernetes (a container
in the gateway's pod, the gateway on loopback: helm/gateway), from `bootstrap()`.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2
from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2, status_pb2

from .mesh.envoy import (
    TRACES_CLUSTER,
    access_log,
    cluster,
    listener,
    overload_manager,
    socket_address,
    tracing,
)
from .openapi import PATH_VARIABLE

PUBLIC_SERVICE = "shopmesh.gateway.v1.ShopService"
# The descriptor set generated with the contracts (libs/contracts/generate.py).
DESCRIPTOR_PACKAGE = "shopmesh.gateway.v1"
DESCRIPTOR_FILE = "shop.binpb"
OPENAPI_FILE = "shop.openapi.json"
# Where the edge serves the OpenAPI document.
OPENAPI_PATH = "/openapi.json"
# The storefront's files (in this package's `storefront` folder) → where the edge serves them and as what.
# Each is sent with STOREFRONT_HEADERS.
STOREFRONT_FILES = {
    "index.html": ("/", "text/html; charset=utf-8"),
    "app.js": ("/assets/app.js", "text/javascript; charset=utf-8"),
    "app.css": ("/assets/app.css", "text/css; charset=utf-8"),
}
# The page runs its own script and style only and talks to this origin only: an injected script or a
# form posting elsewhere is refused by the browser. The page itself builds every element from data as text,
# never as HTML; this is the second line.
STOREFRONT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STOREFRONT_HEADERS = {
    "content-security-policy": STOREFRONT_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # No validator to revalidate with (Envoy answers from memory): small files, fetched again, so a new
    # release is seen at once.
    "cache-control": "no-cache",
}
# Envoy keeps a direct response's body in memory and refuses a larger file than this at startup (its
# default, 4 KiB, is far below the OpenAPI document's and the storefront script's sizes).
MAX_DOCUMENT_BYTES = 1024 * 1024
_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_HEADER_MUTATION_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
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

_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
_GRPC_WEB = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
_CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
_HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
_COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
_GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
_HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_HEADER_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
# JSON answers at least this long are gzipped for a client that accepts it (a page of products: ~2 KiB, a
# quarter of it compressed); shorter ones are not worth the CPU.
COMPRESS_FROM_BYTES = 1024
# What is worth it: the API's JSON, the storefront's page, style and script.
COMPRESSED_TYPES = ("application/json", "text/html", "text/css", "text/javascript")
_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# Checkout runs the whole saga before it answers: an HTTP client sends no gRPC deadline, so the edge bounds
# the call above the gateway's own longest path, checkout's calls one after the other (a key-set refetch and
# the account's e-mail from users, 5 s each, then orders, 15 s: 25 s). A gRPC or gRPC-Web client's
# `grpc-timeout` still wins when it is shorter.
ROUTE_TIMEOUT = "30s"
# A route with max_stream_duration has Envoy's router ignore its `timeout` (the mesh's GRPC_TIMEOUTS relies on
# that to leave the bound to the caller's deadline); a call without grpc-timeout would then wait for ever. Both
# of these are the stream's bound, from its first byte: ROUTE_TIMEOUT without a grpc-timeout, the client's
# grpc-timeout when it is shorter, never longer than ROUTE_TIMEOUT.
_ROUTE_BOUND = {"max_stream_duration": {"max_stream_duration": ROUTE_TIMEOUT, "grpc_timeout_header_max": ROUTE_TIMEOUT}}
# Envoy's own answers to HTTP/JSON clients, by HTTP status → the gRPC code their Status body carries: a path
# the API does not have is an unknown method (UNIMPLEMENTED), though answered 404 as HTTP has it.
LOCAL_REPLY_CODES = {
    400: grpc_code.INVALID_ARGUMENT,
    # A protocol upgrade (WebSocket) asked of a route that takes none.
    403: grpc_code.PERMISSION_DENIED,
    404: grpc_code.UNIMPLEMENTED,
    405: grpc_code.UNIMPLEMENTED,
    413: grpc_code.RESOURCE_EXHAUSTED,
    # HTTP/1.0: the edge does not implement it (Envoy's 426 asks for HTTP/1.1).
    426: grpc_code.UNIMPLEMENTED,
    431: grpc_code.RESOURCE_EXHAUSTED,
    500: grpc_code.INTERNAL,
    502: grpc_code.UNAVAILABLE,
    503: grpc_code.UNAVAILABLE,
    504: grpc_code.DEADLINE_EXCEEDED,
}
# gRPC's own reading of an HTTP status without a grpc-status (grpc/doc/http-grpc-status-mapping.md), for Envoy's
# answers LOCAL_REPLY_CODES does not list (a request that did not arrive in time, 408; a transfer encoding HTTP/1.1
# lacks, 501; whatever a setting or a release of Envoy's adds): the code a gRPC client of the edge would read from
# the same answer. Any other status from 400 on is UNKNOWN there, and here (UNLISTED_LOCAL_REPLY_CODE).
GRPC_HTTP_STATUS_CODES = {
    400: grpc_code.INTERNAL,
    401: grpc_code.UNAUTHENTICATED,
    403: grpc_code.PERMISSION_DENIED,
    404: grpc_code.UNIMPLEMENTED,
    429: grpc_code.UNAVAILABLE,
    431: grpc_code.INTERNAL,
    502: grpc_code.UNAVAILABLE,
    503: grpc_code.UNAVAILABLE,
    504: grpc_code.UNAVAILABLE,
}
UNLISTED_LOCAL_REPLY_CODE = grpc_code.UNKNOWN
# The code of the Status of each of Envoy's answers to an HTTP/JSON client with an HTTP status of 400 or more:
# LOCAL_REPLY_CODES where it says, else gRPC's mapping, else UNLISTED_LOCAL_REPLY_CODE. (Below 400, Envoy's own
# answers are the documents and the storefront's files, and CORS's preflights: none is an error.)
_LOCAL_REPLY_CODES_BY_STATUS = {**GRPC_HTTP_STATUS_CODES, **LOCAL_REPLY_CODES}
_FIRST_ERROR_STATUS = 400
# Envoy's reasons for local replies whose own text is empty or says nothing a client can act on (its response code
# details) → their HTTP status and the message their Status carries instead.
EXPLAINED_LOCAL_REPLIES = {
    "low_version": (426, "HTTP/1.0 is not served here: send the request over HTTP/1.1 or HTTP/2"),
    "upgrade_failed": (
        403,
        "no protocol upgrade (WebSocket) is served here: send the request without an Upgrade header",
    ),
    "path_normalization_failed": (
        400,
        "the request's path is not one the edge can normalize (a '#' or a malformed escape)",
    ),
    "absolute_path_rejected": (404, "the request's target must be a path, such as /v1/products"),
}
# The field violation's reason, in the 400 for a query parameter naming a path variable, and the name of the
# routes answering it (their local reply is the whole Status already, details included).
PATH_VARIABLE_IN_QUERY = "PATH_VARIABLE_IN_QUERY"
_PATH_VARIABLE_IN_QUERY_ROUTE = "path-variable-in-query"
# The same for a query on a route whose body is the whole request (`body: "*"`; the field violation names no
# field: the query is none of the body's).
QUERY_WITH_BODY = "QUERY_WITH_BODY"
_QUERY_WITH_BODY_ROUTE = "query-with-body"
# The field violation's reason, in the 400 for a `QUERY` without a content type (RFC 10008, The HTTP QUERY
# Method: its content says what to query, so it must say what the content is). Envoy refuses it in its
# connection manager, before any route or filter, with an empty body: its local reply is given this Status.
QUERY_WITHOUT_CONTENT_TYPE = "QUERY_WITHOUT_CONTENT_TYPE"
_QUERY_WITHOUT_CONTENT_TYPE_DETAILS = "query_missing_content_type"
# The domain of the ErrorInfo in the edge's own answers that carry one: the API's, the gateway's.
_ERROR_DOMAIN = "shopmesh.gateway"
# Where the metrics listener (`metrics_port`) serves Envoy's Prometheus metrics.
METRICS_PATH = "/stats/prometheus"
# Answered by Envoy itself (200, or 503 once it drains): the kubelet's probe of the container on Kubernetes.
HEALTH_PATH = "/healthz"
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

# The content types Envoy takes for gRPC and gRPC-Web: its gRPC check takes `application/grpc` and anything
# after `application/grpc+`, its gRPC-Web filter its four types exactly (no `+json`, no parameters). Anything
# else, `application/grpc-json` and `application/grpc-web+json` included, the transcoder reads as an HTTP/JSON
# request, and refuses as one: its answer must be mapped to a JSON Status, not left as gRPC's.
GRPC_CONTENT_TYPE = r"application/grpc(\+.*)?|application/grpc-web(-text)?(\+proto)?"
# A request whose content type is not gRPC's nor gRPC-Web's (a GET or a preflight has none at all).
_NOT_GRPC = {
    "name": "content-type",
    "string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE}},
    "invert_match": True,
    "treat_missing_header_as_empty": True,
}
# A request whose content type is gRPC's or gRPC-Web's.
_GRPC = {**_NOT_GRPC, "invert_match": False}
# gRPC-Web's text mode (the grpc-web JS client's default): its body is the base64 of the binary one, which the
# gRPC-Web filter decodes.
_GRPC_WEB_TEXT = {
    "name": "content-type",
    "string_match": {"safe_regex": {"regex": r"application/grpc-web-text(\+proto)?"}},
}
# On a route answered by Envoy itself: the transcoder would refuse a path the API does not have first.
_TRANSCODER_OFF = {"envoy.filters.http.grpc_json_transcoder": {"@type": _FILTER_CONFIG, "disabled": True}}

# HEAD of a GET of the API (RFC 9110: a resource that takes GET takes HEAD, answered with GET's status and
# headers, no body). google.api.http has no HEAD, so the transcoder knows none; and no filter of Envoy's but Lua
# may change `:method`. The HEAD route's own script makes the request the GET and marks it (dynamic metadata:
# namespace, key; not GATEWAY_STATUS's namespace, which the access log reads whole); the filter's default script
# drops the body of a marked answer (the transcoder has rerouted the call by then, to a route without the first
# script), keeping its content-length: what the GET would send. Envoy's codecs do not drop it themselves: they
# answer the method the filters leave, a GET. The request's Accept-Encoding goes too: an answer the compressor
# gzipped would come framed as chunks, whose last one is body a HEAD must not have.
_HEAD_MARK = ("shopmesh.http_api.head", "head")
_HEAD_AS_GET = "head-as-get"
_HEAD_AS_GET_SCRIPT = f"""
function envoy_on_request(request)
  request:headers():replace(":method", "GET")
  request:headers():remove("accept-encoding")
  request:streamInfo():dynamicMetadata():set("{_HEAD_MARK[0]}", "{_HEAD_MARK[1]}", true)
end
"""
_HEAD_BODY_DROPPED_SCRIPT = f"""
function envoy_on_response(response)
  local marked = response:streamInfo():dynamicMetadata():get("{_HEAD_MARK[0]}")
  if marked == nil or not marked["{_HEAD_MARK[1]}"] then
    return
  end
  local length = response:headers():get("content-length")
  response:body():setBytes("")
  if length ~= nil then
    response:headers():replace("content-length", length)
  end
end
"""

_REQUEST_HEADERS = ("authorization", "content-type", "idempotency-key", "traceparent", "tracestate")
_GRPC_WEB_HEADERS = ("x-grpc-web", "x-user-agent", "grpc-timeout")
_EXPOSED_HEADERS = ("idempotency-key", "grpc-status", "grpc-message", "grpc-status-details-bin")


# The path and query the transcoder took (it keeps them in x-envoy-original-path): only a GET's can have a query
# by then (a query on any other route of the API is refused before it, QUERY_WITH_BODY), and a GET's fields are
# page sizes, page tokens, categories and search terms, never a secret; worth keeping to see what a client
# asked. Any other request's path without its query: a refused one's (`POST /v1/login?password=...`, `PUT
# /v1/orders?card.number=...`: whatever a client put there, no call was made of it), the storefront's.
LOGGED_PATH = (
    "%CEL('x-envoy-original-path' in request.headers ? request.headers['x-envoy-original-path'] : request.url_path)%"
)
# The URL of the edge's span (`http.url`), without its query: Envoy's own has the query, a refused one's too.
_SPAN_URL = "%REQ(:SCHEME)%://%REQ(:AUTHORITY)%%PATH(NQ:ORIG_OR_PATH)%"

# Where the edge keeps the gateway's grpc-status as it came, before the transcoder turns it into an HTTP status and
# drops it (dynamic metadata: namespace, key).
_GATEWAY_STATUS = ("shopmesh.http_api", "grpc_status")
# gRPC's codes by number → their names as Envoy's %GRPC_STATUS% spells them (the sidecars' `grpc_status`).
_GRPC_STATUS_NAMES = {
    str(number): {"OK": "OK", "CANCELLED": "Canceled"}.get(name, name.title().replace("_", ""))
    for name, number in sorted(grpc_code.Code.items(), key=lambda item: item[1])
}
# The access log's `grpc_status`: the gateway's own status. Envoy's %GRPC_STATUS% reads the answer as the client
# gets it, and the transcoder has made an error an HTTP status and a JSON body by then: it derived the code back
# from the HTTP status (every 400 INTERNAL, a NOT_FOUND UNIMPLEMENTED). So: the grpc-status the gateway's headers
# had (an error is trailers-only: GATEWAY_STATUS, kept before the transcoder), else its trailers' (an answer with
# a body: OK), else the answer's headers' (Envoy's own reply to a gRPC client), else the code of the Status Envoy
# answered an HTTP client itself (by the HTTP status, as the local replies' mappers have it: a refusal, the gateway
# unreachable, a request that did not arrive in time); none (null: the lookup of a missing key fails) for the
# storefront's and the document's files and for a gRPC-Web answer whose status came in trailers (its filter has
# made them part of the body).
LOGGED_GRPC_STATUS = (
    "%CEL({names}['{namespace}' in metadata.filter_metadata ? metadata.filter_metadata['{namespace}']['{key}'] : "
    "'grpc-status' in response.trailers ? response.trailers['grpc-status'] : "
    "'grpc-status' in response.headers ? response.headers['grpc-status'] : "
    "response.code >= {first_error} && !(response.code in {local}) ? '{unlisted}' : {local}[response.code]])%"
).format(
    names="{" + ",".join(f"'{number}':'{name}'" for number, name in _GRPC_STATUS_NAMES.items()) + "}",
    namespace=_GATEWAY_STATUS[0],
    key=_GATEWAY_STATUS[1],
    first_error=_FIRST_ERROR_STATUS,
    local="{" + ",".join(f"{status}:'{code}'" for status, code in sorted(_LOCAL_REPLY_CODES_BY_STATUS.items())) + "}",
    unlisted=UNLISTED_LOCAL_REPLY_CODE,
)

# (Not the HTTP method: the transcoder has made every request a POST by the time the line is written.)
_HTTP_LOG_FIELDS = {
    "grpc_status": LOGGED_GRPC_STATUS,
    "http_path": LOGGED_PATH,
    # The gRPC method (as the sidecars log it), or the path of a request the transcoder did not take, without
    # its query.
    "method": "%PATH(NQ:PATH)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
}


@dataclass(frozen=True)
class HttpApi:
    """Everything the edge's configuration depends on, besides the API itself: its paths come from the
    OpenAPI document in the contracts package (`api_paths()`), wherever Envoy finds its files."""

    # Where it listens for HTTP clients.
    host: str
    port: int
    # Envoy's admin interface (readiness: /ready, /stats): never on a public address.
    admin_host: str
    admin_port: int
    # host:port of the gateway's gRPC server (plaintext HTTP/2).
    gateway: str
    # The API's descriptor set, as Envoy will find it on its file system.
    descriptor: Path
    # host:port of an OTLP/gRPC receiver for the edge's spans; None: none.
    traces: str | None = None
    # Spans, sent to a TRACES_CLUSTER this configuration leaves out: whoever starts Envoy adds it (on
    # Kubernetes the chart, with --config-yaml, where global.otel says). With `traces` None only.
    traces_cluster_at_start: bool = False
    # A listener (on `host`) serving only Envoy's Prometheus metrics from the admin interface, for a scraper
    # that cannot reach loopback (Kubernetes); None: none (`make run` reads the admin interface directly).
    metrics_port: int | None = None
    # The OpenAPI document, as Envoy will find it on its file system, served at OPENAPI_PATH; None: not.
    openapi: Path | None = None
    # The folder holding STOREFRONT_FILES, as Envoy will find it on its file system; None: no storefront.
    storefront: Path | None = None
    # Envoy's node id and its spans' service name.
    name: str = "http-api"


def descriptor_set() -> Path:
    """The generated descriptor set of the public API, where the contracts package keeps it."""
    return _generated(DESCRIPTOR_FILE, "descriptor set")


def openapi_document() -> Path:
    """The generated OpenAPI document of the public API, where the contracts package keeps it."""
    return _generated(OPENAPI_FILE, "OpenAPI document")


def storefront_folder() -> Path:
    """The storefront's files, where this package keeps them."""
    return Path(str(importlib.resources.files("shopmesh_platform") / "storefront"))


def _generated(name: str, what: str) -> Path:
    path = Path(str(importlib.resources.files(DESCRIPTOR_PACKAGE) / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the API's {what} is missing; run `make proto`")
    return path


def bootstrap(api: HttpApi) -> dict[str, Any]:
    """The edge's whole static configuration (Envoy's v3 bootstrap), as JSON-ready data."""
    if api.traces is not None and api.traces_cluster_at_start:
        raise ValueError("traces names the spans' receiver here; traces_cluster_at_start leaves it to Envoy's start")
    gateway_host, gateway_port = api.gateway.rsplit(":", 1)
    clusters = [cluster("gateway", gateway_host, int(gateway_port))]
    span_config = None
    if api.traces is not None:
        sink_host, sink_port = api.traces.rsplit(":", 1)
        clusters.append(cluster(TRACES_CLUSTER, sink_host, int(sink_port)))
    if api.traces is not None or api.traces_cluster_at_start:
        # The sampling ratio decides alone: a client's x-client-trace-id would force a trace past it.
        span_config = {
            **tracing(api.name),
            "client_sampling": {"value": 0},
            "custom_tags": [{"tag": "http.url", "value": _SPAN_URL}],
        }
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "http_api",
        # HTTP/1.1 from curl and browsers, HTTP/2 (gRPC, gRPC-Web over h2c) alike.
        "codec_type": "AUTO",
        # The peer, not x-forwarded-for, decides whether a request is internal (a client's own header never
        # makes it so, nor keeps the x-envoy-* headers Envoy strips from external requests).
        "use_remote_address": True,
        # Envoy's own append writes the host's non-loopback address in place of a loopback peer: behind a
        # sidecar, every client would be the pod to the gateway. The route configuration appends the peer.
        "skip_xff_append": True,
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KIB,
        "route_config": {
            "name": "public-api",
            "max_direct_response_body_size_bytes": MAX_DOCUMENT_BYTES,
            # The peer's address after whatever the client's x-forwarded-for held, as any proxy appends it: the
            # gateway walks it from the right past its TRUSTED_PROXIES (under a mesh, the sidecar on loopback,
            # then the ingress's entry) to the client.
            "request_headers_to_add": [
                {
                    "header": {"key": "x-forwarded-for", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                    "append_action": "APPEND_IF_EXISTS_OR_ADD",
                }
            ],
            "virtual_hosts": [
                {
                    "name": "shop",
                    "domains": ["*"],
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy()},
                    "routes": [
                        *_openapi_routes(api.openapi),
                        *_storefront_routes(api.storefront),
                        *_method_routes(),
                        # The transcoder has rewritten an HTTP/JSON request's path to the gRPC method's by the
                        # time the route is chosen: ShopService's methods are all there is. Each by its path,
                        # through the buffer filter; any other method's gRPC goes on to the gateway unbuffered.
                        *(
                            {
                                "match": {"path": path},
                                "route": {"cluster": "gateway", **_ROUTE_BOUND},
                                "decorator": {"operation": "public API", "propagate": False},
                            }
                            for path in api_method_paths()
                        ),
                        *_declared_too_large(),
                        _unknown_method_forwarded(),
                        _other_grpc_refused(),
                        {
                            # The CORS filter looks the request up before the transcoder rewrites its path: a
                            # browser's preflight (OPTIONS /v1/orders) needs a route here to find the virtual
                            # host's policy (not a direct response, which CORS skips). Nothing is forwarded
                            # by it: the transcoder refuses a path the API does not have. gRPC itself is
                            # left out, so health and reflection stay unroutable (UNIMPLEMENTED).
                            **_http_json_route({"prefix": "/", "headers": [_NOT_GRPC]}),
                        },
                    ],
                }
            ],
        },
        # What Envoy answers itself to an HTTP client (a path or parameter the API does not have, a body too
        # large, the gateway unreachable) is a google.rpc.Status in JSON too, as the gateway's answers are.
        "local_reply_config": {
            "mappers": [
                _status_as_it_is(_PATH_VARIABLE_IN_QUERY_ROUTE),
                _status_as_it_is(_QUERY_WITH_BODY_ROUTE),
                _query_without_content_type(),
                _http_too_large(),
                *(
                    _explained(details, status, message)
                    for details, (status, message) in EXPLAINED_LOCAL_REPLIES.items()
                ),
                *(_local_reply(status, code) for status, code in LOCAL_REPLY_CODES.items()),
                *(
                    _local_reply(status, code)
                    for status, code in GRPC_HTTP_STATUS_CODES.items()
                    if status not in LOCAL_REPLY_CODES
                ),
                # After them: a transcoded HTTP/JSON request's content type is gRPC's by then, and its 413 is theirs.
                _grpc_too_large(),
                # Last: whatever error Envoy answers an HTTP/JSON client with that none of the above names.
                _unlisted_local_reply(),
            ]
        },
        # Every request: the HTTP one as the client sent it, and the gRPC method it became.
        "access_log": [access_log("http-api", only_failures=False, extra=_HTTP_LOG_FIELDS)],
        "http_filters": [
            _health_check(),
            _header_hygiene(),
            # Before the compressor, so after it on the way out: the body it drops is never gzipped.
            _head_as_get(),
            # Early in the chain, so late on the way out: it sees the JSON the transcoder made.
            _compressor(),
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": _CORS}},
            {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": _GRPC_WEB}},
            # After gRPC-Web, whose request it then sees as gRPC: its 413 reaches a gRPC-Web client as a
            # grpc-status (before it, a text/plain 413 the client's library could not read).
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _BUFFER, "max_request_bytes": MAX_REQUEST_BYTES},
            },
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": _transcoder(api.descriptor)},
            # After the transcoder, so before it on the way out: the gateway's answer as it came.
            _gateway_status(),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
    }
    if span_config is not None:
        manager["tracing"] = span_config
    listeners = [listener("http-api", api.host, api.port, "INBOUND", manager)]
    if api.metrics_port is not None:
        listeners.append(listener("metrics", api.host, api.metrics_port, "INBOUND", _metrics_manager()))
        # The admin interface speaks HTTP/1.1.
        clusters.append(cluster("admin", api.admin_host, api.admin_port, http2=False))
    return {
        "node": {"id": api.name, "cluster": api.name},
        "admin": {"address": socket_address(api.admin_host, api.admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": overload_manager(),
    }


def _openapi_routes(document: Path | None) -> list[dict[str, Any]]:
    """`/openapi.json`, answered by Envoy from the file."""
    if document is None:
        return []
    # Envoy's CORS filter passes direct responses by: a Swagger UI on another origin may read it.
    headers = {"content-type": "application/json", "access-control-allow-origin": "*"}
    return _file_routes(OPENAPI_PATH, document, headers)


def _storefront_routes(folder: Path | None) -> list[dict[str, Any]]:
    """Each of STOREFRONT_FILES at its path, answered by Envoy from the file."""
    if folder is None:
        return []
    return [
        route
        for name, (path, content_type) in STOREFRONT_FILES.items()
        for route in _file_routes(path, folder / name, {"content-type": content_type, **STOREFRONT_HEADERS})
    ]


def _file_routes(path: str, file: Path, headers: dict[str, str]) -> list[dict[str, Any]]:
    """GET and HEAD of `path` answered by Envoy with the file (read when it starts) and these headers, and 405
    for any other method there but OPTIONS (a preflight, for the CORS filter)."""
    served = {
        "match": {"path": path, "headers": [_method_in(["GET", "HEAD"])]},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": [_set_header(key, value) for key, value in headers.items()],
        "typed_per_filter_config": _TRANSCODER_OFF,
    }
    return [served, _method_not_allowed(path, re.escape(path), ["GET", "HEAD"])]


def _http_json_route(match: dict[str, Any]) -> dict[str, Any]:
    """A route an HTTP/JSON request takes before the transcoder rewrites it into a call of the API (then it
    is routed again, as gRPC). Nothing is forwarded by it: the transcoder refuses a path the API does not
    have. gRPC's own headers are dropped from it: the transcoder frames the call itself."""
    return {
        "match": match,
        "route": {"cluster": "gateway", "timeout": ROUTE_TIMEOUT},
        "typed_per_filter_config": {"envoy.filters.http.header_mutation": _no_grpc_headers()},
    }


def _no_grpc_headers() -> dict[str, Any]:
    return {
        "@type": _HEADER_MUTATION_PER_ROUTE,
        "mutations": {"request_mutations": [_remove_matching(GRPC_HEADER_NAME)]},
    }


def api_paths() -> dict[str, list[str]]:
    """The API's paths (as OpenAPI templates, `/v1/orders/{order_id}`) → their HTTP methods, from the OpenAPI
    document generated with the contracts."""
    document = json.loads(openapi_document().read_text())
    return {path: sorted(verb.upper() for verb in verbs) for path, verbs in document["paths"].items()}


def body_methods() -> dict[str, list[str]]:
    """The API's paths → their HTTP methods whose body is the whole request (`body: "*"`: the OpenAPI document
    gives them a request body and no query parameters; its generator states no other body)."""
    document = json.loads(openapi_document().read_text())
    return {
        path: sorted(verb.upper() for verb, operation in verbs.items() if "requestBody" in operation)
        for path, verbs in document["paths"].items()
    }


def _path_regex(template: str) -> str:
    """A path of this template (Envoy matches it against the whole path, without the query), spelled with
    the slashes the transcoder ignores: it routes `/v1/products/prod_1/` (and `prod_1//`) as
    `/v1/products/prod_1`, and `/v1/orders/ord_1/:cancel` as `/v1/orders/ord_1:cancel`, so a route of the edge
    that missed them would let that path past its 405 and its refusal of a path variable in the query. After
    a custom verb it takes no slash (`:cancel/` is a 404 there), so neither does the route."""
    if _has_custom_verb(template):
        base, verb = template.rsplit(":", 1)
        return _template_regex(base) + "/*" + re.escape(":" + verb)
    return _template_regex(template) + "/*"


def _template_regex(template: str) -> str:
    parts = PATH_VARIABLE.split(template)
    # split() keeps the variables' names at the odd places.
    return "".join("[^/]+" if index % 2 else re.escape(part) for index, part in enumerate(parts))


def _method_routes() -> list[dict[str, Any]]:
    """For each path of the API: 405 with `Allow` for a method it does not take there (HTTP's answer; the
    transcoder would say 404), 400 for a query parameter naming one of its variables, 400 for any query with a
    method whose body is the whole request, then, for a path with a custom verb, the methods it takes. Envoy
    tries routes in order: `/v1/orders/{order_id}:cancel` comes first, and its POST is routed there, before
    `/v1/orders/{order_id}` (whose variable would take in `ord_1:cancel`) could call it a 405. A preflight
    (OPTIONS) goes on to the CORS filter."""
    routes = []
    for template, methods in sorted(api_paths().items(), key=lambda item: not _has_custom_verb(item[0])):
        regex = _path_regex(template)
        routes.append(_method_not_allowed(template, regex, allowed_methods(methods)))
        routes.extend(_path_variables_in_query(template, regex))
        routes.extend(_query_with_body(template, regex, method) for method in body_methods().get(template, []))
        if "GET" in methods:
            routes.append(_head_route(regex))
        if _has_custom_verb(template):
            match = {"safe_regex": {"regex": regex}, "headers": [_method_in(methods), _NOT_GRPC]}
            routes.append(_http_json_route(match))
    return routes


def allowed_methods(methods: list[str]) -> list[str]:
    """The methods the edge takes on a path whose API methods are these: HEAD with every GET."""
    return [*methods, "HEAD"] if "GET" in methods and "HEAD" not in methods else list(methods)


def _head_route(regex: str) -> dict[str, Any]:
    """HEAD of a path the API takes GET on: called as the GET, answered without its body (_HEAD_AS_GET_SCRIPT)."""
    route = _http_json_route({"safe_regex": {"regex": regex}, "headers": [_method_in(["HEAD"]), _NOT_GRPC]})
    route["typed_per_filter_config"]["envoy.filters.http.lua"] = {"@type": _LUA_PER_ROUTE, "name": _HEAD_AS_GET}
    return route


def _head_as_get() -> dict[str, Any]:
    """The Lua filter of HEAD routes: _HEAD_AS_GET by name on theirs, the default (dropping a marked answer's
    body) on every route, which only reads the mark."""
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": _LUA,
            "default_source_code": {"inline_string": _HEAD_BODY_DROPPED_SCRIPT},
            "source_codes": {_HEAD_AS_GET: {"inline_string": _HEAD_AS_GET_SCRIPT}},
        },
    }


def api_methods() -> list[str]:
    """ShopService's methods, by name, from the descriptor set the transcoder reads."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set().read_bytes())
    package, service = PUBLIC_SERVICE.rsplit(".", 1)
    return sorted(
        method.name
        for file in files.file
        if file.package == package
        for declared in file.service
        if declared.name == service
        for method in declared.method
    )


def api_method_paths() -> list[str]:
    """The gRPC paths of ShopService's methods (`/shopmesh.gateway.v1.ShopService/GetOrder`). Exact paths, one
    route each: a regex of them all is past the size Envoy allows an RE2 program."""
    return [f"/{PUBLIC_SERVICE}/{method}" for method in api_methods()]


def _unknown_method_forwarded() -> dict[str, Any]:
    """gRPC or gRPC-Web for a method of ShopService's that this edge's descriptor set does not have
    (`/shopmesh.gateway.v1.ShopService/NoSuchMethod`): forwarded to the gateway with the buffer filter off, so
    the gateway's gRPC server answers it on its headers. Through the buffer, a streaming call whose client
    keeps its side open waited for its deadline (or ROUTE_TIMEOUT) instead of the gateway's UNIMPLEMENTED. A
    forwarded answer, not Envoy's own: the CORS filter skips a direct response, and a browser shown no
    Access-Control-Allow-Origin reads a network error, not the status. And a gateway newer than this edge's
    descriptor set (a canary under the same chart) is reached over gRPC for its new methods. An HTTP/JSON
    request on such a path takes the routes after this one, to the transcoder, which refuses it (404)."""
    return {
        "match": {"prefix": f"/{PUBLIC_SERVICE}/", "headers": [_GRPC]},
        "route": {"cluster": "gateway", **_ROUTE_BOUND},
        "decorator": {"operation": "public API", "propagate": False},
        "typed_per_filter_config": {"envoy.filters.http.buffer": {"@type": _BUFFER_PER_ROUTE, "disabled": True}},
    }


def _declared_too_large() -> list[dict[str, Any]]:
    """gRPC or gRPC-Web for a method of ShopService's that _unknown_method_forwarded would take, whose
    content-length says it is over MAX_REQUEST_BYTES: refused on its headers (413, which gRPC and gRPC-Web
    clients get as RESOURCE_EXHAUSTED, _grpc_too_large, as the buffer filter answers the other methods). Unbuffered,
    that route has no limit of the edge's own: Envoy 1.40 bounds a streamed body only by buffering it (a route's
    request_body_buffer_limit is how much it buffers, not a limit on what it forwards). A declared length is
    binding (Envoy's codecs refuse a body that differs from it), and a browser's gRPC-Web client declares one; a gRPC
    client streaming without one is held to the gateway's own limit of a message (GRPC_MAX_RECEIVE_MESSAGE_BYTES,
    1 MiB) instead. gRPC-Web's text mode declares the length of its base64, which the buffer filter never sees
    (it comes after the gRPC-Web filter, which decodes it): held to MAX_REQUEST_BASE64_BYTES, so a call refused
    here is one the buffer filter would refuse on another method."""
    return [
        _refused_as_too_large([_GRPC_WEB_TEXT, _content_length_over(MAX_REQUEST_BASE64_BYTES)]),
        _refused_as_too_large(
            [_GRPC, {**_GRPC_WEB_TEXT, "invert_match": True}, _content_length_over(MAX_REQUEST_BYTES)]
        ),
    ]


def _content_length_over(limit: int) -> dict[str, Any]:
    return {"name": "content-length", "range_match": {"start": limit + 1, "end": 2**63 - 1}}


def _refused_as_too_large(headers: list[dict[str, Any]]) -> dict[str, Any]:
    """A call of ShopService's with these headers, refused as too large (_declared_too_large)."""
    return {
        "match": {"prefix": f"/{PUBLIC_SERVICE}/", "headers": headers},
        "direct_response": {"status": 413, "body": {"inline_string": "Payload Too Large"}},
        "response_headers_to_add": _readable_cross_origin(),
        "typed_per_filter_config": {
            **_TRANSCODER_OFF,
            "envoy.filters.http.buffer": {"@type": _FILTER_CONFIG, "disabled": True},
        },
    }


def _other_grpc_refused() -> dict[str, Any]:
    """gRPC for any service but ShopService (health, reflection, the internal services): refused at once as
    UNIMPLEMENTED (Envoy's gRPC answer to a 404), with a message saying why. Without this route no route
    matched, but only once the buffer filter had the whole request: a streaming call whose client keeps its
    side open (grpcurl's reflection `list`) waited for its deadline instead. The buffer is off here: the call is
    refused on its headers. Readable cross-origin: the CORS filter skips a direct response, and a browser shown
    no Access-Control-Allow-Origin hands its gRPC-Web client a network error instead of this status; the
    refusal is the same text for everyone, so any origin may read it."""
    return {
        "match": {"prefix": "/", "headers": [_GRPC]},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": f"only {PUBLIC_SERVICE} is served on this port"},
        },
        "response_headers_to_add": _readable_cross_origin(),
        "typed_per_filter_config": {
            **_TRANSCODER_OFF,
            "envoy.filters.http.buffer": {"@type": _FILTER_CONFIG, "disabled": True},
        },
    }


def _validation_failed(message: str, violation: dict[str, str]) -> str:
    """The JSON google.rpc.Status of an edge refusal, with the details the services give a client's mistake."""
    body = {
        "code": grpc_code.INVALID_ARGUMENT,
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "VALIDATION_FAILED",
                "domain": _ERROR_DOMAIN,
                "metadata": {},
            },
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]},
        ],
    }
    return json.dumps(body, separators=(",", ":"))


def _path_variables_in_query(template: str, regex: str) -> list[dict[str, Any]]:
    """400 for a query parameter naming one of the path's variables (`/v1/orders/ord_1?orderId=ord_2`), by its
    proto or its JSON name, spelled with percent-escapes or not: the transcoder binds the query after the path,
    so the query's value would win silently, and the call would be about another resource than the path (what
    an access log, a WAF or a per-path policy in front saw). A preflight goes on to the CORS filter."""
    routes = []
    for variable in PATH_VARIABLE.findall(template):
        for name in sorted({variable, _json_name(variable)}):
            body = _validation_failed(
                f"{name}: given by the path ({template}), not as a query parameter",
                {
                    "field": variable,
                    "description": "given by the path, not as a query parameter",
                    "reason": PATH_VARIABLE_IN_QUERY,
                },
            )
            routes.append(
                {
                    "name": _PATH_VARIABLE_IN_QUERY_ROUTE,
                    "match": {
                        "safe_regex": {"regex": regex},
                        "headers": [
                            {
                                "name": ":path",
                                "string_match": {"safe_regex": {"regex": _query_naming(name)}},
                            },
                            {**_method_in(["OPTIONS"]), "invert_match": True},
                        ],
                    },
                    "direct_response": {"status": 400, "body": {"inline_string": body}},
                    # A cross-origin GET comes without a preflight: its page may read the answer.
                    "response_headers_to_add": [_set_header("access-control-allow-origin", "*")],
                    "typed_per_filter_config": _TRANSCODER_OFF,
                }
            )
    return routes


def _query_with_body(template: str, regex: str, method: str) -> dict[str, Any]:
    """400 for a query on a route whose body is the whole request (`body: "*"`: `POST /v1/orders?card.number=`).
    google.api.http gives such a route no query parameters, and the OpenAPI document declares none, but the
    transcoder binds them into the request all the same: a card's number and CVV or a password in a URL would be
    taken, and be wherever URLs are written (this edge's access log and span, a proxy's log, a browser's
    history), and sent on to the gateway as x-envoy-original-path. Any query: a name the message has or not, an
    empty one (`?`). A preflight goes on to the CORS filter (the method is not OPTIONS)."""
    body = _validation_failed(
        f"{method} {template} takes the request as its JSON body, not as query parameters",
        {"description": "the request is the JSON body, with no query parameters", "reason": QUERY_WITH_BODY},
    )
    return {
        "name": _QUERY_WITH_BODY_ROUTE,
        "match": {
            "safe_regex": {"regex": regex},
            "headers": [
                _method_in([method]),
                {"name": ":path", "string_match": {"safe_regex": {"regex": r"[^?]*\?.*"}}},
            ],
        },
        "direct_response": {"status": 400, "body": {"inline_string": body}},
        # A cross-origin POST of a form comes without a preflight: its page may read the answer.
        "response_headers_to_add": [_set_header("access-control-allow-origin", "*")],
        "typed_per_filter_config": _TRANSCODER_OFF,
    }


def _query_naming(name: str) -> str:
    """A path and query (`:path`) whose query has a parameter of this name as the transcoder reads it: it
    decodes a name's percent-escapes before it binds it, so `product%5Fid` is `product_id` (Envoy's own
    query_parameters matcher compares the name as written)."""
    spelled = "".join(f"(?:{re.escape(char)}|{_percent_escaped(char)})" for char in name)
    return rf"[^?]*\?(?:.*&)?{spelled}(?:[=&].*)?"


def _percent_escaped(char: str) -> str:
    """`char` as `%XX`, its hex digits in either case."""
    return "%" + "".join(
        f"[{digit.upper()}{digit.lower()}]" if digit.isalpha() else digit for digit in f"{ord(char):02X}"
    )


def _json_name(field: str) -> str:
    """A field's name in proto3 JSON (protoc's rule: a letter after `_` is capitalized, the `_` dropped)."""
    return re.sub(r"_([a-z])", lambda found: found.group(1).upper(), field)


def _has_custom_verb(template: str) -> bool:
    """`/v1/orders/{order_id}:cancel`, `/v1/products:search` (Google's custom methods)."""
    return ":" in template.rsplit("/", 1)[-1]


def _method_not_allowed(template: str, regex: str, methods: list[str]) -> dict[str, Any]:
    return {
        "match": {
            "safe_regex": {"regex": regex},
            "headers": [{**_method_in([*methods, "OPTIONS"]), "invert_match": True}],
        },
        "direct_response": {"status": 405, "body": {"inline_string": f"{template} takes {' and '.join(methods)} only"}},
        "response_headers_to_add": [
            _set_header("allow", ", ".join(methods)),
            # A cross-origin HEAD or GET comes without a preflight: its page may read the 405 too.
            _set_header("access-control-allow-origin", "*"),
        ],
        "typed_per_filter_config": _TRANSCODER_OFF,
    }


def _readable_cross_origin() -> list[dict[str, Any]]:
    """The CORS headers of a forwarded answer, for a direct response to gRPC-Web (which the CORS filter skips):
    its status comes in headers (a trailers-only answer), which a page reads only when they are exposed."""
    return [
        _set_header("access-control-allow-origin", "*"),
        _set_header("access-control-expose-headers", ", ".join(_EXPOSED_HEADERS)),
    ]


def _method_in(methods: list[str]) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"safe_regex": {"regex": "|".join(methods)}}}


def _set_header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _metrics_manager() -> dict[str, Any]:
    """`GET /stats/prometheus` relayed to the admin interface, and nothing else of it (as Istio's proxies
    serve 15090): the admin interface can also stop Envoy or dump its configuration."""
    return {
        "@type": _HCM,
        "stat_prefix": "metrics",
        "codec_type": "AUTO",
        "route_config": {
            "name": "metrics",
            "virtual_hosts": [
                {
                    "name": "metrics",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "path": METRICS_PATH,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": "admin"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }


def write_bootstrap(api: HttpApi, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap(api), indent=2) + "\n")
    return path


def _header_hygiene() -> dict[str, Any]:
    """Request headers dropped before anything reads them: a client's own x-envoy-original-path (the
    transcoder marks a request it rewrote with the path it came with; the local replies' mappers and the
    access log read it), cookies (the API reads none, but a browser sends every cookie of the host, of any
    app on it, with the storefront's calls: kilobytes of metadata for the gateway), and what would reach the
    gateway as metadata its gRPC server refuses with INTERNAL instead of a client's error (a name gRPC does
    not allow, binary metadata that may not be base64)."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _HEADER_MUTATION,
            "mutations": {
                "request_mutations": [
                    {"remove": "x-envoy-original-path"},
                    {"remove": "cookie"},
                    *(_remove_matching(regex) for regex in (INVALID_METADATA_NAME, BINARY_METADATA_NAME)),
                ],
                # The answer's CORS headers depend on the request's origin: a shared cache keeps one copy per
                # origin. Added here, before the CORS filter, to its answers to preflights too (which a virtual
                # host's response_headers_to_add never reaches), and to every other answer on the way out.
                "response_mutations": [
                    {
                        "append": {
                            "header": {"key": "vary", "value": "Origin"},
                            "append_action": "APPEND_IF_EXISTS_OR_ADD",
                        }
                    }
                ],
            },
        },
    }


def _remove_matching(regex: str) -> dict[str, Any]:
    return {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": regex}}}}


def _compressor() -> dict[str, Any]:
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


def _status_is(status: int, runtime_key: str, op: str = "EQ") -> dict[str, Any]:
    """A local-reply filter matching Envoy's HTTP status `status` (op "GE": that status or above; runtime_key:
    Envoy requires one per filter)."""
    return {
        "status_code_filter": {"comparison": {"op": op, "value": {"default_value": status, "runtime_key": runtime_key}}}
    }


def _local_reply(status: int, code: int) -> dict[str, Any]:
    """Envoy's local reply with this HTTP status, to an HTTP client (gRPC and gRPC-Web clients get a
    grpc-status from Envoy as it is), as {"code": <gRPC code>, "message": <Envoy's text>, "details": []}: the
    shape the transcoder gives the gateway's errors, whose `details` is there when empty too."""
    return {
        "filter": {"and_filter": {"filters": [_status_is(status, f"local_reply_{status}"), _http_json()]}},
        "body_format_override": _status_json(code),
    }


def _unlisted_local_reply() -> dict[str, Any]:
    """Any other error Envoy answers an HTTP/JSON client with (its HTTP status from 400 on, in neither
    LOCAL_REPLY_CODES nor GRPC_HTTP_STATUS_CODES) as a Status of UNLISTED_LOCAL_REPLY_CODE with Envoy's text:
    a client reads every error of the edge's in one shape, whatever Envoy adds or a release of it sends."""
    status_filter = _status_is(_FIRST_ERROR_STATUS, "local_reply_unlisted", op="GE")
    return {
        "filter": {"and_filter": {"filters": [status_filter, _http_json()]}},
        "body_format_override": _status_json(UNLISTED_LOCAL_REPLY_CODE),
    }


def _status_json(code: int) -> dict[str, Any]:
    """A local reply's body as a google.rpc.Status of this code, its message the reply's text."""
    return {
        "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []},
        "content_type": "application/json",
    }


def _http_json() -> dict[str, Any]:
    """A local reply to an HTTP/JSON request, whether or not the transcoder has made it gRPC yet."""
    return {"or_filter": {"filters": [_not_grpc(), _transcoded()]}}


def _explained(details: str, status: int, message: str) -> dict[str, Any]:
    """Envoy's local reply for this reason (its response code details; its HTTP status is `status`) to an HTTP
    client, with this message in its Status (EXPLAINED_LOCAL_REPLIES), its code the status's (LOCAL_REPLY_CODES)."""
    expression = f"response.code_details == '{details}'"
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "extension_filter": {
                            "name": "envoy.access_loggers.extension_filters.cel",
                            "typed_config": {"@type": _CEL_FILTER, "expression": expression},
                        }
                    },
                    _http_json(),
                ]
            }
        },
        "body": {"inline_string": message},
        "body_format_override": _status_json(LOCAL_REPLY_CODES[status]),
    }


def _http_too_large() -> dict[str, Any]:
    """The 413 of an HTTP/JSON request over MAX_REQUEST_BYTES (the buffer filter's), with the message and the
    ErrorInfo a gRPC client gets for it (_grpc_too_large), in place of Envoy's "Payload Too Large"."""
    body = json.dumps(
        {
            "code": grpc_code.RESOURCE_EXHAUSTED,
            "message": REQUEST_TOO_LARGE_MESSAGE,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": REQUEST_TOO_LARGE,
                    "domain": _ERROR_DOMAIN,
                    "metadata": {"max_request_bytes": str(MAX_REQUEST_BYTES)},
                }
            ],
        },
        separators=(",", ":"),
    )
    return {
        "filter": {"and_filter": {"filters": [_status_is(413, "local_reply_413_http"), _http_json()]}},
        "body": {"inline_string": body},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }


def _status_as_it_is(route: str) -> dict[str, Any]:
    """The direct responses of the routes of this name, whose body is a google.rpc.Status in JSON already,
    sent as JSON."""
    return {
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": _CEL_FILTER, "expression": f"xds.route_name == '{route}'"},
            }
        },
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }


def _query_without_content_type() -> dict[str, Any]:
    """Envoy's 400 for a `QUERY` without a content type, whose own body is empty (`{"code":3,"message":""}`
    once mapped): a Status saying what to send instead. Matched by Envoy's reason for the reply, not by the
    request: no other 400 is taken for it."""
    body = _validation_failed(
        "a QUERY request must say what its content is: send it with a Content-Type header "
        "(RFC 10008, The HTTP QUERY Method)",
        # No field: the header is none of a request message's.
        {"description": "a QUERY's content needs a Content-Type", "reason": QUERY_WITHOUT_CONTENT_TYPE},
    )
    expression = f"response.code_details == '{_QUERY_WITHOUT_CONTENT_TYPE_DETAILS}'"
    return {
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": _CEL_FILTER, "expression": expression},
            }
        },
        "body": {"inline_string": body},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }


def _grpc_too_large() -> dict[str, Any]:
    """The 413 of a gRPC or gRPC-Web call over MAX_REQUEST_BYTES (the buffer filter's, _declared_too_large's) as
    RESOURCE_EXHAUSTED, naming the limit, with the ErrorInfo the services give in grpc-status-details-bin: the
    whole trailers-only answer, in headers, with no body. For gRPC alone, a grpc-status added here would do (Envoy
    keeps one its local reply has); but Envoy decides a reply is gRPC's by the request as it came, and gRPC-Web's
    is not: its 413 goes out as HTTP, and the gRPC-Web filter makes the HTTP status its grpc-status (UNKNOWN),
    over this one. Answered as gRPC (200, gRPC's content type), the filter passes the status on."""
    status = status_pb2.Status(
        code=grpc_code.RESOURCE_EXHAUSTED,
        message=REQUEST_TOO_LARGE_MESSAGE,
        details=[
            _packed(
                error_details_pb2.ErrorInfo(
                    reason=REQUEST_TOO_LARGE,
                    domain=_ERROR_DOMAIN,
                    metadata={"max_request_bytes": str(MAX_REQUEST_BYTES)},
                )
            )
        ],
    )
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    _status_is(413, "local_reply_413_grpc"),
                    {"header_filter": {"header": _GRPC}},
                ]
            }
        },
        "status_code": 200,
        "headers_to_add": [
            _set_header("content-type", "application/grpc"),
            _set_header("grpc-status", str(grpc_code.RESOURCE_EXHAUSTED)),
            # As it is: printable ASCII without '%' is its own percent-encoding.
            _set_header("grpc-message", REQUEST_TOO_LARGE_MESSAGE),
            _set_header("grpc-status-details-bin", base64.b64encode(status.SerializeToString()).decode()),
        ],
        # No body: with one, Envoy would send it as the answer's data, which no gRPC client reads as a message.
        "body": {"inline_string": ""},
    }


def _packed(message: error_details_pb2.ErrorInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _not_grpc() -> dict[str, Any]:
    """A request that is not gRPC (nor gRPC-Web), as it came in."""
    return {"header_filter": {"header": _NOT_GRPC}}


def _transcoded() -> dict[str, Any]:
    """An HTTP/JSON request the transcoder has already turned into gRPC (its content type says gRPC by
    then): the transcoder keeps the path it came with."""
    return {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}}


def _gateway_status() -> dict[str, Any]:
    """The grpc-status of the gateway's answer's headers (an error's: gRPC sends it trailers-only), kept as
    dynamic metadata (GATEWAY_STATUS) for the access log before the transcoder drops it."""
    namespace, key = _GATEWAY_STATUS
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": _HEADER_TO_METADATA,
            "response_rules": [
                {
                    "header": "grpc-status",
                    "on_header_present": {"metadata_namespace": namespace, "key": key, "type": "STRING"},
                    "remove": False,
                }
            ],
        },
    }


def _health_check() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": _HEALTH_CHECK,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
        },
    }


def _transcoder(descriptor: Path) -> dict[str, Any]:
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
    }


def _cors_policy() -> dict[str, Any]:
    return {
        "@type": _CORS_POLICY,
        "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": ", ".join((*_REQUEST_HEADERS, *_GRPC_WEB_HEADERS)),
        "expose_headers": ", ".join(_EXPOSED_HEADERS),
        "max_age": "600",
    }
