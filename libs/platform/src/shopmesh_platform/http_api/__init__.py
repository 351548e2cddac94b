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
the gateway's response metadata comes back as response headers (`idempotency-key`), but for the
services' internal markers (`shopmesh-*`), and gRPC's retry pushback to an HTTP/JSON client. Only ShopService is
reachable through it: health, reflection and every internal service stay off the public port. CORS admits
any origin: the API authenticates with a bearer token, which a browser never attaches by itself, so a
foreign page gains nothing a script of its own could not do.

The same configuration serves `make run` (the gateway at its local address) and Kubernetes (a container
in the gateway's pod, the gateway on loopback: helm/gateway), from `bootstrap()`.

Its modules, by what they hold:

- `configuration`: HttpApi and bootstrap(), which assembles the rest, and the metrics listener;
- `contract`: ShopService, its descriptor set and OpenAPI document, the API's paths and methods;
- `routes`: each path's 405, HEAD and refused queries, the gRPC methods, other services refused;
- `served_files`: the OpenAPI document and the storefront, answered by Envoy from files;
- `local_replies`: Envoy's own answers as google.rpc.Status JSON, the gRPC code of each HTTP status;
- `request_limits`: the body and header size limits, and how a request over them is answered;
- `grpc_messages`: a gRPC call's body refused unless it is one whole message, of a flag a request may have;
- `grpc_encodings`: a grpc-encoding refused when malformed, or not one the gateway reads;
- `deadlines`: a client's grpc-timeout refused when not of gRPC's form, the edge's bound as DEADLINE_EXCEEDED;
- `get_body`: a GET or HEAD with a body refused (Lua); `challenges`: WWW-Authenticate on a 401 (Lua);
- `head`: HEAD as GET without the body (Lua); `cors`: the CORS policy; `headers`: header hygiene;
- `filters`: health check, compression, the transcoder; `log_fields`: the access log's fields and the span's URL;
- `matching`: the request matchers and header actions the others share.
"""

from __future__ import annotations

from ..mesh.envoy import METRICS_PATH
from .challenges import (
    BEARER_CHALLENGE,
    INVALID_TOKEN_CHALLENGE,
    INVALID_TOKEN_REASONS,
    WWW_AUTHENTICATE,
)
from .configuration import HttpApi, bootstrap
from .contract import (
    DESCRIPTOR_FILE,
    DESCRIPTOR_PACKAGE,
    OPENAPI_FILE,
    PUBLIC_SERVICE,
    api_methods,
    api_paths,
    body_methods,
    descriptor_set,
    openapi_document,
)
from .deadlines import (
    DEADLINE_RAN_OUT_MESSAGE,
    GRPC_TIMEOUT_FORM,
    MALFORMED_GRPC_TIMEOUT,
    MALFORMED_GRPC_TIMEOUT_MESSAGE,
)
from .filters import COMPRESS_FROM_BYTES, COMPRESSED_TYPES, HEALTH_PATH
from .get_body import BODY_ON_GET, BODY_ON_GET_MESSAGE
from .grpc_attempts import (
    GRPC_PREVIOUS_RPC_ATTEMPTS,
    MALFORMED_PREVIOUS_RPC_ATTEMPTS,
    MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE,
)
from .grpc_encodings import (
    ACCEPTED_GRPC_ENCODINGS,
    MALFORMED_GRPC_ENCODING,
    MALFORMED_GRPC_ENCODING_MESSAGE,
    UNSUPPORTED_GRPC_ENCODING,
    UNSUPPORTED_GRPC_ENCODING_MESSAGE,
)
from .grpc_messages import (
    INCOMPLETE_GRPC_MESSAGE,
    INCOMPLETE_GRPC_MESSAGE_TEXT,
    INVALID_GRPC_FRAME_FLAG,
    INVALID_GRPC_FRAME_FLAG_MESSAGE,
    MALFORMED_GRPC_WEB_TEXT,
    MALFORMED_GRPC_WEB_TEXT_MESSAGE,
    MISSING_GRPC_ENCODING,
    MISSING_GRPC_ENCODING_MESSAGE,
)
from .headers import BINARY_METADATA_NAME, GRPC_HEADER_NAME, INVALID_METADATA_NAME
from .local_replies import (
    EXPLAINED_LOCAL_REPLIES,
    GATEWAY_UNAVAILABLE_MESSAGE,
    GRPC_HTTP_STATUS_CODES,
    LOCAL_REPLY_CODES,
    QUERY_WITHOUT_CONTENT_TYPE,
    UNLISTED_LOCAL_REPLY_CODE,
    UNREADABLE_BODY_MESSAGE,
    UNREADABLE_QUERY_MESSAGE,
)
from .log_fields import LOGGED_GRPC_STATUS, LOGGED_PATH
from .matching import GRPC_CONTENT_TYPE
from .request_limits import (
    EDGE_MEMORY_LIMIT_MIB,
    IDLE_TIMEOUT,
    INITIAL_CONNECTION_WINDOW_BYTES,
    INITIAL_STREAM_WINDOW_BYTES,
    MAX_CONCURRENT_STREAMS,
    MAX_HEAP_BYTES,
    MAX_REQUEST_BASE64_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_HEADERS_COUNT,
    MAX_REQUEST_HEADERS_KIB,
    MAX_RESPONSE_BYTES,
    PER_CONNECTION_BUFFER_BYTES,
    REQUEST_HEADERS_TIMEOUT,
    REQUEST_TOO_LARGE,
    REQUEST_TOO_LARGE_MESSAGE,
    max_heap_bytes,
)
from .routes import (
    MALFORMED_QUERY_PARAMETER,
    PATH_VARIABLE_IN_QUERY,
    QUERY_WITH_BODY,
    REPEATED_QUERY_PARAMETER,
    ROUTE_TIMEOUT,
    allowed_methods,
)
from .served_files import (
    MAX_DOCUMENT_BYTES,
    OPENAPI_PATH,
    STOREFRONT_CSP,
    STOREFRONT_FILES,
    STOREFRONT_HEADERS,
    storefront_folder,
)

__all__ = [
    "ACCEPTED_GRPC_ENCODINGS",
    "BEARER_CHALLENGE",
    "BINARY_METADATA_NAME",
    "BODY_ON_GET",
    "BODY_ON_GET_MESSAGE",
    "COMPRESSED_TYPES",
    "COMPRESS_FROM_BYTES",
    "DEADLINE_RAN_OUT_MESSAGE",
    "DESCRIPTOR_FILE",
    "DESCRIPTOR_PACKAGE",
    "EDGE_MEMORY_LIMIT_MIB",
    "EXPLAINED_LOCAL_REPLIES",
    "GATEWAY_UNAVAILABLE_MESSAGE",
    "GRPC_CONTENT_TYPE",
    "GRPC_HEADER_NAME",
    "GRPC_HTTP_STATUS_CODES",
    "GRPC_PREVIOUS_RPC_ATTEMPTS",
    "GRPC_TIMEOUT_FORM",
    "HEALTH_PATH",
    "IDLE_TIMEOUT",
    "INCOMPLETE_GRPC_MESSAGE",
    "INCOMPLETE_GRPC_MESSAGE_TEXT",
    "INITIAL_CONNECTION_WINDOW_BYTES",
    "INITIAL_STREAM_WINDOW_BYTES",
    "INVALID_GRPC_FRAME_FLAG",
    "INVALID_GRPC_FRAME_FLAG_MESSAGE",
    "INVALID_METADATA_NAME",
    "INVALID_TOKEN_CHALLENGE",
    "INVALID_TOKEN_REASONS",
    "LOCAL_REPLY_CODES",
    "LOGGED_GRPC_STATUS",
    "LOGGED_PATH",
    "MALFORMED_GRPC_ENCODING",
    "MALFORMED_GRPC_ENCODING_MESSAGE",
    "MALFORMED_GRPC_TIMEOUT",
    "MALFORMED_GRPC_TIMEOUT_MESSAGE",
    "MALFORMED_GRPC_WEB_TEXT",
    "MALFORMED_GRPC_WEB_TEXT_MESSAGE",
    "MALFORMED_PREVIOUS_RPC_ATTEMPTS",
    "MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE",
    "MALFORMED_QUERY_PARAMETER",
    "MAX_CONCURRENT_STREAMS",
    "MAX_DOCUMENT_BYTES",
    "MAX_HEAP_BYTES",
    "MAX_REQUEST_BASE64_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_HEADERS_COUNT",
    "MAX_REQUEST_HEADERS_KIB",
    "MAX_RESPONSE_BYTES",
    "METRICS_PATH",
    "MISSING_GRPC_ENCODING",
    "MISSING_GRPC_ENCODING_MESSAGE",
    "OPENAPI_FILE",
    "OPENAPI_PATH",
    "PATH_VARIABLE_IN_QUERY",
    "PER_CONNECTION_BUFFER_BYTES",
    "PUBLIC_SERVICE",
    "QUERY_WITHOUT_CONTENT_TYPE",
    "QUERY_WITH_BODY",
    "REPEATED_QUERY_PARAMETER",
    "REQUEST_HEADERS_TIMEOUT",
    "REQUEST_TOO_LARGE",
    "REQUEST_TOO_LARGE_MESSAGE",
    "ROUTE_TIMEOUT",
    "STOREFRONT_CSP",
    "STOREFRONT_FILES",
    "STOREFRONT_HEADERS",
    "UNLISTED_LOCAL_REPLY_CODE",
    "UNREADABLE_BODY_MESSAGE",
    "UNREADABLE_QUERY_MESSAGE",
    "UNSUPPORTED_GRPC_ENCODING",
    "UNSUPPORTED_GRPC_ENCODING_MESSAGE",
    "WWW_AUTHENTICATE",
    "HttpApi",
    "allowed_methods",
    "api_methods",
    "api_paths",
    "body_methods",
    "bootstrap",
    "descriptor_set",
    "max_heap_bytes",
    "openapi_document",
    "storefront_folder",
]
