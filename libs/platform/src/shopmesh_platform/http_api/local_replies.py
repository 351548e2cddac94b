"""Envoy's own answers (local replies): to HTTP/JSON clients as a google.rpc.Status in JSON, the shape the
gateway's errors have through the transcoder (the gRPC code of each HTTP status, and the replies whose text is
replaced by one saying what to send instead); to gRPC and gRPC-Web clients, where the edge says more than Envoy's
bare grpc-status, as a trailers-only answer with its Status in grpc-status-details-bin (answered_over_grpc)."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2, status_pb2

from .matching import GRPC, NOT_GRPC, set_header

_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"

# Envoy's own answers to HTTP/JSON clients, by HTTP status → the gRPC code their Status body carries: a path
# the API does not have is an unknown method (UNIMPLEMENTED), though answered 404 as HTTP has it.
LOCAL_REPLY_CODES = {
    400: grpc_code.INVALID_ARGUMENT,
    # A protocol upgrade (WebSocket) asked of a route that takes none.
    403: grpc_code.PERMISSION_DENIED,
    404: grpc_code.UNIMPLEMENTED,
    405: grpc_code.UNIMPLEMENTED,
    # The request did not arrive whole in time (REQUEST_TIMEOUT): the edge's own bound on it ran out, as a
    # deadline does; the client cancelled nothing (CANCELLED, HTTP's 499, is the caller giving up).
    408: grpc_code.DEADLINE_EXCEEDED,
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
# answers LOCAL_REPLY_CODES does not list (a local rate limit's 429; a transfer encoding HTTP/1.1 lacks, 501;
# whatever a setting or a release of Envoy's adds): the code a gRPC client of the edge would read from
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
LOCAL_REPLY_CODES_BY_STATUS = {**GRPC_HTTP_STATUS_CODES, **LOCAL_REPLY_CODES}
FIRST_ERROR_STATUS = 400
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

# The message of the transcoder's 400 for a body it cannot read: not JSON, or JSON not of the request message's
# shape. The parser's and the transcoder's own quote the body (the text around a syntax error; "card.number:
# invalid value 4111111111111111 for type TYPE_STRING"): a card number or a password, which a client shows.
UNREADABLE_BODY_MESSAGE = "the body is not valid JSON for this request"
# Envoy's reason for that 400 (its response code details, 1.40): the transcoder's failure with the code it
# answers. Its failures in the request's headers are "early_..." (UNREADABLE_QUERY_MESSAGE; a path or method the
# API lacks, NOT_FOUND, is kept).
_UNREADABLE_BODY_DETAILS = "grpc_json_transcode_failure{INVALID_ARGUMENT}"
# The message of the transcoder's 400 for a query parameter it cannot bind: a value not of its field's type
# (its own text quotes it: 'page_size: invalid value "..." for type TYPE_INT32', a secret pasted into a URL,
# which a client shows), or a name the request has no field for. Envoy 1.40 gives both one reason, so the name
# of the second goes too: the formatter cannot keep part of Envoy's text.
UNREADABLE_QUERY_MESSAGE = (
    "a query parameter is not valid for this request: a name it does not take, or a value not of its type"
)
_UNREADABLE_QUERY_DETAILS = "early_grpc_json_transcode_failure{INVALID_ARGUMENT}"

# The field violation's reason, in the 400 for a `QUERY` without a content type (RFC 10008, The HTTP QUERY
# Method: its content says what to query, so it must say what the content is). Envoy refuses it in its
# connection manager, before any route or filter, with an empty body: its local reply is given this Status.
QUERY_WITHOUT_CONTENT_TYPE = "QUERY_WITHOUT_CONTENT_TYPE"
_QUERY_WITHOUT_CONTENT_TYPE_DETAILS = "query_missing_content_type"
# The domain of the ErrorInfo in the edge's own answers that carry one: the API's, the gateway's.
ERROR_DOMAIN = "shopmesh.gateway"

# The ErrorInfo reason and the message of the 408. Envoy's own text ("request timeout", "stream timeout") names
# the timer that ran out; a client needs to know that no call was made, so sending the request again is safe,
# a POST too.
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
REQUEST_TIMEOUT_MESSAGE = (
    "the request did not arrive whole in time: the edge stopped waiting for the rest of it and called nothing; "
    "send it again, whole"
)
# Envoy's own answers asking the client to come back later that made no call of the gateway (a local rate limit's
# 429; a 503 for one of NO_CALL_503_DETAILS) carry how long to wait, as the gateway's own do: a RetryInfo in the
# Status and HTTP's Retry-After, which takes whole seconds. One second: the least Retry-After can say short of
# "at once", which every client refused at the same moment would take together; the edge's own bound on a
# connection to the gateway (mesh.envoy.CONNECT_TIMEOUT), so a retry comes after an attempt that failed has ended;
# and what a service asks its caller to wait for a dependency that did not say (DEPENDENCY_RETRY_AFTER_SECONDS).
# The gateway's own 429s and 503s are not Envoy's local replies: they pass with the RetryInfo the gateway chose.
RETRY_AFTER_SECONDS = 1
RETRY_AFTER = "retry-after"
# Envoy's reasons (its response code details, as the access log's `details` has them) for a 503 whose request
# never reached the gateway: none of it healthy, a connection to it that failed, timed out (a hung gateway whose
# accept queue is full) or that its circuit breakers kept from being made or used (an upstream reset's reason, its
# transport failure after a '|'), and a stream the gateway refused (HTTP/2's REFUSED_STREAM: not processed, RFC
# 9113 8.7). Another 503 (the gateway's connection closed, its stream reset, after the request was sent:
# "connection_termination", "remote_reset") may come after the call was carried out, so a "come back in a second"
# would invite a second order or payment, and is not said: the client decides, by the method and its idempotency
# key, as for a 502. (The overload manager's 503, "overload", cannot happen: mesh.envoy's has no actions.)
NO_CALL_503_DETAILS = ("no_healthy_upstream",)
NO_CALL_503_RESETS = (
    "connection_failure",
    "local_connection_failure",
    "remote_connection_failure",
    "connection_timeout",
    "overflow",
    "remote_refused_stream_reset",
)
_UPSTREAM_RESET = "upstream_reset_before_response_started{"
# Envoy's own answers asking the client to come back later, by HTTP status → the CEL condition telling those of
# that status that made no call of the gateway, None when none of them did (a local rate limit's 429 refuses
# before any call).
_NO_CALL_CONDITIONS: dict[int, str | None] = {
    429: None,
    503: " || ".join(
        [
            *(f"response.code_details == '{reason}'" for reason in NO_CALL_503_DETAILS),
            *(f"response.code_details.startsWith('{_UPSTREAM_RESET}{reset}')" for reset in NO_CALL_503_RESETS),
        ]
    ),
}
COME_BACK_LATER_STATUSES = frozenset(_NO_CALL_CONDITIONS)
# The message of such a 503 to a gRPC or gRPC-Web client, in grpc-message and in the Status of
# grpc-status-details-bin alike: the two must agree, and the Status is fixed in the configuration, so Envoy's own
# text (which names the reset's reason) cannot be its message. The access log keeps Envoy's reason.
GATEWAY_UNAVAILABLE_MESSAGE = (
    f"the gateway did not take the call, so none was made: try again in {RETRY_AFTER_SECONDS}s"
)


def error_info(reason: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """An ErrorInfo of the edge's own answers, in proto3 JSON (domain ERROR_DOMAIN)."""
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": ERROR_DOMAIN,
        "metadata": metadata or {},
    }


