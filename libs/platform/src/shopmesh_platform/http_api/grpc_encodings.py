"""A gRPC or gRPC-Web call's grpc-encoding, the compression of its messages: one that is not a single content
coding is refused as INVALID_ARGUMENT (malformed_grpc_encoding_refused), one the gateway does not read as
UNIMPLEMENTED, naming those it does (unsupported_grpc_encoding_refused), as a gRPC server answers it
(PROTOCOL-HTTP2.md, "Compression"). Forwarded, the gateway's gRPC server (grpc-core) answered either INTERNAL
"Error parsing 'grpc-encoding' metadata", a server error for the client's mistake, and kept its failed parse in
the HPACK table of the one HTTP/2 connection the edge keeps to it, where a later call of another client's (a
`GZIP` then a `gzip`) could meet it."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .local_replies import ERROR_DOMAIN, answered_over_grpc, route_named, validation_failed_details
from .matching import grpc_header_refused, set_header

# The header, as the field violation names it.
GRPC_ENCODING = "grpc-encoding"
# The encodings the gateway's gRPC server reads (grpc-core's, whose names are case-sensitive), as gRPC's
# grpc-accept-encoding lists them. `identity` is no compression: a message flagged compressed under it is
# refused (grpc_messages.MISSING_GRPC_ENCODING).
ACCEPTED_GRPC_ENCODINGS = ("identity", "deflate", "gzip")
# One content coding: an HTTP token (RFC 9110, 5.6.2), no parameters (`gzip;q=1`), no list (`gzip, deflate`,
# and a header sent twice, which the route matches joined by ','), not empty.
_CONTENT_CODING = r"[0-9A-Za-z!#$%&'*+.^_`|~-]+"

# The field violation's reason in the refusal of a grpc-encoding that is not one content coding, its message,
# and the name of the route refusing it (its local reply is told from Envoy's other 400s by it).
MALFORMED_GRPC_ENCODING = "MALFORMED_GRPC_ENCODING"
MALFORMED_GRPC_ENCODING_MESSAGE = (
    "grpc-encoding is not one content coding: send one of "
    f"{', '.join(ACCEPTED_GRPC_ENCODINGS)}, alone (no parameters, no list), or none"
)
MALFORMED_GRPC_ENCODING_ROUTE = "malformed-grpc-encoding"
# The ErrorInfo reason of the UNIMPLEMENTED for a content coding the gateway does not read, its message, and
# its route's name.
UNSUPPORTED_GRPC_ENCODING = "UNSUPPORTED_GRPC_ENCODING"
UNSUPPORTED_GRPC_ENCODING_MESSAGE = (
    "the request's grpc-encoding is not one the gateway reads: send the message uncompressed, or in deflate or gzip"
)
UNSUPPORTED_GRPC_ENCODING_ROUTE = "unsupported-grpc-encoding"
# The HTTP statuses of the two routes' direct responses, which their local replies make gRPC answers: 415 is
# HTTP's own for a content coding a server does not take (RFC 9110, 15.5.16).
_MALFORMED_STATUS = 400
_UNSUPPORTED_STATUS = 415


def grpc_encoding_refused() -> list[dict[str, Any]]:
    """gRPC or gRPC-Web whose grpc-encoding is not one content coding (malformed), or one the gateway does not
    read (unsupported): refused on its headers, never forwarded, before any route that forwards gRPC. An
    HTTP/JSON request never gets here: the edge drops gRPC's headers from it (headers.no_grpc_headers)."""
    malformed = {"safe_regex": {"regex": _CONTENT_CODING}}
    unsupported = {"safe_regex": {"regex": "|".join(ACCEPTED_GRPC_ENCODINGS)}}
    return [
        grpc_header_refused(
            MALFORMED_GRPC_ENCODING_ROUTE, GRPC_ENCODING, malformed, _MALFORMED_STATUS, MALFORMED_GRPC_ENCODING_MESSAGE
        ),
        grpc_header_refused(
            UNSUPPORTED_GRPC_ENCODING_ROUTE,
            GRPC_ENCODING,
            unsupported,
            _UNSUPPORTED_STATUS,
            UNSUPPORTED_GRPC_ENCODING_MESSAGE,
        ),
    ]


def grpc_encoding_replies() -> list[dict[str, Any]]:
    """grpc_encoding_refused's answers, to a gRPC or gRPC-Web client: INVALID_ARGUMENT with the details of the
    services' validation errors (an ErrorInfo VALIDATION_FAILED, a field violation of grpc-encoding) for one
    that is malformed; UNIMPLEMENTED with an ErrorInfo UNSUPPORTED_GRPC_ENCODING and gRPC's
    grpc-accept-encoding for one the gateway does not read."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=GRPC_ENCODING,
        description=f"one content coding: {', '.join(ACCEPTED_GRPC_ENCODINGS)}",
        reason=MALFORMED_GRPC_ENCODING,
    )
    malformed = answered_over_grpc(
        _MALFORMED_STATUS,
        "local_reply_400_grpc_encoding",
        grpc_code.INVALID_ARGUMENT,
        MALFORMED_GRPC_ENCODING_MESSAGE,
        validation_failed_details(violation),
        only=[route_named(MALFORMED_GRPC_ENCODING_ROUTE)],
    )
    accepted = ",".join(ACCEPTED_GRPC_ENCODINGS)
    unsupported = answered_over_grpc(
        _UNSUPPORTED_STATUS,
        "local_reply_415_grpc_encoding",
        grpc_code.UNIMPLEMENTED,
        UNSUPPORTED_GRPC_ENCODING_MESSAGE,
        [
            error_details_pb2.ErrorInfo(
                reason=UNSUPPORTED_GRPC_ENCODING, domain=ERROR_DOMAIN, metadata={"grpc_accept_encoding": accepted}
            )
        ],
        only=[route_named(UNSUPPORTED_GRPC_ENCODING_ROUTE)],
    )
    unsupported["headers_to_add"].append(set_header("grpc-accept-encoding", accepted))
    return [malformed, unsupported]
