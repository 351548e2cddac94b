"""Client channels with the chassis' resilience: default deadline, deadline propagation, retries
for idempotent methods (gRPC service-config retry policy), a circuit breaker, tracing, and helpers for
idempotency keys.

Which methods are retried is read from the contracts: a method is retried only when its proto declares
`option idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions
from grpc.aio import ClientCallDetails, Metadata
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.breaker import BreakerConfig, BreakerState, CircuitBreaker
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE
from shopmesh_chassis.grpc_errors import CHASSIS_DOMAIN, details_from, inbound_deadline_passed, local_error

IDEMPOTENCY_KEY = "idempotency-key"

# A breaker's openings and closings, one line each (never one per refused call): the gauge says a breaker is
# open, these say since when, which method of which target, and why.
BREAKER_LOGGER = "shopmesh.client"
log = logging.getLogger(BREAKER_LOGGER)

# Outcomes that say the target is unhealthy; anything else (including client errors) does not. Unless the
# target said so itself (see _answered_by_the_target).
BREAKER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

# Set by OutboundContextInterceptor for the breaker inside it (one task runs the chain): the call's own
# timeout when the inbound call's deadline cut it shorter, else None. Missing a deadline its caller cut
# short may say how impatient that caller was, not how healthy the target is: one client sending tiny
# deadlines must not open a healthy target's breaker for everyone.
_OWN_TIMEOUT_CUT_BY_CALLER: ContextVar[float | None] = ContextVar("shopmesh_own_timeout_cut_by_caller", default=None)
# Such a deadline proves nothing when shorter than this many times the target's usual latency (a running
# average of its successful calls). Longer, the target had ample time: a gateway's 300 ms budget passed on
# to a catalog that answers in 2 ms still opens the breaker when catalog hangs. Before any success is seen,
# a deadline cut below half the call's own timeout proves nothing.
_USUAL_LATENCY_MULTIPLE = 10.0
_UNKNOWN_LATENCY_CUT = 0.5
_LATENCY_WEIGHT = 0.1
# A call cancelled by its caller this close to its deadline (a share of the timeout) was cut short by a
# timer armed alongside the deadline: the target had the call for all of it, as for DEADLINE_EXCEEDED.
_AT_THE_DEADLINE = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy (gRFC A6), applied to idempotent methods only."""

    # 1: no retries (NO_RETRIES).
    max_attempts: int = 4
    initial_backoff_seconds: float = 0.05
    max_backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    # CANCELLED too: a server shutting down answers CANCELLED the calls that reached it but that it never
    # started (gRPC core zombifies calls not yet matched to a handler, grpc/grpc#41785; the chassis' drain
    # cannot avoid it), so a restart under load would cut them although they never ran. gRPC retries only a
    # status the server sent: a caller's own cancellation (or deadline) is never retried. Non-idempotent
    # methods get no retry policy at all, so nothing is ever retried for them.
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE", "CANCELLED")
    # Retry throttling: a channel stops retrying when most recent calls failed (no retry storms). Each
    # failed attempt takes a token, each success gives back token_ratio, and retries stop at half the
    # tokens. A target shutting down fails every call it holds at once (CANCELLED above), so half the
    # tokens must exceed the calls a busy channel has in flight: with 10, 8 concurrent callers left a third
    # of a restart's cut calls unretried (tests/mesh/test_restart_under_load.py). A target that stays down
    # still stops being retried after ~50 failed attempts, and its breaker opens after 5 failed calls.
    throttle_max_tokens: int = 100
    throttle_token_ratio: float = 0.1


def is_idempotent(method: MethodDescriptor) -> bool:
    level = method.GetOptions().idempotency_level
    return level in (MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT)


# A channel that retries nothing: for a caller that is itself the one layer retrying its calls (orders' saga
# steps), or whose call has a fallback instead (the gateway's optional recommendations).
NO_RETRIES = RetryPolicy(max_attempts=1)


