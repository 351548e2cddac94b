"""What the edge's access log and spans say: the HTTP request as the client sent it, the gRPC method it became,
and the gateway's own grpc-status (kept before the transcoder drops it)."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code

from .local_replies import FIRST_ERROR_STATUS, LOCAL_REPLY_CODES_BY_STATUS, UNLISTED_LOCAL_REPLY_CODE

_HEADER_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"

# The path the transcoder took (it keeps it in x-envoy-original-path), else the request's (a refused one's, the
# storefront's, a gRPC call's method), never its query: a GET's fields are search terms, page tokens and
# whatever else a client puts in a URL (an e-mail address), and a refused request's query is anything
# (`POST /v1/login?password=...`). Envoy's own operator, not CEL: it cuts at the first `?` of either path.
LOGGED_PATH = "%PATH(NQ:ORIG_OR_PATH)%"
# The URL of the edge's span (`http.url`): Envoy's own has the query, as the log would.
SPAN_URL = f"%REQ(:SCHEME)%://%REQ(:AUTHORITY)%{LOGGED_PATH}"

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
    first_error=FIRST_ERROR_STATUS,
    local="{" + ",".join(f"{status}:'{code}'" for status, code in sorted(LOCAL_REPLY_CODES_BY_STATUS.items())) + "}",
    unlisted=UNLISTED_LOCAL_REPLY_CODE,
)

# (Not the HTTP method: the transcoder has made every request a POST by the time the line is written.)
HTTP_LOG_FIELDS = {
    "grpc_status": LOGGED_GRPC_STATUS,
    "http_path": LOGGED_PATH,
    # The gRPC method (as the sidecars log it), or the path of a request the transcoder did not take, without
    # its query.
    "method": "%PATH(NQ:PATH)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
}


def gateway_status() -> dict[str, Any]:
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
