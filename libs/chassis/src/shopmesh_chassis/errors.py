"""The domain-error hierarchy.

Domain code raises these; it never imports grpc. The transport layer (`grpc_errors`) maps each class
to a gRPC status code with google.rpc details, so every service answers a client mistake the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: `field` is a path into the request (e.g. `items[2].quantity`)."""

    field: str
    description: str
    reason: str = ""


class DomainError(Exception):
    """Base of every error a domain may raise on purpose.

    `reason` is a stable UPPER_SNAKE_CASE identifier a client can branch on (sent as ErrorInfo.reason);
    `message` is for humans; `metadata` adds machine-readable context (ErrorInfo.metadata).
    `domain` defaults to the serving service's error domain (`shopmesh.<service>`).
    `outcome=False`: a refusal that is no outcome of the request, as a transient error is not: a state only a
    newer release can act on, which the contract says to retry once that release serves, or a rule that depends
    on the time (a card's expiry), which a retry of a request accepted earlier must not fail. An idempotency
    store keeps no record of it, so a retry under the same key runs the request again.
    """

    default_reason = "DOMAIN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str | None = None,
        outcome: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.domain = domain
        self.outcome = outcome


class InvalidArgument(DomainError):
    """The request itself is wrong, whatever the system's state (INVALID_ARGUMENT + BadRequest)."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str | None = None,
        outcome: bool = True,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, domain=domain, outcome=outcome)
        self.violations = tuple(violations)


class NotFound(DomainError):
    """A named entity does not exist (NOT_FOUND)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    """The entity a client tried to create exists already (ALREADY_EXISTS)."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation; retrying as is will not help."""

    default_reason = "FAILED_PRECONDITION"


class RetryHinted(DomainError):
    """An error that may tell its caller how soon another try is worth it: `retry_after_seconds` goes out as
    RetryInfo (`grpc_errors.to_rpc_status`); left out, it is the class' `default_retry_after_seconds`."""

    default_retry_after_seconds: float | None = None

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str | None = None,
        outcome: bool = True,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, domain=domain, outcome=outcome)
        self.retry_after_seconds = (
            self.default_retry_after_seconds if retry_after_seconds is None else retry_after_seconds
        )


# The RetryInfo of an ABORTED for a lost race on the same records (CONCURRENT_UPDATE): the race is over once the
# winner's transaction commits, milliseconds later, so a retry a tenth of a second on finds the records free,
# while clients refused together come back a little apart rather than at once into the same race.
CONFLICT_RETRY_AFTER_SECONDS = 0.1


class Aborted(RetryHinted):
    """A concurrency conflict; the client may retry the whole operation (ABORTED + RetryInfo).

    `retry_after_seconds` goes out as RetryInfo, as for the retryable errors: the contract (money.proto) tells
    a client that ABORTED is safe to retry, and the delay says how soon it is worth it, so every ABORTED has
    one: a lost race's (CONFLICT_RETRY_AFTER_SECONDS) unless the raiser knows better. Unlike Unavailable it
    is never `final`: a conflict says nothing about how long the caller's own deadline allows."""

    default_reason = "ABORTED"
    default_retry_after_seconds = CONFLICT_RETRY_AFTER_SECONDS


class Unauthenticated(DomainError):
    """The caller is not authenticated (UNAUTHENTICATED)."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """The caller is known but not allowed (PERMISSION_DENIED)."""

    default_reason = "PERMISSION_DENIED"


class _Retryable(RetryHinted):
    """`final=True`: the answer is final for this call, though a later call may fare better. gRPC's own
    retries (the chassis' service config retries idempotent methods on UNAVAILABLE, reading no details) must
    not send the call again at once: each attempt would redo the work the answer says is under way."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str | None = None,
        final: bool = False,
    ) -> None:
        super().__init__(
            message, retry_after_seconds=retry_after_seconds, reason=reason, metadata=metadata, domain=domain
        )
        self.final = final


class ResourceExhausted(_Retryable):
    """A quota or rate limit is used up (RESOURCE_EXHAUSTED + RetryInfo)."""

    default_reason = "RESOURCE_EXHAUSTED"


