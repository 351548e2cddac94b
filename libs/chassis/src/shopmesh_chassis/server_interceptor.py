"""The chassis' server interceptor: metrics, inbound deadline capture and error mapping, once for all.

It must be the innermost interceptor: it caches the wrapped handler per method, which is only sound
when nothing after it in the chain can change what `continuation` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.rpc import status_pb2

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.db_errors import as_domain_error
from shopmesh_chassis.grpc_errors import internal_status, status_code_for, to_grpc_status, to_rpc_status
from shopmesh_chassis.metrics import MethodMetrics, ServerMetrics
from shopmesh_chassis.tracing import current_trace_id

log = logging.getLogger("shopmesh.server")

# Statuses from a dependency that mean "try later" to our own caller as well.
_PASS_THROUGH_AS_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_CODES = {code.value[0]: code for code in grpc.StatusCode}

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class ChassisServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics, error_domain: str) -> None:
        self._metrics = metrics
        self._domain = error_domain
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

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
        wrapped = self._wrap(method, handler) if handler is not None else None
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        # Streaming RPCs (health Watch, reflection) pass through: shopmesh's own APIs are unary.
        if handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
            return handler
        behavior = cast(UnaryBehavior, handler.unary_unary)
        metrics = self._metrics.for_method(method)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self._handle(behavior, metrics, method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _handle(
        self,
        behavior: UnaryBehavior,
        metrics: MethodMetrics,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        token = call_context.enter(context.time_remaining(), context.invocation_metadata())
        metrics.started.inc()
        metrics.in_flight.inc()
        code = grpc.StatusCode.OK
        start = time.perf_counter()
        try:
            return await behavior(request, context)
        except errors.ReplayedError as exc:
            stored = status_pb2.Status.FromString(exc.status)
            code = _CODES.get(stored.code, grpc.StatusCode.UNKNOWN)
            await self._abort(context, to_grpc_status(stored))
        except errors.DomainError as exc:
            code = status_code_for(exc)
            await self._abort(context, to_grpc_status(to_rpc_status(exc, self._domain)))
        except grpc.aio.AbortError:
            # The handler aborted by itself (e.g. a library servicer); keep its status.
            code = _code_of(context)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
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
            code = grpc.StatusCode.INTERNAL
            trace_id = current_trace_id()
            log.exception("unexpected error in %s", method, extra={"grpc_method": method})
            await self._abort(context, to_grpc_status(internal_status(trace_id)))
        finally:
            metrics.in_flight.dec()
            metrics.handling.observe(time.perf_counter() - start)
            metrics.handled(code).inc()
            call_context.leave(token)

    async def _dependency_failed(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: grpc.aio.AioRpcError
    ) -> grpc.StatusCode:
        """An outbound call failed and the handler did not handle it."""
        if exc.code() in _PASS_THROUGH_AS_UNAVAILABLE:
            error = errors.Unavailable(
                "a dependency is unavailable", reason="DEPENDENCY_UNAVAILABLE", retry_after_seconds=1.0
            )
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
    async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
        # abort() rather than abort_with_status(): the OpenTelemetry context proxy records the code
        # only through abort(). Either way nothing was sent yet, so the response is trailers-only.
        # Trailers the handler set (e.g. the idempotency key used) go out with the error too.
        handler_set = tuple(context.trailing_metadata() or ())
        await context.abort(status.code, status.details, (*handler_set, *status.trailing_metadata))


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN
