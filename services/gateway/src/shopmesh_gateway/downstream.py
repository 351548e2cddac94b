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
from google.rpc import error_details_pb2, status_pb2

from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import TRANSIENT_CODES, dependency_unavailable

# Errors the gateway's own client channels make up (circuit open, inbound deadline passed).
_LOCAL_DOMAIN = "shopmesh.chassis"
_DETAILS_KEY = "grpc-status-details-bin"
_DEFAULT_RETRY_AFTER_SECONDS = 1.0


def _status_of(error: grpc.aio.AioRpcError) -> tuple[bytes, status_pb2.Status] | None:
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY:
            raw = value if isinstance(value, bytes) else value.encode()
            return raw, status_pb2.Status.FromString(raw)
    return None


def _error_info_domain(status: status_pb2.Status) -> str | None:
    for detail in status.details:
        if detail.TypeName() == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.domain)
    return None


def _retry_after(status: status_pb2.Status | None) -> float:
    for detail in status.details if status is not None else ():
        if detail.TypeName() == "google.rpc.RetryInfo":
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return float(retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9)
    return _DEFAULT_RETRY_AFTER_SECONDS


def unavailable(service: str, retry_after_seconds: float = _DEFAULT_RETRY_AFTER_SECONDS) -> errors.Unavailable:
    return dependency_unavailable(service, retry_after_seconds=retry_after_seconds)


# chassis-candidate: relaying a dependency's error unchanged is what any backend-for-frontend or proxy
# service needs; the chassis' server interceptor turns every unhandled AioRpcError into its own status.
def translate(service: str, error: grpc.aio.AioRpcError) -> Exception:
    """The exception that makes the gateway answer for `error`: a replay of the internal service's status,
    the gateway's UNAVAILABLE, or `error` itself (a status without details that no contract promises,
    which the chassis logs and answers as INTERNAL)."""
    found = _status_of(error)
    if found is not None:
        raw, status = found
        if status.code == error.code().value[0] and _error_info_domain(status) != _LOCAL_DOMAIN:
            return errors.ReplayedError(raw, status.message)
    if error.code() in TRANSIENT_CODES:
        return unavailable(service, _retry_after(found[1] if found else None))
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
