"""Maps domain errors to gRPC statuses with google.rpc details, and reads them back on the client.

Errors are sent with `context.abort_with_status` before any response message, so the response is
trailers-only: gRPC's own retries and a mesh's outlier detection see the status.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shopmesh_chassis import errors

STATUS_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


# The ErrorInfo domain of the errors the chassis' client side makes up itself (CIRCUIT_OPEN,
# INBOUND_DEADLINE_EXCEEDED); a server's chassis answers in its service's domain (`shopmesh.<service>`).
CHASSIS_DOMAIN = "shopmesh.chassis"

# gRFC A6's trailer telling a gRPC client how long to wait before retrying (milliseconds; negative: never).
RETRY_PUSHBACK = "grpc-retry-pushback-ms"

# The chassis' trailer saying the answer is final for the call (an error raised `final=True`), sent beside the
# pushback -1. The -1 alone cannot say so: the server also sends it for any RetryInfo wait that ends past that
# call's deadline, which a relay's own short call to a dependency makes likely and its caller's longer deadline
# may well fit. A trailer, not ErrorInfo metadata: like the pushback it is about this one call, not the
# status, which relays pass on byte for byte and clients (the HTTP API's JSON among them) read as the contract.
FINAL_ANSWER = "shopmesh-final-answer"

# The chassis' trailer saying the server counted the call as shed (`shopmesh_grpc_server_shed_total`): refused
# for want of its own capacity, by its GRPC_MAX_CONCURRENT_RPCS (SERVER_OVERLOADED) or a handler's full queue
# (users' PASSWORD_HASHING_BUSY), or relaying a dependency's answer so marked or, unmarked, RESOURCE_EXHAUSTED
# SERVER_OVERLOADED (a release before the marker: `_shed`). A relay reads it (`answered_shed`) to count the call
# as shed too: the status alone cannot say so, since its code is the one a rate limit answers and a handler's
# reason is its own. A trailer, not ErrorInfo metadata, as FINAL_ANSWER: it is about this one call, not the
# status, which relays pass on byte for byte and clients read as the contract.
SHED_ANSWER = "shopmesh-shed"

# The header gRPC's retries send with each retry attempt (gRFC A6): how many attempts of the call came before.
PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"

# The chassis' trailer saying the error answers a retry attempt (the call came with PREVIOUS_ATTEMPTS): the
# caller's channel has retried the call, and a relay reads it (`answered_a_retry`) to tell its own caller not to
# retry the answer too, whatever its reason. A trailer, not ErrorInfo metadata, as FINAL_ANSWER: it is about
# this one call, not the status.
RETRIED_ANSWER = "shopmesh-retried"

# Statuses of an outbound call that say "not now" rather than "no": the dependency is down, too slow,
# shedding load, or cancelled the call on its side (a cancellation of our own call reaches the handler
# as asyncio.CancelledError instead).
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)

# The statuses worth another try of a call that is safe to repeat (a read, or a step under an idempotency key):
# TRANSIENT_CODES, and a lost race (ABORTED): the dependency answered about these records alone, and asked again
# it is likely to settle. A call that is not safe to repeat must not retry ABORTED, whose work may be half done.
IDEMPOTENT_RETRY_CODES: frozenset[grpc.StatusCode] = TRANSIENT_CODES | {grpc.StatusCode.ABORTED}


def unexpected_status(call: str, error: grpc.aio.AioRpcError) -> RuntimeError:
    """A status `call` ("catalog", "catalog GetProduct") answered that its contract does not promise: a bug on
    one side or the other. A RuntimeError, so that the server interceptor logs it and answers INTERNAL rather
    than pass on a status the caller's own contract does not promise either."""
    return RuntimeError(f"{call} answered {error.code().name}: {error.details()}")


# What a service asks its caller to wait when a dependency failed without saying how long.
DEPENDENCY_RETRY_AFTER_SECONDS = 1.0
# The longest wait a dependency's RetryInfo passes on. A minute is as long as orders' recovery loop ever waits
# (RECOVERY_BACKOFF_MAX_SECONDS): a dependency asking for more is down for an outage, which its callers poll
# anyway, or sent a nonsense duration (a broken peer's hours or years), which must not park every caller
# up the chain for that long.
MAX_DEPENDENCY_RETRY_AFTER_SECONDS = 60.0


