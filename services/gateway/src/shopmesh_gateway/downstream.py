"""What the gateway answers when an internal service's call fails.

The contract: errors of internal services reach the client with their status code and details unchanged
(their ErrorInfo domain says where they come from). Failures that no internal service reported — the
connection failed, the deadline passed, or the gateway's own circuit breaker refused the call — are the
gateway's: UNAVAILABLE, reason DEPENDENCY_UNAVAILABLE, domain "shopmesh.gateway", with RetryInfo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import (
    TRANSIENT_CODES,
    answered_final,
    answered_shed,
    dependency_unavailable,
    details_of,
)

# Errors the gateway's own client channels make up (circuit open, inbound deadline passed).
_LOCAL_DOMAIN = "shopmesh.chassis"


# chassis-candidate: relaying a dependency's error unchanged is what any backend-for-frontend or proxy
# service needs; the chassis' server interceptor turns every unhandled AioRpcError into its own status.
def translate(service: str, error: grpc.aio.AioRpcError) -> Exception:
    """The exception that makes the gateway answer for `error`: a replay of the internal service's status,
    the gateway's UNAVAILABLE, or `error` itself (a status without details that no contract promises,
    which the chassis logs and answers as INTERNAL)."""
    details = details_of(error)
    made_here = details.error_info is not None and details.error_info.domain == _LOCAL_DOMAIN
    if details.raw_status is not None and details.status_code == error.code().value[0] and not made_here:
        # Final for the call only if the service answered final (orders' accepted cancellation): relayed without
        # its pushback, the status would be retried by the gateway's caller's channel, redoing what it says is
        # under way. A -1 alone is not final: it may only say the wait did not fit the gateway's own short call
        # (2 s), and the interceptor weighs the status' RetryInfo against the shopper's deadline instead.
        # Shed if the service counted it shed (its GRPC_MAX_CONCURRENT_RPCS, users' PASSWORD_HASHING_BUSY): the
        # shopper was refused for want of capacity, which the gateway's availability SLO counts.
        return errors.ReplayedError(
            details.raw_status, details.message, final=answered_final(error), shed=answered_shed(error)
        )
    if error.code() in TRANSIENT_CODES:
        return dependency_unavailable(service, error)
    return error


@contextlib.contextmanager
def calling(service: str) -> Iterator[None]:
    """Wraps calls to `service` so that a failed call raises what `translate` says."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        translated = translate(service, error)
        if translated is error:
            raise
        raise translated from None
