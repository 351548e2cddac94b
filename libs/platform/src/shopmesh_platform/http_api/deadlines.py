"""A gRPC or gRPC-Web client's deadline at the edge, its `grpc-timeout`: one not of gRPC's form is refused
before it reaches the gateway (malformed_grpc_timeout_refused), and the edge's own bound of a call, the
client's deadline or ROUTE_TIMEOUT, is DEADLINE_EXCEEDED when it runs out (grpc_deadline_exceeded)."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .grpc_header_forms import GrpcHeaderForm
from .local_replies import (
    ERROR_DOMAIN,
    REQUEST_TIMEOUT,
    REQUEST_TIMEOUT_MESSAGE,
    answered_over_grpc,
)
from .routes import ROUTE_TIMEOUT

# gRPC's form of a deadline (PROTOCOL-HTTP2.md, "Timeout"): at most 8 digits and a unit, hours to nanoseconds.
GRPC_TIMEOUT_FORM = r"[0-9]{1,8}[HMSmun]"
# The header, as the field violation names it.
GRPC_TIMEOUT = "grpc-timeout"
# The field violation's reason in the refusal of a grpc-timeout not of that form, and the name of the route
# refusing it (its local reply is told from Envoy's other 400s by it).
MALFORMED_GRPC_TIMEOUT = "MALFORMED_GRPC_TIMEOUT"
MALFORMED_GRPC_TIMEOUT_ROUTE = "malformed-grpc-timeout"
MALFORMED_GRPC_TIMEOUT_MESSAGE = (
    "grpc-timeout is not a gRPC deadline: send 1 to 8 digits and a unit, H, M, S, m, u or n (such as 5S)"
)
_MALFORMED_GRPC_TIMEOUT = GrpcHeaderForm(
    header=GRPC_TIMEOUT,
    form=GRPC_TIMEOUT_FORM,
    description="1 to 8 digits and a unit: H, M, S, m, u or n",
    reason=MALFORMED_GRPC_TIMEOUT,
    message=MALFORMED_GRPC_TIMEOUT_MESSAGE,
    route=MALFORMED_GRPC_TIMEOUT_ROUTE,
    runtime_key="local_reply_400_grpc_timeout",
)
# The message of the DEADLINE_EXCEEDED of a call the edge's bound ended before the gateway answered (the
# client's deadline, or the edge's ROUTE_TIMEOUT when that is shorter).
DEADLINE_RAN_OUT_MESSAGE = (
    f"the call's deadline (its grpc-timeout, or the edge's bound of {ROUTE_TIMEOUT} on every call) "
    "ran out before the gateway answered"
)


def malformed_grpc_timeout_refused() -> dict[str, Any]:
    """gRPC or gRPC-Web whose grpc-timeout is not of gRPC's form (`zzz`, `1.5S`, `5s`, two values): refused on
    its headers (400, answered INVALID_ARGUMENT by grpc_malformed_timeout), never forwarded. The gateway's gRPC
    server (grpc-core) answers such a call INTERNAL, and keeps its failed parse in the HPACK table of the
    connection, the one HTTP/2 connection Envoy keeps to it for every client: from then on every client's calls
    carrying a deadline were INTERNAL "Error parsing 'grpc-timeout' metadata" (and, over time, HTTP/JSON
    calls 500). An HTTP/JSON request never gets here: the edge drops gRPC's
    headers from it (headers.no_grpc_headers), as it sends no deadline of its own."""
    return _MALFORMED_GRPC_TIMEOUT.refused()


def grpc_malformed_timeout() -> dict[str, Any]:
    """malformed_grpc_timeout_refused's 400, to a gRPC or gRPC-Web client, as INVALID_ARGUMENT with the details
    of the services' validation errors (and the edge's HTTP/JSON refusals, local_replies.validation_failed): an
    ErrorInfo VALIDATION_FAILED and a field violation of grpc-timeout."""
    return _MALFORMED_GRPC_TIMEOUT.answer()


def grpc_deadline_exceeded() -> list[dict[str, Any]]:
    """Envoy's 504 to a gRPC or gRPC-Web client that sent a deadline (its bound of the stream, routes.ROUTE_BOUND:
    the client's grpc-timeout, or ROUTE_TIMEOUT when that is shorter, ran out before the gateway answered), and
    its 408 to any (the request had not all arrived, in ROUTE_TIMEOUT or before a deadline of `0n` ran out: no
    call made, as the HTTP client's 408 says) as DEADLINE_EXCEEDED, what a gRPC server answers a deadline that
    ran out, and what HTTP/JSON clients get for them (LOCAL_REPLY_CODES). Envoy's own, to gRPC-Web, were
    UNAVAILABLE for the 504 (gRPC's reading of it), which a client retries at once, and UNKNOWN for the 408, both
    "downstream duration timeout". The answer is gRPC's, HTTP 200 (answered_over_grpc): a gRPC-Web call without
    a deadline of its own keeps Envoy's 504, the gateway too slow for the edge's bound, which the availability
    SLO counts as a 5xx. After local_replies.local_reply's mappers: a transcoded HTTP/JSON request's 408 and 504
    are theirs."""
    with_deadline = {"header_filter": {"header": {"name": GRPC_TIMEOUT, "present_match": True}}}
    return [
        answered_over_grpc(
            504,
            "local_reply_504_grpc",
            grpc_code.DEADLINE_EXCEEDED,
            DEADLINE_RAN_OUT_MESSAGE,
            [],
            only=[with_deadline],
        ),
        # The HTTP client's message and ErrorInfo (local_replies.request_timed_out): no call was made.
        answered_over_grpc(
            408,
            "local_reply_408_grpc",
            grpc_code.DEADLINE_EXCEEDED,
            REQUEST_TIMEOUT_MESSAGE,
            [error_details_pb2.ErrorInfo(reason=REQUEST_TIMEOUT, domain=ERROR_DOMAIN)],
        ),
    ]
