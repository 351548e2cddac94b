"""A gRPC or gRPC-Web call's grpc-previous-rpc-attempts, which a client's retry sends (gRPC's retry design,
A6): one that is not a small decimal count is refused as INVALID_ARGUMENT before it reaches the gateway
(malformed_previous_attempts_refused). Forwarded, the gateway's gRPC server (grpc-core) answered `-1` INTERNAL
"Error parsing 'grpc-previous-rpc-attempts' metadata" and kept its failed parse in the HPACK table of the one
HTTP/2 connection the edge keeps to it: every later retry of any client's, whatever its count, was that INTERNAL
until the entry was evicted."""

from __future__ import annotations

from typing import Any

from .grpc_header_forms import GrpcHeaderForm

# The header, as the field violation names it.
GRPC_PREVIOUS_RPC_ATTEMPTS = "grpc-previous-rpc-attempts"
# A count of attempts before this one: grpc-core reads an unsigned decimal integer, and a gRPC client makes at
# most 5 attempts of a call (gRPC's cap on maxAttempts), so three digits are plenty; no sign, no list.
PREVIOUS_RPC_ATTEMPTS_FORM = r"[0-9]{1,3}"
# The field violation's reason in the refusal, its message, and the name of the route refusing it (its local
# reply is told from Envoy's other 400s by it).
MALFORMED_PREVIOUS_RPC_ATTEMPTS = "MALFORMED_PREVIOUS_RPC_ATTEMPTS"
MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE = (
    "grpc-previous-rpc-attempts is not a count of attempts: send 1 to 3 decimal digits (such as 1), or none"
)
MALFORMED_PREVIOUS_RPC_ATTEMPTS_ROUTE = "malformed-grpc-previous-rpc-attempts"


_MALFORMED_PREVIOUS_RPC_ATTEMPTS = GrpcHeaderForm(
    header=GRPC_PREVIOUS_RPC_ATTEMPTS,
    form=PREVIOUS_RPC_ATTEMPTS_FORM,
    description="1 to 3 decimal digits",
    reason=MALFORMED_PREVIOUS_RPC_ATTEMPTS,
    message=MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE,
    route=MALFORMED_PREVIOUS_RPC_ATTEMPTS_ROUTE,
    runtime_key="local_reply_400_grpc_previous_rpc_attempts",
)


def malformed_previous_attempts_refused() -> dict[str, Any]:
    """gRPC or gRPC-Web whose grpc-previous-rpc-attempts is not PREVIOUS_RPC_ATTEMPTS_FORM (`-1`, `+1`, `1.0`,
    a list): refused on its headers (400, answered INVALID_ARGUMENT by grpc_malformed_previous_attempts), never
    forwarded. An HTTP/JSON request never gets here: the edge drops gRPC's headers from it
    (headers.no_grpc_headers)."""
    return _MALFORMED_PREVIOUS_RPC_ATTEMPTS.refused()


def grpc_malformed_previous_attempts() -> dict[str, Any]:
    """malformed_previous_attempts_refused's 400, to a gRPC or gRPC-Web client, as INVALID_ARGUMENT with the
    details of the services' validation errors: an ErrorInfo VALIDATION_FAILED and a field violation of
    grpc-previous-rpc-attempts."""
    return _MALFORMED_PREVIOUS_RPC_ATTEMPTS.answer()