def service_config(services: Iterable[ServiceDescriptor], retry: RetryPolicy | None = None) -> str:
    """The JSON service config that retries exactly the idempotent methods of `services`."""
    retry = retry or RetryPolicy()
    names = [
        {"service": service.full_name, "method": method.name}
        for service in services
        for method in service.methods
        if is_idempotent(method)
    ]
    config: dict[str, Any] = {
        "retryThrottling": {
            "maxTokens": retry.throttle_max_tokens,
            "tokenRatio": retry.throttle_token_ratio,
        }
    }
    # gRPC refuses a retry policy of fewer than 2 attempts (the channel fails every call): one attempt is
    # no policy at all.
    if names and retry.max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": f"{retry.initial_backoff_seconds}s",
                    "maxBackoff": f"{retry.max_backoff_seconds}s",
                    "backoffMultiplier": retry.backoff_multiplier,
                    "retryableStatusCodes": list(retry.retryable_status_codes),
                },
            }
        ]
    return json.dumps(config)


async def _answered_by_the_target(call: grpc.aio.UnaryUnaryCall[Any, Any], code: grpc.StatusCode) -> bool:
    """Whether a failed call's status is the target's own answer: it carries the target's ErrorInfo (orders'
    UNAVAILABLE DEPENDENCY_UNAVAILABLE while payments is away). Then the target is up and answering, and
    the status says something about what lies behind it; a connection failure, a proxy's UNAVAILABLE
    (Envoy's has no details) or an INTERNAL from an unexpected exception carries none. DATABASE_UNAVAILABLE
    is the target's own answer about itself, though: every call it gets fails so, and failing fast gives its
    database room to come back."""
    info = details_from(code, await call.details() or "", await call.trailing_metadata()).error_info
    return info is not None and info.domain != CHASSIS_DOMAIN and info.reason != DATABASE_UNAVAILABLE


Continuation = Callable[[ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]]


def _unsendable_key(metadata: Metadata) -> str | None:
    """The first key whose value gRPC refuses to send: outside printable ASCII (%x20-%x7E) for a text key."""
    for key, value in metadata:
        if not key.endswith("-bin") and not (isinstance(value, str) and value.isascii() and value.isprintable()):
            return str(key)
    return None


class OutboundContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Every call gets a deadline — the caller's, else the default, never later than the inbound call's —
    and carries who is calling: this service (`x-caller`) and the end user it acts for (`x-user-id`)."""

    def __init__(self, default_timeout_seconds: float, caller: str | None) -> None:
        self._default = default_timeout_seconds
        self._caller = caller

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        timeout = client_call_details.timeout
        if timeout is None:
            timeout = self._default
        inbound = call_context.current()
        remaining = call_context.inbound_time_remaining()
        if remaining is not None and remaining <= 0:
            raise inbound_deadline_passed()
        # Set for every call, never left from another: the chain of one call runs in a task of its own.
        _OWN_TIMEOUT_CUT_BY_CALLER.set(timeout if remaining is not None and remaining < timeout else None)
        if remaining is not None:
            timeout = min(timeout, remaining)
        metadata = Metadata(*(client_call_details.metadata or ()))
        if self._caller and not metadata.get_all(call_context.CALLER):
            metadata.add(call_context.CALLER, self._caller)
        if inbound is not None and inbound.user_id and not metadata.get_all(call_context.USER_ID):
            metadata.add(call_context.USER_ID, inbound.user_id)
        unsendable = _unsendable_key(metadata)
        if unsendable is not None:
            # grpc.aio fails such a call in a task nobody awaits, and the caller waits for its deadline (or
            # for ever): a value from outside (a token's subject) must never hang the call that carries it.
            raise local_error(
                grpc.StatusCode.INTERNAL,
                f"metadata {unsendable!r} holds a value gRPC cannot send",
                errors.DomainError("unsendable metadata", reason="UNSENDABLE_METADATA"),
            )
        details = ClientCallDetails(
            client_call_details.method,
            timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


class CancelAtTheTargetInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Innermost: a call its caller cancels is cancelled at the target too.

    A caller awaiting `stub.Method(...)` awaits grpc.aio's interceptor task until the interceptors return the
    call; the breaker and OpenTelemetry's interceptor do so only once they have awaited `call.code()`. The
    caller's `task.cancel()` then cancels that task's `await call.code()` (a wait for the status), not the
    call: the target kept working until the deadline, holding a max-concurrent-RPCs slot for an answer
    nobody would read. (Without such interceptors the caller awaits the call itself, and grpc.aio cancels
    it.) Awaiting the status here first, nearest the call, makes this the await the cancellation lands on,
    with the call at hand to cancel; the interceptors outside see the caller's CancelledError as before."""

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        try:
            await call.code()
        except asyncio.CancelledError:
            call.cancel()
            raise
        return call


class SpanEndingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Wraps OpenTelemetry's unary client interceptor so that its CLIENT span ends however the call ends.

    That interceptor opens the span with end_on_exit=False and ends it only in a done-callback it adds once
    `await call.code()` returned (open-telemetry/opentelemetry-python-contrib#3271). A call its caller cancels
    (the gateway's TaskGroup and budget timeouts, a caller that hangs up) raises CancelledError from that await,
    and an error raised inside the chain (the breaker's CIRCUIT_OPEN) passes it by: the span was never ended, so
    never exported, and the target's server span, whose parent it is, became a root of a broken trace."""

    def __init__(self, traced: grpc.aio.UnaryUnaryClientInterceptor) -> None:
        self._traced = traced

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        outside = trace.get_current_span()
        opened: list[trace.Span] = []

        async def within_the_span(details: ClientCallDetails, request: Any) -> grpc.aio.UnaryUnaryCall[Any, Any]:
            # OpenTelemetry calls this with its span current; a call it does not trace keeps the caller's.
            span = trace.get_current_span()
            if span is not outside:
                opened.append(span)
            return await continuation(details, request)

        try:
            return await self._traced.intercept_unary_unary(within_the_span, client_call_details, request)
        except BaseException as failure:
            for span in opened:
                if not span.is_recording():  # ended already, or never sampled
                    continue
                if isinstance(failure, asyncio.CancelledError):
                    # As the server counts a call its caller stopped waiting for: CANCELLED, not an error of
                    # the target's.
                    span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
                elif isinstance(failure, grpc.aio.AioRpcError):
                    # Its status is on the span already, as the error's str(): several lines, gRPC's
                    # debug_error_string among them. The code and details are what a trace view needs.
                    span.set_status(trace.StatusCode.ERROR, f"{failure.code().name}: {failure.details()}")
                elif not isinstance(failure, grpc.RpcError):
                    span.record_exception(failure)
                    span.set_status(trace.StatusCode.ERROR, f"{type(failure).__name__}: {failure}")
                span.end()
            raise


@dataclass
class _MethodBreaker:
    breaker: CircuitBreaker
    # The method's usual latency: a running average of its successful calls' durations (seconds). Per
    # method: users answers GetJwks in milliseconds and Login in half a second of argon2.
    usual_latency: float | None = None
    # When (on the breaker's clock) it opened from closed, None while closed: failed probes reopen it within
    # one outage, which the closing's line measures from its start.
    opened_at: float | None = None


def method_names(services: Iterable[ServiceDescriptor]) -> list[str]:
    """The full gRPC method names (`/package.Service/Method`) a channel built for `services` calls."""
    return [f"/{service.full_name}/{method.name}" for service in services for method in service.methods]


class BreakerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Fails fast with UNAVAILABLE (reason CIRCUIT_OPEN, RetryInfo) while the called method's breaker is open.

    One breaker per method, not per target: a target can be healthy for some methods and swamped for
    others (users' Login waiting for argon2 while GetJwks answers at once), and one method's timeouts must
    not refuse the others for everyone."""

    def __init__(
        self, target: str, breakers: dict[str, CircuitBreaker], new_breaker: Callable[[], CircuitBreaker]
    ) -> None:
        self._target = target
        # Shared with the channel, which reports it; methods outside the channel's services (none, when the
        # channel is used as meant) get a breaker on their first call, so the dict only grows with method
        # names written in the code, never with anything a request carries.
        self.breakers = breakers
        self._new_breaker = new_breaker
        self._methods = {name: _MethodBreaker(breaker) for name, breaker in breakers.items()}

    def _method(self, name: str) -> _MethodBreaker:
        method = self._methods.get(name)
        if method is None:
            breaker = self._new_breaker()
            method = self._methods[name] = _MethodBreaker(breaker)
            self.breakers[name] = breaker
        return method

    @staticmethod
    def _too_short_to_tell(method: _MethodBreaker, timeout: float | None, own_timeout: float | None) -> bool:
        """Whether missing this deadline, which its inbound caller cut from `own_timeout`, says nothing
        about the target (see _USUAL_LATENCY_MULTIPLE)."""
        if timeout is None or own_timeout is None:
            return False
        if method.usual_latency is None:
            return timeout < own_timeout * _UNKNOWN_LATENCY_CUT
        return timeout < method.usual_latency * _USUAL_LATENCY_MULTIPLE

    def _record(self, name: str, method: _MethodBreaker, outcome: Callable[[], None], failure: str = "") -> None:
        """Report a call's outcome to the method's breaker, logging the transition it makes, if any: opened
        from closed (a WARNING) or closed again (an INFO). A failed probe reopening it is the same outage."""
        breaker = method.breaker
        before = breaker.observed_state()
        outcome()
        after = breaker.observed_state()
        extra = {"target": self._target, "method": name}
        if before is BreakerState.CLOSED and after is not BreakerState.CLOSED:
            method.opened_at = breaker.clock()
            threshold = breaker.config.failure_threshold
            log.warning(
                "circuit opened for %s at %s: %d calls in a row failed, the last %s; its calls are refused for"
                " %g s, then one probe is let through",
                name,
                self._target,
                threshold,
                failure,
                breaker.config.reset_timeout_seconds,
                extra={**extra, "failures": threshold, "last_failure": failure},
            )
        elif before is not BreakerState.CLOSED and after is BreakerState.CLOSED:
            opened_for = 0.0 if method.opened_at is None else breaker.clock() - method.opened_at
            method.opened_at = None
            log.info(
                "circuit closed for %s at %s: a call got through after %.0f s open",
                name,
                self._target,
                opened_for,
                extra=extra,
            )

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        raw_name = client_call_details.method
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        method = self._method(name)
        breaker = method.breaker
        # Whether this call takes a half-open probe slot: only then may it give one back (a call sent while
        # the breaker was closed, ending without a verdict now, would free the running probe's slot).
        probing = breaker.state is BreakerState.HALF_OPEN
        if not breaker.allow():
            raise local_error(
                grpc.StatusCode.UNAVAILABLE,
                f"circuit open for {name} at {self._target}",
                errors.Unavailable(
                    f"circuit open for {name} at {self._target}",
                    reason="CIRCUIT_OPEN",
                    retry_after_seconds=breaker.retry_after(),
                    metadata={"target": self._target, "method": name},
                ),
            )
        timeout = client_call_details.timeout
        clock = breaker.clock
        started = clock()
        deadline = None if timeout is None else started + timeout * (1 - _AT_THE_DEADLINE)
        callers_deadline = self._too_short_to_tell(method, timeout, _OWN_TIMEOUT_CUT_BY_CALLER.get())
        try:
            call = await continuation(client_call_details, request)
            code = await call.code()
        except BaseException:
            if deadline is not None and clock() >= deadline and not callers_deadline:
                # Cut short by the caller's own timer at the call's deadline (armed with it, or both fired in
                # one pass of a stalled loop, the caller's first): the target let the deadline pass, a
                # failure as much as DEADLINE_EXCEEDED is.
                self._record(name, method, breaker.record_failure, "cut short at its deadline")
            elif probing:
                # Cancelled by our caller in time: says nothing about the target; free the probe slot.
                breaker.release_probe()
            raise
        if code == grpc.StatusCode.OK:
            seconds = clock() - started
            usual = method.usual_latency
            method.usual_latency = seconds if usual is None else usual + _LATENCY_WEIGHT * (seconds - usual)
            self._record(name, method, breaker.record_success)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and callers_deadline:
            if probing:
                breaker.release_probe()
        elif code in BREAKER_FAILURES and not await _answered_by_the_target(call, code):
            self._record(name, method, breaker.record_failure, code.name)
        else:
            self._record(name, method, breaker.record_neutral)
        return call


@dataclass(frozen=True)
class ClientOptions:
    default_timeout_seconds: float = 5.0
    # This service's name, sent as `x-caller` (idempotency scopes, logs); None sends nothing.
    caller: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig | None = field(default_factory=BreakerConfig)
    tracing: bool = True


class ResilientChannel:
    """A grpc.aio channel to one target with the chassis' client interceptors; use it to build stubs of
    `services`.

    Each method of `services` gets a circuit breaker of its own, made up front from `options.breaker`
    (`breakers`, keyed by full method name); `breaker` instead puts every method behind that one breaker
    (tests that drive its clock).

    Services talk plaintext to their sidecar; `credentials` (and `channel_options`, added to the chassis'
    own) make a TLS channel instead: a tool or test calling a meshed service's sidecar as one of its
    callers (shopmesh_platform.mesh.identity.mtls_as)."""

    def __init__(
        self,
        target: str,
        services: Sequence[ServiceDescriptor],
        options: ClientOptions | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        tracer_provider: TracerProvider | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        options = options or ClientOptions()
        self.target = target
        config = options.breaker

        def new_breaker() -> CircuitBreaker:
            return breaker or CircuitBreaker(config)

        self.breakers: dict[str, CircuitBreaker] = {}
        if breaker is not None or config is not None:
            self.breakers = {name: new_breaker() for name in method_names(services)}
        interceptors: list[grpc.aio.ClientInterceptor] = [
            OutboundContextInterceptor(options.default_timeout_seconds, options.caller)
        ]
        if options.tracing:
            # The contracts declare unary methods only: the unary-unary interceptor is the one whose span
            # can leak, and the one wrapped.
            interceptors.extend(
                SpanEndingInterceptor(traced) if isinstance(traced, grpc.aio.UnaryUnaryClientInterceptor) else traced
                for traced in aio_client_interceptors(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
            )
        if breaker is not None or config is not None:
            interceptors.append(BreakerInterceptor(target, self.breakers, new_breaker))
        # Last: grpc.aio runs the interceptors in order, the last one nearest the call.
        interceptors.append(CancelAtTheTargetInterceptor())
        channel_args: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(services, options.retry)),
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 0),
            *channel_options,
        ]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=channel_args, interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=channel_args, interceptors=interceptors)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> ResilientChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def idempotency_metadata(key: str, metadata: Iterable[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `key` as the idempotency key (plus any other pairs given)."""
    if not key or len(key) > 255:
        raise ValueError("an idempotency key must have 1 to 255 characters")
    return (*tuple(metadata), (IDEMPOTENCY_KEY, key))


def idempotency_key_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The idempotency key an inbound call carries, if any; INVALID_ARGUMENT (IDEMPOTENCY_KEY_INVALID) for a
    call that carries the header more than once with different values.

    Taking one of them would name the operation by whichever came first: a retry whose headers a client or a
    proxy put in another order would run it again, a second order and a second charge.
    """
    values = {
        value if isinstance(value, str) else value.decode()
        for key, value in context.invocation_metadata() or ()
        if key == IDEMPOTENCY_KEY
    }
    if len(values) > 1:
        raise errors.InvalidArgument(
            "send one idempotency-key header",
            [errors.FieldViolation(IDEMPOTENCY_KEY, "sent more than once with different values", "DUPLICATE")],
            reason="IDEMPOTENCY_KEY_INVALID",
        )
    return next(iter(values), None)