class Overloaded(ResourceExhausted):
    """RESOURCE_EXHAUSTED for want of the server's own capacity, not a quota of the caller's (users' hashing
    queue, as the chassis' GRPC_MAX_CONCURRENT_RPCS answers SERVER_OVERLOADED): the server failing its caller,
    so counted as shed (`shopmesh_grpc_server_shed_total`, which the server-errors alert and the availability
    SLO count) with an error status on the server span, whatever its reason, and marked shed for a relay
    (`grpc_errors.SHED_ANSWER`), which counts it too."""


class Unavailable(_Retryable):
    """A dependency or the service itself cannot answer now (UNAVAILABLE + RetryInfo)."""

    default_reason = "UNAVAILABLE"


# The reason of an UNAVAILABLE that a service answers because something it depends on is not answering. Its
# channel has retried the dependency already, so the server interceptor sends it with gRPC's "do not retry"
# pushback: a caller's channel retrying it too would multiply the attempts (not final: RetryInfo still says
# when to come back).
DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
# The reason of the RESOURCE_EXHAUSTED a server at its GRPC_MAX_CONCURRENT_RPCS sheds a call with: the server's
# failure, unlike a rate limit's RESOURCE_EXHAUSTED, which the client brought on itself.
SERVER_OVERLOADED = "SERVER_OVERLOADED"

# The transport cuts a metadata value past grpc_errors.MAX_METADATA_VALUE_BYTES (ending it in "…"), so that
# the error fits in a client's trailers; a list of ids cut there would end in an id that names nothing.
MAX_LISTED_IDS_BYTES = 1000


def listed_ids(ids: Sequence[str], *, key: str, count_key: str) -> dict[str, str]:
    """ErrorInfo metadata naming `ids`: under `key` the first ones whose comma-separated list fits in
    MAX_LISTED_IDS_BYTES (UTF-8), whole ids only; under `count_key` how many there are in all, which alone
    tells a client whether the list is whole."""
    listed: list[str] = []
    size = -1  # no comma before the first id
    for an_id in ids:
        size += len(an_id.encode()) + 1
        if size > MAX_LISTED_IDS_BYTES:
            break
        listed.append(an_id)
    return {key: ",".join(listed), count_key: str(len(ids))}


class ReplayedError(DomainError):
    """A stored error outcome replayed for a retried idempotent request, or a dependency's answer relayed.

    `status` is the serialized google.rpc.Status first sent; the server sends it again unchanged. `final`, as
    for Unavailable: it goes out with gRPC's "do not retry" pushback and the chassis' FINAL_ANSWER marker (a
    proxy relaying a dependency's answer that was final, `grpc_errors.answered_final`, as the gateway relays
    orders' accepted cancellation; a -1 without the marker is not final). `shed`: the dependency shed the call
    (`grpc_errors.answered_shed`: the chassis' SHED_ANSWER marker, whatever the status' reason, users'
    PASSWORD_HASHING_BUSY as well as SERVER_OVERLOADED; unmarked, SERVER_OVERLOADED still, as a release before
    the marker sends it: `grpc_errors.relayed`); the relaying server failed its caller for want of
    capacity all the same, so it counts the call as shed and marks its answer so in turn. `retries_spent`: the
    relay's channel retried the dependency's transient answer already (`grpc_errors.answered_a_retry`), so it
    goes out with gRPC's "do not retry" pushback, not final (RetryInfo still says when to come back), whatever
    its reason, as DEPENDENCY_UNAVAILABLE does.
    """

    def __init__(
        self, status: bytes, message: str, *, final: bool = False, shed: bool = False, retries_spent: bool = False
    ) -> None:
        super().__init__(message, reason="REPLAYED")
        self.status = status
        self.final = final
        self.shed = shed
        self.retries_spent = retries_spent


# Errors after which a retry with the same idempotency key should run the operation again.
TRANSIENT_ERRORS: tuple[type[DomainError], ...] = (Unavailable, Aborted, ResourceExhausted)
