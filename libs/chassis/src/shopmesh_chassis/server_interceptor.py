"""The chassis' server interceptor: the server span, metrics, inbound deadline capture and error mapping,
once for all.

It must be the innermost interceptor: it caches the wrapped handler per method, which is only sound
when nothing after it in the chain can change what `continuation` returns.

The server span is started here rather than by opentelemetry-instrumentation-grpc's aio server
interceptor (the client side still uses the library). Measured with `make bench-chassis`, the library's
interceptor cost ~115 µs per call even when it recorded nothing: per call it rebuilds the method handler,
copies the metadata into dicts and parses the peer address before the sampler is asked. Here the W3C
context is read from the metadata the chassis scans anyway, the span has the library's name, kind and
attributes (OpenTelemetry's RPC conventions), and the per-call attributes are computed only when the
span records.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.db_errors import as_domain_error
from shopmesh_chassis.errors import FieldViolation
from shopmesh_chassis.grpc_errors import (
    FINAL_ANSWER,
    PREVIOUS_ATTEMPTS,
    RETRIED_ANSWER,
    RETRY_PUSHBACK,
    SHED_ANSWER,
    TRANSIENT_CODES,
    dependency_unavailable,
    details_from,
    internal_status,
    status_code_for,
    to_grpc_status,
    to_rpc_status,
)
from shopmesh_chassis.metrics import MethodMetrics, ServerMetrics
from shopmesh_chassis.pagination import INVALID_PAGE_TOKEN
from shopmesh_chassis.text_fields import NOT_UTF8, check_no_nul, invalid_utf8_fields
from shopmesh_chassis.tracing import UNVOUCHED_PARENT, current_trace_id

log = logging.getLogger("shopmesh.server")

_CODES = {code.value[0]: code for code in grpc.StatusCode}

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# A streaming handler of grpc.aio: a coroutine (writing to its context, or answering one message) or an async
# generator of its responses.
StreamingBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


# Server span statuses that are errors (OpenTelemetry's gRPC conventions: the server's own failures).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _MetadataGetter(Getter[tuple[Any, ...]]):
    """Reads W3C headers straight from gRPC's metadata tuple, without building a dict per call."""

    def get(self, carrier: tuple[Any, ...], key: str) -> list[str] | None:
        values = [value if isinstance(value, str) else bytes(value).decode() for name, value in carrier if name == key]
        return values or None

    def keys(self, carrier: tuple[Any, ...]) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _MetadataGetter()


def _peer_attributes(peer: str) -> dict[str, str]:
    """`ipv4:127.0.0.1:57284` / `ipv6:[::1]:57284` → net.peer.* attributes, as the library sets them."""
    if peer.startswith("unix:") or ":" not in peer:
        return {}
    ip, _, port = peer.split(",")[0].split(":", 1)[1].rpartition(":")
    attributes = {"net.peer.ip": ip, "net.peer.port": port}
    if ip in ("[::1]", "127.0.0.1"):
        attributes["net.peer.name"] = "localhost"
    return attributes


# Health checks are never shed: a kubelet probe refused under load would restart a busy pod (and pile its
# calls onto the others) or take it out of the endpoints, which is load balancing's job, not the probe's. Nor
# traced: the kubelet probes every pod every few seconds, thousands of one-span traces that say nothing.
_HEALTH = "/grpc.health.v1.Health/"

_DO_NOT_RETRY = ((RETRY_PUSHBACK, "-1"),)
# A final answer goes out with the pushback gRPC's retries read and the marker a relay reads (`answered_final`).
_FINAL = (*_DO_NOT_RETRY, (FINAL_ANSWER, "1"))
# A shed answer goes out with the marker a relay reads (`answered_shed`) to count its own call as shed.
_SHED = ((SHED_ANSWER, "1"),)
# An answer to a retry attempt goes out with the marker a relay reads (`answered_a_retry`): its channel's retries
# of the call are spent.
_RETRIED = ((RETRIED_ANSWER, "1"),)

# How long a shed caller is asked to wait: about the time a busy server needs to finish a call or two.
SHED_RETRY_AFTER_SECONDS = 0.1

# Streaming calls (health Watch, reflection) count against the in-flight limit as unary ones do, and may hold
# at most 1/STREAMS_SHARE of it (at least one): a Watch holds its place for its whole life, so without a share
# of their own, watchers opened by the hundred would shed every unary call. Watchers are few (a client-side
# health checker per client subchannel; kubelets and meshes probe with Check, never shed), so 100 of the
# default 1,000 is ample, and the other 900 stay the unary calls'.
STREAMS_SHARE = 10