def dependency_unavailable(
    dependency: str | None,
    failure: grpc.aio.AioRpcError | None = None,
    *,
    reason: str = errors.DEPENDENCY_UNAVAILABLE,
) -> errors.Unavailable:
    """What a service answers its own caller when a call to `dependency` failed with a transient status:
    UNAVAILABLE with RetryInfo, and the dependency's name in ErrorInfo's metadata when it is known.

    The RetryInfo is the failed call's own (a dependency rate-limiting or draining knows best when to come
    back), at least DEPENDENCY_RETRY_AFTER_SECONDS and at most MAX_DEPENDENCY_RETRY_AFTER_SECONDS: a shorter
    wait (a shed server's 0.1 s) is about that server's queue, not the whole chain a retry goes through.
    Never final, even when the dependency answered final (`answered_final`: orders' accepted cancellation, a
    state only a newer release knows): that is final for the call we made, whose work the dependency says is
    under way or cannot change, not a verdict on ours, which may fare better through another path or later.
    Nor is a pushback -1 final: it may say only that the wait did not fit the deadline of the call we made
    (perhaps a step's short timeout), not our caller's. The server interceptor sends our caller gRPC's "do not
    retry" pushback for it all the same, not final: our channel has retried the dependency already, and our
    caller's retrying too would multiply those attempts."""
    name = dependency or "a dependency"
    code = failure.code() if failure is not None else None
    asked = details_of(failure).retry_delay_seconds if failure is not None else None
    wait = DEPENDENCY_RETRY_AFTER_SECONDS
    if asked is not None:
        wait = min(max(asked, DEPENDENCY_RETRY_AFTER_SECONDS), MAX_DEPENDENCY_RETRY_AFTER_SECONDS)
    return errors.Unavailable(
        f"{name} is unavailable" + (f" ({code.name})" if code is not None else ""),
        reason=reason,
        retry_after_seconds=wait,
        metadata={"dependency": dependency} if dependency else None,
    )


