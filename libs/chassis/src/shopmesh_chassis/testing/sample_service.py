"""The sample servicer (contract `shopmesh.sample.v1`): the smallest complete chassis service.

Run it as a process with `python -m shopmesh_chassis.testing.sample_service`; tests and the chassis
benchmark use it to exercise drain, errors, retries, deadlines and the breaker over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import app, errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import ServiceName, ServiceSettings, load_settings
from shopmesh_chassis.contract_limits import required_violation
from shopmesh_chassis.server import ServiceBinding

DESCRIPTOR = sample_pb2.DESCRIPTOR.services_by_name["SampleService"]
log = logging.getLogger("shopmesh.sample")

_ERRORS: dict[int, errors.DomainError] = {
    sample_pb2.ERROR_KIND_INVALID_ARGUMENT: errors.InvalidArgument(
        "message must not be empty",
        [required_violation("message")],
    ),
    sample_pb2.ERROR_KIND_NOT_FOUND: errors.NotFound(
        "sample thing_1 not found", reason="THING_NOT_FOUND", metadata={"id": "thing_1"}
    ),
    sample_pb2.ERROR_KIND_ALREADY_EXISTS: errors.AlreadyExists("thing_1 exists", reason="THING_EXISTS"),
    sample_pb2.ERROR_KIND_FAILED_PRECONDITION: errors.FailedPrecondition("thing_1 is closed", reason="THING_CLOSED"),
    sample_pb2.ERROR_KIND_ABORTED: errors.Aborted("concurrent update", reason="CONFLICT"),
    sample_pb2.ERROR_KIND_UNAUTHENTICATED: errors.Unauthenticated("no credentials"),
    sample_pb2.ERROR_KIND_PERMISSION_DENIED: errors.PermissionDenied("not yours"),
    sample_pb2.ERROR_KIND_RESOURCE_EXHAUSTED: errors.ResourceExhausted(
        "rate limit", reason="RATE_LIMITED", retry_after_seconds=1.5
    ),
    sample_pb2.ERROR_KIND_UNAVAILABLE: errors.Unavailable("try later", reason="BACKEND_DOWN", retry_after_seconds=0.25),
}


@dataclass(frozen=True)
class EchoEnding:
    """How a call of Echo ended, seen from the server: what cut off a call is only visible here, since its
    caller's own deadline ends it for the caller in any case."""

    # The time the call had left when it arrived (its propagated deadline); None for a call without one.
    deadline_seconds: float | None
    # "cancelled" covers a passed deadline as well: gRPC cancels the handler either way, and a caller whose
    # deadline passes cancels its call at the same moment, so the two cannot be told apart reliably.
    outcome: Literal["completed", "cancelled"]


class SampleServicer(sample_pb2_grpc.SampleServiceServicer):
    def __init__(self, client_options: ClientOptions | None = None) -> None:
        self.attempts: Counter[str] = Counter()
        # The last call of Echo with each message that completed or was cancelled (an injected failure is not kept).
        self.echo_endings: dict[str, EchoEnding] = {}
        # Relay's channel: the process takes its CLIENT_DEFAULT_TIMEOUT_SECONDS, as a service's wiring does.
        self._client_options = client_options or ClientOptions(breaker=None)

    async def _behave(self, behaviour: sample_pb2.Behaviour) -> int:
        attempt = 0
        if behaviour.attempt_key:
            self.attempts[behaviour.attempt_key] += 1
            attempt = self.attempts[behaviour.attempt_key]
            if attempt <= behaviour.fail_first_attempts:
                raise errors.Unavailable(f"attempt {attempt} fails on purpose", reason="INJECTED_FAILURE")
        if behaviour.sleep_ms:
            await asyncio.sleep(min(behaviour.sleep_ms, 60_000) / 1000)
        return attempt

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        remaining = context.time_remaining()
        try:
            attempt = await self._behave(request.behaviour)
        except asyncio.CancelledError:
            self.echo_endings[request.message] = EchoEnding(remaining, "cancelled")
            raise
        self.echo_endings[request.message] = EchoEnding(remaining, "completed")
        return sample_pb2.EchoResponse(
            message=request.message,
            attempt=attempt,
            deadline_remaining_seconds=remaining if remaining is not None else 0.0,
        )

    async def Record(self, request: sample_pb2.RecordRequest, context: Any) -> sample_pb2.RecordResponse:
        attempt = await self._behave(request.behaviour)
        return sample_pb2.RecordResponse(message=request.message, attempt=attempt)

    async def Fail(self, request: sample_pb2.FailRequest, context: Any) -> sample_pb2.FailResponse:
        if request.kind == sample_pb2.ERROR_KIND_UNEXPECTED:
            raise RuntimeError("secret internal detail: db password is hunter2")
        error = _ERRORS.get(request.kind)
        if error is not None:
            raise error
        return sample_pb2.FailResponse()

    async def Relay(self, request: sample_pb2.RelayRequest, context: Any) -> sample_pb2.RelayResponse:
        if not request.target:
            raise errors.InvalidArgument("target is required", [errors.FieldViolation("target", "required")])
        async with ResilientChannel(request.target, [DESCRIPTOR], self._client_options) as channel:
            stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
            echo = await stub.Echo(request.echo)
        return sample_pb2.RelayResponse(echo=echo)


def binding(servicer: SampleServicer | None = None) -> ServiceBinding:
    return ServiceBinding(DESCRIPTOR, servicer or SampleServicer(), sample_pb2_grpc.add_SampleServiceServicer_to_server)


class SampleSettings(ServiceSettings):
    service_name: ServiceName = "sample"
    # The drain tests' hook that never returns, as one waiting on a database that never answers would.
    sample_stall_on_shutdown: bool = False


class SampleShutdown:
    """The sample service's shutdown hooks, in order: `stall` (never returns when told to), then `finish`."""

    def __init__(self, stall: bool) -> None:
        self._stall = stall

    async def stall(self) -> None:
        if self._stall:
            await asyncio.Event().wait()

    async def finish(self) -> None:
        log.info("sample shutdown finished")


async def _main() -> None:
    settings = load_settings(SampleSettings)
    provider = app.setup_observability(settings)
    shutdown = SampleShutdown(settings.sample_stall_on_shutdown)
    relay = ClientOptions(default_timeout_seconds=settings.client_default_timeout_seconds, breaker=None)
    await app.serve(
        settings,
        [binding(SampleServicer(relay))],
        tracer_provider=provider,
        on_shutdown=[shutdown.stall, shutdown.finish],
    )


if __name__ == "__main__":
    app.run(_main)