def validation_failed(message: str, violation: dict[str, str]) -> str:
    """The JSON google.rpc.Status of an edge refusal, with the details the services give a client's mistake."""
    body = {
        "code": grpc_code.INVALID_ARGUMENT,
        "message": message,
        "details": [
            error_info("VALIDATION_FAILED"),
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]},
        ],
    }
    return json.dumps(body, separators=(",", ":"))


def validation_failed_details(violation: error_details_pb2.BadRequest.FieldViolation) -> list[Message]:
    """The details of an edge refusal of a client's mistake in gRPC's grpc-status-details-bin, as the services
    give theirs: an ErrorInfo VALIDATION_FAILED and a BadRequest of this one field violation."""
    return [
        error_details_pb2.ErrorInfo(reason="VALIDATION_FAILED", domain=ERROR_DOMAIN),
        error_details_pb2.BadRequest(field_violations=[violation]),
    ]


def status_is(status: int, runtime_key: str, op: str = "EQ") -> dict[str, Any]:
    """A local-reply filter matching Envoy's HTTP status `status` (op "GE": that status or above; runtime_key:
    Envoy requires one per filter)."""
    return {
        "status_code_filter": {"comparison": {"op": op, "value": {"default_value": status, "runtime_key": runtime_key}}}
    }


def local_reply(status: int, code: int) -> list[dict[str, Any]]:
    """Envoy's local replies with this HTTP status, to an HTTP client (a gRPC or gRPC-Web client's are
    answered_over_grpc's where the edge has its own: the 503 that made no call, grpc_gateway_unavailable, and the
    413, request_limits.grpc_too_large; else Envoy's grpc-status as it is), as {"code": <gRPC code>, "message":
    <Envoy's text>, "details": []}: the shape the transcoder gives the gateway's errors, whose `details` is there
    when empty too. One of
    COME_BACK_LATER_STATUSES that made no call (made_no_call) says when: a RetryInfo in `details` and a
    Retry-After header; a 503 that may have (after the request reached the gateway) does not."""
    mapper = _as_status(status_is(status, f"local_reply_{status}"), code)
    if status not in COME_BACK_LATER_STATUSES:
        return [mapper]
    come_back_later = _as_status(status_is(status, f"local_reply_{status}_no_call"), code, made_no_call(status))
    come_back_later["body_format_override"] = _status_json(code, [_RETRY_INFO])
    come_back_later["headers_to_add"] = [set_header(RETRY_AFTER, str(RETRY_AFTER_SECONDS))]
    # When every reply of the status made no call, there is no other to map.
    return [come_back_later, mapper] if _NO_CALL_CONDITIONS[status] else [come_back_later]