def status_code_for(error: errors.DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# The longest RetryInfo delay sent: no wait of this system is longer, and a Duration holds at most ~10,000
# years (a rate of 1e-300 a second hinted 1e300 s, and the refusal became INTERNAL, "Value out of range").
MAX_RETRY_DELAY_SECONDS = 86400.0


def _duration(seconds: float) -> duration_pb2.Duration:
    """A retry delay as a Duration, within [0, MAX_RETRY_DELAY_SECONDS] (NaN as 0): a hint out of range must
    not turn the answer it rides on into INTERNAL."""
    seconds = min(seconds, MAX_RETRY_DELAY_SECONDS) if seconds >= 0 else 0.0
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


# A gRPC client refuses trailers past 8 KiB now and then and past 16 KiB always (grpc.max_metadata_size),
# answering RESOURCE_EXHAUSTED, "retry later", for a request that can never succeed. An error goes out
# nearly twice: the message percent-encoded in grpc-message (3 characters for each byte of non-ASCII text),
# and the whole status base64-encoded (4/3) in grpc-status-details-bin. So the budgets count UTF-8 bytes,
# not characters, and keep both headers together under 7 KiB, whatever the text (tests/test_errors.py
# measures them as sent).
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 1024
# ErrorInfo's metadata entries past this are left out (the first ones stay), so that many long values cannot
# crowd out the rest of the details.
MAX_ERROR_INFO_BYTES = 2048
MAX_DETAILS_BYTES = 3584
_ELLIPSIS = "…"


def _shortened(text: str, limit: int) -> str:
    """`text` if it fits in `limit` UTF-8 bytes; else as much of it as fits with "…", cut between characters."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    room = limit - len(_ELLIPSIS.encode())
    return encoded[:room].decode(errors="ignore") + _ELLIPSIS


def _error_info(error: errors.DomainError, default_domain: str) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=error.domain or default_domain)
    for key, value in error.metadata.items():
        info.metadata[key] = _shortened(value, MAX_METADATA_VALUE_BYTES)
        if info.ByteSize() > MAX_ERROR_INFO_BYTES:
            del info.metadata[key]
            break
    return info


def local_error(code: grpc.StatusCode, message: str, error: errors.DomainError) -> grpc.aio.AioRpcError:
    """An outbound call's failure made up on this side, in CHASSIS_DOMAIN, as the target's answer would read."""
    status = to_rpc_status(error, CHASSIS_DOMAIN)
    status.code = code.value[0]
    return grpc.aio.AioRpcError(
        code=code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=message,
    )


def inbound_deadline_passed() -> grpc.aio.AioRpcError:
    """What work for a call whose deadline has passed fails with before it starts (an outbound call, the database's
    work): DEADLINE_EXCEEDED INBOUND_DEADLINE_EXCEEDED, which names the caller's lack of time, not the target's
    health, so no breaker counts it against a target (a server relays it as its own DEPENDENCY_UNAVAILABLE)."""
    return local_error(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the inbound call's deadline has passed",
        errors.DomainError("deadline exceeded", reason="INBOUND_DEADLINE_EXCEEDED"),
    )


def to_rpc_status(error: errors.DomainError, default_domain: str) -> status_pb2.Status:
    """The google.rpc.Status for a domain error: ErrorInfo always, BadRequest and RetryInfo when known.
    Bounded in size: a long message or metadata value is cut (ending in "…"), metadata entries past
    MAX_ERROR_INFO_BYTES are left out, and of more violations than fit, the first are sent and the message
    says how many there were."""
    code = status_code_for(error)
    details = [_pack(_error_info(error, default_domain))]
    retry_after = error.retry_after_seconds if isinstance(error, errors.RetryHinted) else None
    if retry_after is not None:
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after))))
    message = _shortened(error.message, MAX_MESSAGE_BYTES)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        room = MAX_DETAILS_BYTES - sum(d.ByteSize() for d in details)
        shown: list[error_details_pb2.BadRequest.FieldViolation] = []
        for v in error.violations:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=_shortened(v.field, MAX_MESSAGE_BYTES),
                description=_shortened(v.description, MAX_MESSAGE_BYTES),
                reason=v.reason,
            )
            room -= violation.ByteSize() + 4  # its tag and length within BadRequest, and BadRequest's in Any
            if room < 0:
                break
            shown.append(violation)
        if len(shown) < len(error.violations):
            message = _shortened(error.message, MAX_MESSAGE_BYTES - 40)
            message += f" ({len(shown)} of {len(error.violations)} violations listed)"
        details.insert(1, _pack(error_details_pb2.BadRequest(field_violations=shown)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def internal_status(trace_id: str | None) -> status_pb2.Status:
    """What the client sees for an unexpected exception: a reference to the logs, nothing else."""
    message = "internal error"
    if trace_id:
        message += f" (trace_id={trace_id})"
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    return rpc_status.to_status(status)


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details of a failed call, decoded for clients and tests."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None = None
    field_violations: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)
    retry_delay_seconds: float | None = None
    # The google.rpc.Status as it came (serialized, to relay it unchanged) and the code inside it, which
    # only a broken peer makes differ from `code`; both None when the call carried no details.
    raw_status: bytes | None = None
    status_code: int | None = None

    @property
    def reason(self) -> str | None:
        return self.error_info.reason if self.error_info is not None else None


def details_of(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """Decode `grpc-status-details-bin` from a failed aio call (empty details when there are none)."""
    return details_from(error.code(), error.details() or "", error.trailing_metadata())


def answered_final(error: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call's server answered final for the call (a chassis error raised `final=True`,
    marked by FINAL_ANSWER): a proxy relaying the answer relays it final, or its own caller's channel retries
    what the server said is under way. A pushback -1 without the marker is not final: the server's wait only
    did not fit that call's deadline, which says nothing of the proxy's caller's."""
    return any(key == FINAL_ANSWER for key, _ in error.trailing_metadata() or ())


def answered_shed(error: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call's server counted it as shed (marked by SHED_ANSWER): a proxy relaying the
    answer counts its own call as shed too (`errors.ReplayedError(..., shed=True)`), whatever the reason."""
    return any(key == SHED_ANSWER for key, _ in error.trailing_metadata() or ())


def answered_a_retry(error: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call's answer came from a retry attempt (marked by RETRIED_ANSWER): the channel
    retried the call and stopped (its attempts, its deadline or the server's pushback spent), so a relay of a
    transient answer sends it with "do not retry". Unmarked (the first attempt's answer, as when the channel
    retries nothing for the method, or a server of a release before the marker), the relay's caller may retry
    it: no layer below did."""
    return any(key == RETRIED_ANSWER for key, _ in error.trailing_metadata() or ())


def relayed(dependency: str, error: grpc.aio.AioRpcError, *, method_is_new: bool = False) -> Exception:
    """What a server relaying `dependency`'s answers (a backend-for-frontend, a proxy: the gateway) raises
    for a failed call to it: a replay of the dependency's status byte for byte (its retries spent when
    `answered_a_retry`), UNAVAILABLE
    (`dependency_unavailable`) for a transient failure no dependency reported, or `error` itself (a status
    without details that no contract promises, which the server interceptor logs and answers as INTERNAL).

    `method_is_new`: the method called came in a release of `dependency` that its pods may not all run yet (its
    rollout, or a rollback past it), so an UNIMPLEMENTED without details (gRPC's "Method not found!") is one
    of the older pods answering, UNAVAILABLE like a dependency away: another pod, or the rollout's end, serves
    the call. Otherwise it stays a fault (a method every release has, missing: a broken peer or proxy)."""
    details = details_of(error)
    # The caller's own channel made it up (circuit open, inbound deadline passed): the dependency said nothing.
    made_here = details.error_info is not None and details.error_info.domain == CHASSIS_DOMAIN
    if details.raw_status is not None and details.status_code == error.code().value[0] and not made_here:
        # Final for the call only if the dependency answered final (orders' accepted cancellation): relayed
        # without its pushback, the status would be retried by the relay's caller's channel, redoing what it says
        # is under way. A -1 alone is not final: it may only say the wait did not fit the relay's own short call
        # (the gateway's 2 s), and the interceptor weighs the status' RetryInfo against its caller's deadline.
        # Shed if the dependency counted it shed (its GRPC_MAX_CONCURRENT_RPCS, users' PASSWORD_HASHING_BUSY):
        # the relay's caller was refused for want of capacity, which the relay's availability SLO counts.
        # Retries spent if the relay's channel retried a transient answer (catalog's DATABASE_UNAVAILABLE as
        # much as a DEPENDENCY_UNAVAILABLE): its caller's channel retrying the relay too multiplied the attempts,
        # 16 calls to the dependency for one call.
        return errors.ReplayedError(
            details.raw_status,
            details.message,
            final=answered_final(error),
            shed=_shed(error, details),
            retries_spent=error.code() in TRANSIENT_CODES and answered_a_retry(error),
        )
    if error.code() in TRANSIENT_CODES or (method_is_new and error.code() is grpc.StatusCode.UNIMPLEMENTED):
        return dependency_unavailable(dependency, error)
    return error


def _shed(error: grpc.aio.AioRpcError, details: ErrorDetails) -> bool:
    """Whether a relayed answer was shed: marked so (SHED_ANSWER), or the chassis' own shedding status.
    A dependency of a release before the marker sends none, so during a rollout its shedding would go
    uncounted; its RESOURCE_EXHAUSTED SERVER_OVERLOADED still says so, as the relay read it before the
    marker, since no release ever answered that reason for anything but shedding."""
    if answered_shed(error):
        return True
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and details.reason == errors.SERVER_OVERLOADED


@contextlib.contextmanager
def relaying(dependency: str, *, method_is_new: bool = False) -> Iterator[None]:
    """Wraps calls to `dependency` so that a failed call raises what `relayed` says (`method_is_new` too),
    for the server interceptor to answer."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        answer = relayed(dependency, error, method_is_new=method_is_new)
        if answer is error:
            raise
        raise answer from None


def details_from(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> ErrorDetails:
    """`details_of` for a call's parts (a client interceptor sees a call, not an AioRpcError). Details that
    do not decode (a garbling proxy, a broken peer) count as none: the call failed with its status code, and
    a caller that falls back or retries on that code must still do so rather than fail on a DecodeError."""
    raw = None
    for key, value in trailing_metadata or ():
        if key == "grpc-status-details-bin":
            raw = value
    if raw is None:
        return ErrorDetails(code=code, message=message)
    raw_status = raw if isinstance(raw, bytes) else raw.encode()
    try:
        return _decoded(code, message, raw_status)
    except DecodeError:
        return ErrorDetails(code=code, message=message)


def _decoded(code: grpc.StatusCode, message: str, raw_status: bytes) -> ErrorDetails:
    status = status_pb2.Status.FromString(raw_status)
    info = None
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    retry_delay = None
    for detail in status.details:
        if detail.TypeName() == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.TypeName() == "google.rpc.BadRequest":
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
        elif detail.TypeName() == "google.rpc.RetryInfo":
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return ErrorDetails(
        code=code,
        message=status.message or message,
        error_info=info,
        field_violations=violations,
        retry_delay_seconds=retry_delay,
        raw_status=raw_status,
        status_code=status.code,
    )