# go-grpc-prometheus' grpc_type of each kind of streaming method.
_SERVER_STREAM, _CLIENT_STREAM, _BIDI_STREAM = "server_stream", "client_stream", "bidi_stream"


class _Limit(enum.Enum):
    """A limit a call met and was shed at, by how its refusal names what it counts."""

    CALLS = "calls"
    STREAMS = "streaming calls"


class ChassisServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: ServerMetrics,
        error_domain: str,
        tracer_provider: TracerProvider | None = None,
        max_in_flight: int | None = None,
        follows_trace_decision_of: Callable[[str], bool] | None = None,
    ) -> None:
        self._metrics = metrics
        # None when every caller decides (an internal service): then no context.peer() on a traced call.
        self.follows_trace_decision_of = follows_trace_decision_of
        self._domain = error_domain
        self._tracer = trace.get_tracer("shopmesh_chassis.server", tracer_provider=tracer_provider)
        # The wrapped handlers of the methods served; never of unknown names, which any client can make up
        # by the million (each answered UNIMPLEMENTED, and remembered, the cache grew without bound).
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        # Load shedding here rather than with grpc.aio.server(maximum_concurrent_rpcs=...): gRPC's limiter
        # refuses health checks too, sends no ErrorInfo / RetryInfo, and runs before any interceptor, so
        # the refused calls are missing from the metrics.
        self._max_in_flight = max_in_flight
        self._max_streams = None if max_in_flight is None else max(1, max_in_flight // STREAMS_SHARE)
        # Every call admitted (streams too), and the streams among them.
        self._in_flight = 0
        self._streams = 0

    @property
    def max_in_flight(self) -> int | None:
        """The calls this interceptor admits into handlers at once (None: unbounded)."""
        return self._max_in_flight

    @property
    def max_streams(self) -> int | None:
        """How many of those may be streaming calls (None: unbounded)."""
        return self._max_streams

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.request_streaming or handler.response_streaming:
            return self._wrap_streaming(method, handler)
        if handler.unary_unary is None:
            return handler
        behavior = cast(UnaryBehavior, handler.unary_unary)
        metrics = self._metrics.for_method(method)
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        # The headers the configured propagators read: without any of them there is no context to extract.
        fields = frozenset(propagate.get_global_textmap().fields)
        # Whether this method's calls count against the in-flight limit (and may be shed).
        limited = self._max_in_flight is not None and not method.startswith(_HEALTH)
        traced = not method.startswith(_HEALTH)
        parse = handler.request_deserializer
        response_type = _response_type(method)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata: tuple[Any, ...] = tuple(context.invocation_metadata() or ())
            parent = propagate.extract(metadata, getter=_GETTER) if any(k in fields for k, _ in metadata) else None
            follows = self.follows_trace_decision_of
            if parent is not None and follows is not None and not follows(context.peer()):
                parent = otel_context.set_value(UNVOUCHED_PARENT, True, parent)
            # start_span + attach rather than start_as_current_span: two context-manager layers fewer on
            # every call (the span is ended and detached in the finally below either way).
            span = (
                self._tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)
                if traced
                else trace.INVALID_SPAN
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                if span.is_recording():
                    span.set_attributes(_peer_attributes(context.peer()))
                return await self._handle(
                    behavior, metrics, method, parse, request, context, metadata, span, limited, response_type
                )
            finally:
                otel_context.detach(token)
                span.end()

        # The request's bytes are parsed in _handle: grpcio would answer a body that is no such message
        # UNKNOWN, naming the parser's exception, with no details, before any of this ran.
        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    def _wrap_streaming(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """A streaming method's handler, its requests parsed and checked as a unary call's are, and the call
        counted against the in-flight limit, shed past it or past the streams' share of it as a unary call is,
        and counted started and handled as one is (health Watch, reflection: shopmesh's own APIs are unary, so
        spans, the latency histogram and the in-flight gauge are for those only; a stream's length says nothing
        of the server's speed).

        grpcio answered a request that is no message UNKNOWN, naming the parser's exception, with no details;
        and a Watch of a name with a NUL went unrefused (Check's request is checked like any unary one). A
        client-streaming handler takes its requests from the iterator it is given: one reading them with
        `context.read()` would get their bytes (none does: health and reflection iterate)."""
        parse = handler.request_deserializer
        if parse is None:
            return handler
        serialize = handler.response_serializer

        def checked(body: bytes) -> Any:
            try:
                request = _parsed(parse, body)
                check_no_nul(request)
            except errors.InvalidArgument as refusal:
                raise _Refused(refusal) from None
            return request

        async def each_checked(bodies: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for body in bodies:
                yield checked(body)

        async def answered(respond: Callable[[], Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            """What `respond` answers, its refusal of a request answered as the unary path's is: trailers-only,
            unless the handler had streamed responses before the request it refused came."""
            try:
                outcome = respond()
                if inspect.isawaitable(outcome):
                    return await outcome
                # The wrapper is a coroutine, so grpcio sends what a generator yields only if it is written here.
                if inspect.isasyncgen(outcome):
                    async for response in outcome:
                        await context.write(response)
                    return None
                if inspect.isgenerator(outcome):
                    for response in outcome:
                        await context.write(response)
                    return None
                return outcome
            except _Refused as refused:
                status = to_grpc_status(to_rpc_status(refused.error, self._domain))
                try:
                    await self._abort(context, status)
                except _Unsent as unsent:
                    raise unsent.failure from None

        # Each kind of streaming handler, rebuilt around its behavior: one request message, or an iterator of them.
        kinds: list[tuple[Any, Callable[..., grpc.RpcMethodHandler[Any, Any]], bool, str]] = [
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler, False, _SERVER_STREAM),
            (handler.stream_unary, grpc.stream_unary_rpc_method_handler, True, _CLIENT_STREAM),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler, True, _BIDI_STREAM),
        ]
        picked = next((kind for kind in kinds if kind[0] is not None), None)
        if picked is None:
            return handler
        behavior, rebuilt, streams_in, rpc_type = picked
        inner = cast(StreamingBehavior, behavior)
        metrics = self._metrics.for_method(method, rpc_type)

        async def wrapped(received: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            met = self._admit(stream=True)
            if met is not None:
                return await self._shed_stream(metrics, context, met)
            # Counted started and handled as a unary call is: with the shed ones alone counted, one shed Watch
            # was all of its method's calls to ShopmeshServerErrors. Not timed: a Watch lives for hours, and the
            # latency histogram (ShopmeshSlowCalls, the SLO) is about unary calls.
            metrics.started.inc()
            code = grpc.StatusCode.OK
            try:
                # Parsed inside `answered`, so that a refused request is answered as one.
                # A client-streaming handler's one response, None from the others (they wrote theirs).
                response = await answered(
                    lambda: inner(each_checked(received) if streams_in else checked(received), context), context
                )
                code = _code_of(context, grpc.StatusCode.OK)
                return response
            except asyncio.CancelledError:
                # Its caller ended it, by a cancel or at its deadline: a stream lasts until its caller stops it
                # (a Watch has no answer to be late with), so its deadline is no server's miss, as a unary
                # call's is (cancelled_call_code), and CANCELLED is no server error code.
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except BaseException:
                # grpcio answers an exception escaping a handler UNKNOWN; but one raised because the caller has
                # gone (a write to a stream it cancelled: ExecuteBatchError) is its ending, not a server error, as
                # for a unary call.
                ended = _caller_ended(context) or context.done()
                code = grpc.StatusCode.CANCELLED if ended else grpc.StatusCode.UNKNOWN
                raise
            finally:
                # Once the handler has returned, its ending included (a reset stream's too): the bound on
                # handlers a rapid reset leaves running holds for streams as for unary calls.
                self._ended(metrics, code, held=True, stream=True)

        return rebuilt(wrapped, response_serializer=serialize)

    async def _handle(
        self,
        behavior: UnaryBehavior,
        metrics: MethodMetrics,
        method: str,
        parse: Callable[[bytes], Any] | None,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        metadata: tuple[Any, ...],
        span: trace.Span,
        limited: bool,
        response_type: type[Message] | None,
    ) -> Any:
        token = call_context.enter(context.time_remaining(), metadata)
        metrics.started.inc()
        metrics.in_flight.inc()
        code = grpc.StatusCode.OK
        start = time.perf_counter()
        met = self._admit(stream=False) if limited else None
        # Shed: here, by the handler (an errors.Overloaded), or by a dependency whose answer is
        # relayed (a ReplayedError `shed=True`: it came marked SHED_ANSWER or, unmarked, RESOURCE_EXHAUSTED
        # SERVER_OVERLOADED, a release before the marker: grpc_errors' `_shed`): the server's failure, under a
        # code that a rate limit answers too, so counted apart (ServerMetrics' shed counter) and marked so for a
        # relay in turn. The span's error says why, by the refusal's own reason.
        shed = False
        shed_reason = ""
        try:
            try:
                if met is not None:
                    raise self._overloaded(met)
                if parse is not None:
                    request = _parsed(parse, request)
                check_no_nul(request)
                response = await behavior(request, context)
                # A handler may set its code and return, a response or None (grpc.aio sends that code and no
                # message): answered and counted under that code.
                code = _code_of(context, grpc.StatusCode.OK)
                if code is grpc.StatusCode.OK and response_type is not None and not isinstance(response, response_type):
                    # grpcio's serializer would fail on it after this counted OK: the caller got UNKNOWN
                    # naming the exception, while the metrics and the span said OK.
                    raise TypeError(f"{method} returned {type(response).__name__}, not {response_type.__name__}")
                return response
            except errors.ReplayedError as exc:
                stored = status_pb2.Status.FromString(exc.status)
                code = _CODES.get(stored.code, grpc.StatusCode.UNKNOWN)
                # Only as RESOURCE_EXHAUSTED, as every shed call is: the alert's and the SLO's queries count a shed
                # call once because its code is no server error code.
                shed = exc.shed and code is grpc.StatusCode.RESOURCE_EXHAUSTED
                if shed:
                    shed_reason = _reason_of(stored) or code.name
                await self._abort(
                    context, to_grpc_status(stored), final=exc.final, shed=shed, retries_spent=exc.retries_spent
                )
            except errors.DomainError as exc:
                code = status_code_for(exc)
                shed = isinstance(exc, errors.Overloaded)
                shed_reason = exc.reason
                final = getattr(exc, "final", False)
                await self._abort(context, to_grpc_status(to_rpc_status(exc, self._domain)), final=final, shed=shed)
            except grpc.aio.AbortError:
                # The handler aborted by itself (e.g. a library servicer); keep its status.
                code = _code_of(context)
                raise
            except asyncio.CancelledError:
                if not _caller_ended(context):
                    # Not the call's cancellation: the handler awaited something another party cancelled (a call on
                    # a channel being closed at shutdown, a shared task stopped). Re-raised, grpc.aio would take it
                    # for the caller's and send no status: the caller would wait until its deadline, or for ever.
                    log.warning("work of %s was cancelled inside the server", method, exc_info=True)
                    interrupted = errors.Unavailable("the call's work was interrupted; retry", reason="INTERRUPTED")
                    code = grpc.StatusCode.UNAVAILABLE
                    await self._abort(context, to_grpc_status(to_rpc_status(interrupted, self._domain)))
                    return None
                code = cancelled_call_code(context.time_remaining())
                raise
            except grpc.aio.AioRpcError as exc:
                code = await self._dependency_failed(context, method, exc)
            except Exception as exc:
                mapped = as_domain_error(exc)
                if mapped is not None:
                    # The database is away or lost a race: say so (UNAVAILABLE / ABORTED), as the contracts do.
                    log.warning("database trouble in %s: %s", method, exc, extra={"grpc_method": method})
                    code = status_code_for(mapped)
                    await self._abort(context, to_grpc_status(to_rpc_status(mapped, self._domain)))
                    return None
                chosen = context.code()
                if (
                    isinstance(exc, NotImplementedError)
                    and isinstance(chosen, grpc.StatusCode)
                    and chosen is not grpc.StatusCode.OK
                ):
                    # The handler set its answer, then raised to end (grpc's generated base methods: UNIMPLEMENTED,
                    # then NotImplementedError); grpcio keeps that code too. INTERNAL and a traceback at ERROR hid
                    # the code it chose, and counted a method left unimplemented as a crash. Any other exception
                    # is a crash whatever code was set before it: INTERNAL, with its traceback.
                    log.warning(
                        "%s set %s, then raised %s: answered %s",
                        method,
                        chosen.name,
                        type(exc).__name__,
                        chosen.name,
                        extra={"grpc_method": method},
                    )
                    code = chosen
                    answer = status_pb2.Status(code=chosen.value[0], message=context.details() or "")
                    await self._abort(context, to_grpc_status(answer))
                    return None
                code = grpc.StatusCode.INTERNAL
                await self._abort(context, _internal(span, exc, method, "unexpected error in %(method)s"))
        except grpc.aio.AbortError:
            raise
        except _Unsent as unsent:
            # The call ended before its answer went out (its deadline passed, its caller cancelled): nothing to
            # answer, and grpcio takes the failure quietly, as it always had it.
            raise unsent.failure from None
        except Exception as failure:
            # The answer itself could not be built (a domain error with metadata that is not text, a garbled
            # relayed status): escaping, grpcio would answer UNKNOWN naming the exception, and the metrics
            # would count the code the mapping was to send.
            code = grpc.StatusCode.INTERNAL
            shed = False
            status = _internal(
                span, failure, method, "could not answer the error of %(method)s (trace_id=%(trace_id)s)"
            )
            # Straight to grpcio, not through _abort: it is what failed to build or send the first answer.
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            metrics.in_flight.dec()
            metrics.handling.observe(time.perf_counter() - start)
            self._ended(metrics, code, held=limited and met is None, stream=False, shed=shed)
            call_context.leave(token)
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in _SERVER_ERRORS:
                    span.set_status(trace.StatusCode.ERROR, code.name)
                elif shed:
                    span.set_status(trace.StatusCode.ERROR, shed_reason)

    def _admit(self, *, stream: bool) -> _Limit | None:
        """Take a slot of the in-flight limit (a stream: of the streams' share of it too), or name the limit met
        (the loop is one thread: no lock). A stream that meets both is told of the streams' share: it would
        still meet that one with the whole limit free."""
        if stream and self._max_streams is not None and self._streams >= self._max_streams:
            return _Limit.STREAMS
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            return _Limit.CALLS
        self._in_flight += 1
        self._streams += stream
        return None

    def _release(self, *, stream: bool) -> None:
        self._in_flight -= 1
        self._streams -= stream

    def _ended(
        self, metrics: MethodMetrics, code: grpc.StatusCode, *, held: bool, stream: bool, shed: bool = False
    ) -> None:
        """Count a call, unary or streaming, handled under the code it ended with (and shed: refused for load,
        which ShopmeshServerErrors reads apart), and give back the in-flight slot it `held`."""
        if held:
            self._release(stream=stream)
        metrics.handled(code).inc()
        if shed:
            metrics.shed.inc()

    def _overloaded(self, met: _Limit) -> errors.Overloaded:
        """The refusal of a call `_admit` did not admit, naming the limit it `met`."""
        size = self._max_streams if met is _Limit.STREAMS else self._max_in_flight
        return errors.Overloaded(
            f"the server is handling its limit of {size} {met.value}; retry shortly",
            reason=errors.SERVER_OVERLOADED,
            retry_after_seconds=SHED_RETRY_AFTER_SECONDS,
        )

    async def _shed_stream(
        self, metrics: MethodMetrics, context: grpc.aio.ServicerContext[Any, Any], met: _Limit
    ) -> None:
        """Refuse a streaming call as a unary one is shed: the same answer, counted started, handled
        RESOURCE_EXHAUSTED and shed (ShopmeshServerErrors reads a method's shed calls against its handled ones
        and the streams it holds)."""
        metrics.started.inc()
        self._ended(metrics, grpc.StatusCode.RESOURCE_EXHAUSTED, held=False, stream=True, shed=True)
        status = to_grpc_status(to_rpc_status(self._overloaded(met), self._domain))
        try:
            await self._abort(context, status, shed=True)
        except _Unsent as unsent:
            raise unsent.failure from None

    async def _dependency_failed(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: grpc.aio.AioRpcError
    ) -> grpc.StatusCode:
        """An outbound call failed and the handler did not handle it."""
        if exc.code() in TRANSIENT_CODES:
            # "Try later" from a dependency means the same to our own caller, after the wait it asked for.
            error = dependency_unavailable(None, exc)
            await self._abort(context, to_grpc_status(to_rpc_status(error, self._domain)))
            return grpc.StatusCode.UNAVAILABLE
        log.error(
            "unhandled dependency error in %s: %s %s",
            method,
            exc.code().name,
            exc.details(),
            extra={"grpc_method": method},
        )
        await self._abort(context, to_grpc_status(internal_status(current_trace_id())))
        return grpc.StatusCode.INTERNAL

    @staticmethod
    async def _abort(
        context: grpc.aio.ServicerContext[Any, Any],
        status: grpc.Status,
        *,
        final: bool = False,
        shed: bool = False,
        retries_spent: bool = False,
    ) -> None:
        """Answer `status`, trailers-only. `retries_spent`: a relayed transient answer that the relay's channel
        retried already goes out with "do not retry", whatever its reason or wait (see _retry_pushback)."""
        # Nothing was sent yet, so the response is trailers-only.
        # Trailers the handler set (e.g. the idempotency key used) go out with the error too.
        handler_set = tuple(context.trailing_metadata() or ())
        pushback: tuple[tuple[str, str], ...]
        if final:
            pushback = _FINAL
        elif retries_spent:
            pushback = _DO_NOT_RETRY
        else:
            pushback = _retry_pushback(status, context.time_remaining())
        marked = (*(_SHED if shed else ()), *(_RETRIED if _a_retry(context) else ()))
        try:
            await context.abort(
                status.code, status.details, (*handler_set, *status.trailing_metadata, *pushback, *marked)
            )
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            raise _Unsent(exc) from exc


def _internal(span: trace.Span, error: Exception, method: str, line: str) -> grpc.Status:
    """The INTERNAL answer to an unexpected `error` in `method`: the status naming the call's trace id, so that
    the caller can quote it, and the error logged (`line`, a format over %(method)s and %(trace_id)s) with its
    traceback and recorded on the span, where that id finds it."""
    trace_id = current_trace_id()
    log.exception(line, {"method": method, "trace_id": trace_id}, exc_info=error, extra={"grpc_method": method})
    if span.is_recording():
        span.record_exception(error)
    return to_grpc_status(internal_status(trace_id))


class _Refused(Exception):
    """A streamed request refused (`error`), raised through the handler that read it: an exception of its own,
    so that the refusal answered is the request's, not any InvalidArgument a handler lets through."""

    def __init__(self, error: errors.InvalidArgument) -> None:
        super().__init__(str(error))
        self.error = error


class _Unsent(Exception):
    """An answer built but not sent (`context.abort` failed: the call had ended), which is no failure to build
    one: the interceptor passes `failure` on to grpcio as it came."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(str(failure))
        self.failure = failure


# How much later than its caller's the server's deadline may run. gRPC starts the server's count of the
# caller's timeout (grpc-timeout) when the server parses the call's headers, the caller's before it sends
# them: the server's deadline runs later by the headers' trip (sidecars: a millisecond or so) and the time
# they wait for the sending and the receiving I/O threads to get a CPU (tens of milliseconds on a loaded
# node). The caller's cancel (RST_STREAM at its deadline) need not wait as long, so it can reach the handler
# while the server still counts time left. Not a share of the timeout: the skew is the same for any; and
# not smaller for a call that waited long for the handler: that is the loaded server the rule is for.
DEADLINE_SKEW_TOLERANCE_SECONDS = 0.1


def cancelled_call_code(remaining: float | None) -> grpc.StatusCode:
    """How a call its caller cancelled is counted, in the metrics and on the span alike: DEADLINE_EXCEEDED when
    the caller's deadline passed while the server worked on it (the server was too slow, which the
    server-errors alert and the SLO count), CANCELLED when the caller chose to stop waiting.

    `remaining` is what the server's deadline leaves at the cancellation (None: the call has none). Within
    the skew tolerance of it, the cancellation is the caller's deadline: a loaded server, whose deadline runs
    latest, must not count its misses as its callers' choice exactly when it is loaded. The price: a caller
    that cancels on its own in the last 100 ms of its deadline (any time, for a deadline shorter than that)
    is counted as the server's miss."""
    if remaining is not None and remaining <= DEADLINE_SKEW_TOLERANCE_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _retry_pushback(status: grpc.Status, time_remaining: float | None) -> tuple[tuple[str, str], ...]:
    """gRFC A6's server pushback "do not retry" (-1) for a status that says a dependency is away
    (DEPENDENCY_UNAVAILABLE), or whose RetryInfo asks for a wait that ends past the call's deadline; nothing
    otherwise.

    gRPC's retries (the chassis' service config retries idempotent methods on UNAVAILABLE) back off 50 ms and
    read no RetryInfo, only this trailer: a service asking its caller to come back in 30 s got three more
    attempts within 350 ms, each a load on whatever it was waiting for, and the caller its answer and
    RetryInfo no sooner. A wait that fits in the deadline is not sent: waiting it would stretch every call
    chain behind the retry (orders' saga retries its steps itself, within its lease).

    DEPENDENCY_UNAVAILABLE, whatever its wait and whoever raised it (a handler, `dependency_unavailable`, a
    relay replaying a dependency's): the server has given up on that dependency, as a rule after its channel retried
    it. Retried by its caller's channel too, each layer multiplies the attempts of the one below (the gateway's
    PlaceOrder retries each drove orders' saga again: 20 Reserve calls for one checkout while inventory was down,
    where orders' breaker stopped them, and the answer seconds later). Only the layer next to the failure retries;
    the RetryInfo still tells the caller when another call is worth it. Not final (no FINAL_ANSWER): a relay of it
    is no more final than the answer itself, and a later call may fare better.

    A relay's replay of a dependency's transient answer that its channel retried already (`retries_spent`, read
    from the dependency's RETRIED_ANSWER marker) gets -1 in `_abort` by the same rule, whatever its reason: a
    catalog whose database is away answers DATABASE_UNAVAILABLE, which the gateway's channel tried 4 times, and
    the gateway's caller retrying the relay made it 16. Unmarked (the first attempt's answer: the channel retries
    nothing for the method, or the dependency's wait did not fit), it is weighed as the server's own trouble is:
    no layer below retried it, and the next attempt may reach another replica."""
    details = details_from(status.code, status.details, status.trailing_metadata)
    if details.reason == errors.DEPENDENCY_UNAVAILABLE:
        return _DO_NOT_RETRY
    delay = details.retry_delay_seconds
    if delay is None or time_remaining is None or delay < time_remaining:
        return ()
    return _DO_NOT_RETRY


def _a_retry(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the call is a retry attempt of its caller's channel (gRPC sends PREVIOUS_ATTEMPTS with each)."""
    return any(key == PREVIOUS_ATTEMPTS for key, _ in context.invocation_metadata() or ())


def _caller_ended(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the call itself is ending, by its caller's cancel or at its deadline: its cancellation may not be
    in the context yet when the handler sees it, but the handler's task is being cancelled by then."""
    task = asyncio.current_task()
    return context.cancelled() or (task is not None and task.cancelling() > 0)


def _reason_of(status: status_pb2.Status) -> str | None:
    """The ErrorInfo reason of a google.rpc.Status, if it has one."""
    for detail in status.details:
        if detail.TypeName() == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            try:
                detail.Unpack(info)
            except DecodeError:
                # A garbled detail is relayed as it came; it names no reason.
                return None
            return str(info.reason)
    return None


def _code_of(
    context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode = grpc.StatusCode.UNKNOWN
) -> grpc.StatusCode:
    """The code the handler set on `context`; `default` if it set none (OK for a handler that returned)."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


def _response_type(method: str) -> type[Message] | None:
    """The response message class of `/package.Service/Method`, from the default descriptor pool, where the
    generated code of every servicer registers it; None for a method the pool does not know."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        output = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name].output_type
    except KeyError:
        return None
    return message_factory.GetMessageClass(output)


def _parsed(parse: Callable[[bytes], Any], body: bytes) -> Any:
    """The request message from its bytes; a body that is none is the client's mistake, and a text field that
    is not UTF-8 is named (a page token's as the paging contract has it: INVALID_PAGE_TOKEN), the first
    MAX_NAMED_FIELDS of them (text_fields' bounds)."""
    try:
        return parse(body)
    except DecodeError:
        descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        if isinstance(descriptor, Descriptor):
            found = invalid_utf8_fields(body, descriptor)
            if found.paths:
                violations = [
                    FieldViolation(
                        path,
                        "must be UTF-8 text",
                        INVALID_PAGE_TOKEN if path.rpartition(".")[2] == "page_token" else NOT_UTF8,
                    )
                    for path in found.paths
                ]
                reasons = {violation.reason for violation in violations}
                # Cut short, the fields not looked at may be any: only NOT_UTF8 says so for them all.
                single = len(reasons) == 1 and not found.cut_short
                raise errors.InvalidArgument(
                    f"text fields must be UTF-8: {found.listed()}",
                    violations,
                    reason=reasons.pop() if single else NOT_UTF8,
                ) from None
        # Also a body whose first MAX_FIELDS_VISITED fields hold no bad text: what is wrong past them is unknown.
        raise errors.InvalidArgument(
            "the request body is not a valid message of this method's request type", reason="MALFORMED_REQUEST"
        ) from None