def made_no_call(status: int) -> list[dict[str, Any]]:
    """The filters telling, among Envoy's local replies of this status in COME_BACK_LATER_STATUSES, those that
    made no call of the gateway: every 429 (a local rate limit refuses before any call), a 503 by its reason
    (NO_CALL_503_DETAILS, NO_CALL_503_RESETS)."""
    condition = _NO_CALL_CONDITIONS[status]
    return [] if condition is None else [_cel(condition)]


def grpc_gateway_unavailable() -> dict[str, Any]:
    """Envoy's own 503 that made no call (made_no_call), to a gRPC or gRPC-Web client, as UNAVAILABLE (what Envoy
    answers it already) saying when to come back, as the HTTP/JSON client's does: GATEWAY_UNAVAILABLE_MESSAGE and
    a RetryInfo of RETRY_AFTER_SECONDS in grpc-status-details-bin. Another 503 stays Envoy's bare UNAVAILABLE.
    After local_reply's mappers: a transcoded HTTP/JSON request's content type is gRPC's by then, and its 503 is
    theirs. (A 429 of Envoy's own stays as Envoy answers a gRPC client: its local rate limit chooses the code,
    UNAVAILABLE or RESOURCE_EXHAUSTED, which a Status fixed here could contradict.)"""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_SECONDS))
    return answered_over_grpc(
        503,
        "local_reply_503_grpc",
        grpc_code.UNAVAILABLE,
        GATEWAY_UNAVAILABLE_MESSAGE,
        [retry],
        only=made_no_call(503),
    )


def answered_over_grpc(
    status: int,
    runtime_key: str,
    code: int,
    message: str,
    details: list[Message],
    *,
    only: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Envoy's local reply of HTTP `status` to a gRPC or gRPC-Web client (runtime_key: Envoy requires one per
    filter; `only`: more filters, each to match too) as `code` with this message, and these details in
    grpc-status-details-bin, as the services give theirs: the whole trailers-only answer, in headers, with no
    body. For gRPC alone, a grpc-status added here would do (Envoy keeps one its local reply has); but Envoy
    decides a reply is gRPC's by the request as it came, and gRPC-Web's is not: its reply goes out as HTTP, and
    the gRPC-Web filter makes the HTTP status its grpc-status, over this one. Answered as gRPC (200, gRPC's
    content type), the filter passes the status on."""
    return {
        "filter": {
            "and_filter": {
                "filters": [status_is(status, runtime_key), *(only or []), {"header_filter": {"header": GRPC}}]
            }
        },
        "status_code": 200,
        "headers_to_add": [set_header(name, value) for name, value in grpc_answer_headers(code, message, details)],
        # No body: with one, Envoy would send it as the answer's data, which no gRPC client reads as a message.
        "body": {"inline_string": ""},
    }


def grpc_answer_headers(code: int, message: str, details: list[Message]) -> list[tuple[str, str]]:
    """A trailers-only gRPC answer's headers: `code`, `message` and these details in grpc-status-details-bin, as
    the services give theirs."""
    if not (message.isascii() and message.isprintable()) or "%" in message:
        raise ValueError(f"grpc-message is sent as it is: printable ASCII without '%' only, not {message!r}")
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status_details = status_pb2.Status(code=code, message=message, details=packed)
    return [
        ("content-type", "application/grpc"),
        ("grpc-status", str(code)),
        # As it is: printable ASCII without '%' is its own percent-encoding.
        ("grpc-message", message),
        ("grpc-status-details-bin", base64.b64encode(status_details.SerializeToString()).decode()),
    ]


def unlisted_local_reply() -> dict[str, Any]:
    """Any other error Envoy answers an HTTP/JSON client with (its HTTP status from 400 on, in neither
    LOCAL_REPLY_CODES nor GRPC_HTTP_STATUS_CODES) as a Status of UNLISTED_LOCAL_REPLY_CODE with Envoy's text:
    a client reads every error of the edge's in one shape, whatever Envoy adds or a release of it sends."""
    return _as_status(status_is(FIRST_ERROR_STATUS, "local_reply_unlisted", op="GE"), UNLISTED_LOCAL_REPLY_CODE)


def _as_status(status_filter: dict[str, Any], code: int, only: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A mapper of the local replies `status_filter` (and each of `only`) matches, to an HTTP/JSON client, to a
    Status of `code`."""
    return {
        "filter": {"and_filter": {"filters": [status_filter, *(only or []), http_json()]}},
        "body_format_override": _status_json(code),
    }


# A local reply's body, a google.rpc.Status in JSON already, sent as it is.
_BODY_AS_JSON = {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}, "content_type": "application/json"}


# The RetryInfo of the edge's answers in COME_BACK_LATER_STATUSES that made no call (made_no_call), in proto3
# JSON (a Duration is its seconds).
_RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{RETRY_AFTER_SECONDS}s"}


def _status_json(code: int, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A local reply's body as a google.rpc.Status of this code, its message the reply's text."""
    return {
        "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": details or []},
        "content_type": "application/json",
    }


def http_json() -> dict[str, Any]:
    """A local reply to an HTTP/JSON request, whether or not the transcoder has made it gRPC yet."""
    return {"or_filter": {"filters": [_not_grpc(), _transcoded()]}}


def explained(details: str, status: int, message: str) -> dict[str, Any]:
    """Envoy's local reply for this reason (its response code details; its HTTP status is `status`) to an HTTP
    client, with this message in its Status (EXPLAINED_LOCAL_REPLIES), its code the status's (LOCAL_REPLY_CODES)."""
    return {
        "filter": {"and_filter": {"filters": [_cel(f"response.code_details == '{details}'"), http_json()]}},
        "body": {"inline_string": message},
        "body_format_override": _status_json(LOCAL_REPLY_CODES[status]),
    }


def unreadable_body() -> dict[str, Any]:
    """The transcoder's 400 for a body it cannot read, to an HTTP client, with UNREADABLE_BODY_MESSAGE in its
    Status instead of the parser's text, which quotes the body. The field's path cannot be kept without its
    value: the reply's formatter takes Envoy's text whole or not at all."""
    return explained(_UNREADABLE_BODY_DETAILS, 400, UNREADABLE_BODY_MESSAGE)


def unreadable_query() -> dict[str, Any]:
    """The transcoder's 400 for a query parameter it cannot bind, to an HTTP client, with
    UNREADABLE_QUERY_MESSAGE in its Status instead of the transcoder's text, which quotes the value."""
    return explained(_UNREADABLE_QUERY_DETAILS, 400, UNREADABLE_QUERY_MESSAGE)


def status_as_it_is(route: str) -> dict[str, Any]:
    """The direct responses of the routes of this name, whose body is a google.rpc.Status in JSON already,
    sent as JSON."""
    return body_as_it_is(route_named(route))


def body_as_it_is(reply_filter: dict[str, Any]) -> dict[str, Any]:
    """The local replies this filter matches, whose body is a google.rpc.Status in JSON already (a route's direct
    response, a Lua filter's refusal), sent as JSON: without it a mapper of their status makes the body the
    message of a Status of its own."""
    return {"filter": reply_filter, "body_format_override": _BODY_AS_JSON}


def route_named(route: str) -> dict[str, Any]:
    """A local-reply filter matching the replies of the routes of this name (their direct responses)."""
    return _cel(f"xds.route_name == '{route}'")


def request_timed_out() -> dict[str, Any]:
    """Envoy's 408 to an HTTP client (its request did not arrive whole before a timer of Envoy's ran out): the
    Status of LOCAL_REPLY_CODES' code for it, with a message and an ErrorInfo (REQUEST_TIMEOUT) saying that
    no call was made of it. Envoy's own text was "request timeout" or "stream timeout"."""
    return answered_over_http(
        408, "local_reply_408_explained", LOCAL_REPLY_CODES[408], REQUEST_TIMEOUT_MESSAGE, error_info(REQUEST_TIMEOUT)
    )


def answered_over_http(status: int, runtime_key: str, code: int, message: str, info: dict[str, Any]) -> dict[str, Any]:
    """Envoy's local reply of HTTP `status` to an HTTP client (runtime_key: Envoy requires one per filter), its
    body replaced by a google.rpc.Status of `code` with this message and ErrorInfo: an answer the edge knows all
    of, not Envoy's text."""
    body = {"code": code, "message": message, "details": [info]}
    return {
        "filter": {"and_filter": {"filters": [status_is(status, runtime_key), http_json()]}},
        "body": {"inline_string": json.dumps(body, separators=(",", ":"))},
        "body_format_override": _BODY_AS_JSON,
    }


def query_without_content_type() -> dict[str, Any]:
    """Envoy's 400 for a `QUERY` without a content type, whose own body is empty (`{"code":3,"message":""}`
    once mapped): a Status saying what to send instead. Matched by Envoy's reason for the reply, not by the
    request: no other 400 is taken for it."""
    body = validation_failed(
        "a QUERY request must say what its content is: send it with a Content-Type header "
        "(RFC 10008, The HTTP QUERY Method)",
        # No field: the header is none of a request message's.
        {"description": "a QUERY's content needs a Content-Type", "reason": QUERY_WITHOUT_CONTENT_TYPE},
    )
    return {
        "filter": _cel(f"response.code_details == '{_QUERY_WITHOUT_CONTENT_TYPE_DETAILS}'"),
        "body": {"inline_string": body},
        "body_format_override": _BODY_AS_JSON,
    }


def code_details_start(prefix: str) -> dict[str, Any]:
    """A local-reply filter matching Envoy's replies whose reason (its response code details) begins so."""
    return _cel(f"response.code_details.startsWith('{prefix}')")


def _cel(expression: str) -> dict[str, Any]:
    """A local-reply filter matching a CEL expression over the request, the response and its route."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": _CEL_FILTER, "expression": expression},
        }
    }


def _not_grpc() -> dict[str, Any]:
    """A request that is not gRPC (nor gRPC-Web), as it came in."""
    return {"header_filter": {"header": NOT_GRPC}}


def _transcoded() -> dict[str, Any]:
    """An HTTP/JSON request the transcoder has already turned into gRPC (its content type says gRPC by
    then): the transcoder keeps the path it came with."""
    return {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}}
