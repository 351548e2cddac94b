"""gRPC's service-config retries apply to idempotent methods only, as declared in the contract: UNAVAILABLE, and
CANCELLED from the server (one shutting down answers so the calls it never started, grpc/grpc#41785), never a
caller's own cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel, RetryPolicy, is_idempotent, service_config
from shopmesh_chassis.grpc_errors import (
    MAX_DEPENDENCY_RETRY_AFTER_SECONDS,
    answered_a_retry,
    answered_final,
    details_of,
)
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, serve_in_process, told_not_to_retry
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, binding

from .conftest import ECHO, sample_settings


def test_service_config_lists_exactly_the_idempotent_methods() -> None:
    config = json.loads(service_config([DESCRIPTOR]))
    names = config["methodConfig"][0]["name"]
    assert sorted(n["method"] for n in names) == ["Echo", "Fail", "Relay"]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert "retryThrottling" in config


async def test_idempotent_method_is_retried_on_unavailable(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="echo-1", fail_first_attempts=2)
    response = await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour))
    # Two attempts failed with a trailers-only UNAVAILABLE; gRPC retried and the third succeeded.
    assert response.attempt == 3
    assert servicer.attempts["echo-1"] == 3


async def test_non_idempotent_method_is_not_retried(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="record-1", fail_first_attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Record(sample_pb2.RecordRequest(message="x", behaviour=behaviour))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["record-1"] == 1


async def test_retries_give_up_after_max_attempts(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="echo-2", fail_first_attempts=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["echo-2"] == 4


async def test_an_answer_to_a_retry_attempt_is_marked_for_a_relay_and_a_first_attempts_is_not(
    stub: sample_pb2_grpc.SampleServiceStub,
) -> None:
    """A relay tells "my channel retried this" (its dependency's retries spent) from the marker on the answer to
    a retry attempt; the answer to a call its channel did not retry (Record has no retry policy) has none."""
    retried = sample_pb2.Behaviour(attempt_key="echo-marked", fail_first_attempts=10)
    with pytest.raises(grpc.aio.AioRpcError) as after_retries:
        await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=retried))
    once = sample_pb2.Behaviour(attempt_key="record-unmarked", fail_first_attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as first_attempt:
        await stub.Record(sample_pb2.RecordRequest(message="x", behaviour=once))
    assert (after_retries.value.code(), answered_a_retry(after_retries.value)) == (grpc.StatusCode.UNAVAILABLE, True)
    assert (first_attempt.value.code(), answered_a_retry(first_attempt.value)) == (grpc.StatusCode.UNAVAILABLE, False)


async def test_a_channel_allowed_one_attempt_sends_an_idempotent_call_once(
    server: ChassisServer, servicer: SampleServicer
) -> None:
    """RetryPolicy(max_attempts=1): the channel of a caller that is itself the one retry layer (orders' saga
    steps) sends each call once, and the call goes through; gRPC refuses a retry policy of one attempt."""
    one_attempt = ClientOptions(breaker=None, retry=RetryPolicy(max_attempts=1))
    behaviour = sample_pb2.Behaviour(attempt_key="echo-once", fail_first_attempts=1)
    async with ResilientChannel(server.address, [DESCRIPTOR], one_attempt) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour), timeout=5)
        answered = await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour), timeout=5)
    assert (caught.value.code(), servicer.attempts["echo-once"], answered.attempt) == (
        grpc.StatusCode.UNAVAILABLE,
        2,
        2,
    )


def test_service_config_retries_cancelled_for_idempotent_methods_and_nothing_for_the_others() -> None:
    config = json.loads(service_config([DESCRIPTOR]))
    (method_config,) = config["methodConfig"]
    # A server shutting down answers CANCELLED the calls it never started (grpc/grpc#41785).
    assert set(method_config["retryPolicy"]["retryableStatusCodes"]) == {"UNAVAILABLE", "CANCELLED"}
    retried = {n["method"] for n in method_config["name"]}
    non_idempotent = {m.name for m in DESCRIPTOR.methods if not is_idempotent(m)}
    assert non_idempotent == {"Record"}
    # No other methodConfig, and no service-wide entry: a non-idempotent method has no retry policy at all.
    assert retried.isdisjoint(non_idempotent)
    assert all("method" in n for n in method_config["name"])


class _CancelsFirstAttempts(SampleServicer):
    """Answers CANCELLED to the first attempts of a key, as a server shutting down answers the calls it never
    started (grpc/grpc#41785): a plain grpc.aio server, without the chassis' interceptors."""

    async def _behave_or_cancel(self, behaviour: sample_pb2.Behaviour, context: Any) -> int:
        self.attempts[behaviour.attempt_key] += 1
        attempt = self.attempts[behaviour.attempt_key]
        if attempt <= behaviour.fail_first_attempts:
            await context.abort(grpc.StatusCode.CANCELLED, f"attempt {attempt} cancelled on purpose")
        return attempt

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        attempt = await self._behave_or_cancel(request.behaviour, context)
        return sample_pb2.EchoResponse(message=request.message, attempt=attempt)

    async def Record(self, request: sample_pb2.RecordRequest, context: Any) -> sample_pb2.RecordResponse:
        attempt = await self._behave_or_cancel(request.behaviour, context)
        return sample_pb2.RecordResponse(message=request.message, attempt=attempt)


@pytest.fixture
async def cancelling() -> AsyncIterator[tuple[sample_pb2_grpc.SampleServiceStub, _CancelsFirstAttempts]]:
    servicer = _CancelsFirstAttempts()
    server = grpc.aio.server()
    sample_pb2_grpc.add_SampleServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ResilientChannel(f"127.0.0.1:{port}", [DESCRIPTOR], ClientOptions(breaker=None)) as channel:
            yield sample_pb2_grpc.SampleServiceStub(channel.channel), servicer
    finally:
        await server.stop(None)


async def test_idempotent_method_answered_cancelled_by_the_server_is_retried(
    cancelling: tuple[sample_pb2_grpc.SampleServiceStub, _CancelsFirstAttempts],
) -> None:
    stub, servicer = cancelling
    behaviour = sample_pb2.Behaviour(attempt_key="echo-cancelled", fail_first_attempts=1)
    response = await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour))
    assert response.attempt == 2
    assert servicer.attempts["echo-cancelled"] == 2


async def test_non_idempotent_method_answered_cancelled_by_the_server_is_not_retried(
    cancelling: tuple[sample_pb2_grpc.SampleServiceStub, _CancelsFirstAttempts],
) -> None:
    stub, servicer = cancelling
    behaviour = sample_pb2.Behaviour(attempt_key="record-cancelled", fail_first_attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Record(sample_pb2.RecordRequest(message="x", behaviour=behaviour))
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert servicer.attempts["record-cancelled"] == 1


async def test_a_call_its_caller_cancels_is_not_retried(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer, server: ChassisServer
) -> None:
    # Held, and given a deadline, far longer than the test runs: the attempt ends by its caller's cancellation,
    # nothing else (the channel's 5 s default deadline would end it DEADLINE_EXCEEDED on a stalled machine).
    behaviour = sample_pb2.Behaviour(attempt_key="echo-mine", sleep_ms=60_000)
    call = asyncio.ensure_future(stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour), timeout=60))
    # Cancelled once the attempt is at the server: cancelled before, it never went out, and proves nothing.
    await eventually(lambda: servicer.attempts["echo-mine"] == 1, "the first attempt at the server")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(
        lambda: server.metrics.registry.get_sample_value(
            "grpc_server_handled_total", {**ECHO, "grpc_code": "CANCELLED"}
        ),
        "the attempt ended cancelled at the server",
    )
    # A retry would follow the attempt's end within its backoff (50 ms, jittered): ten times that passes
    # without a second attempt. Load can only make this wait miss a retry, never fail a correct client.
    await asyncio.sleep(RetryPolicy().initial_backoff_seconds * 10)
    assert servicer.attempts["echo-mine"] == 1


class _AsksToWait(SampleServicer):
    """Fail answers its first `failures` attempts UNAVAILABLE with RetryInfo asking for `retry_after` seconds
    (a service whose database is away answers so), through the chassis' interceptor; then succeeds. It notes
    when each attempt came."""

    def __init__(self, retry_after: float, failures: int, *, final: bool = False, reason: str = "BACKEND_DOWN") -> None:
        super().__init__()
        self.retry_after = retry_after
        self.failures = failures
        self.final = final
        self.reason = reason
        self.arrivals: list[float] = []

    async def Fail(self, request: sample_pb2.FailRequest, context: Any) -> sample_pb2.FailResponse:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) <= self.failures:
            raise errors.Unavailable(
                "come back later", reason=self.reason, retry_after_seconds=self.retry_after, final=self.final
            )
        return sample_pb2.FailResponse()


@contextlib.asynccontextmanager
async def asking_to_wait(servicer: _AsksToWait) -> AsyncIterator[sample_pb2_grpc.SampleServiceStub]:
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        yield sample_pb2_grpc.SampleServiceStub(channel.channel)


async def test_a_retry_info_longer_than_the_deadline_is_not_retried_and_reaches_the_caller() -> None:
    """gRPC's retries back off 50 ms and read no RetryInfo: a service asking for 30 s got three more attempts
    within 350 ms, each a load on whatever it was waiting for, and the caller its answer no sooner. The
    server's pushback (gRFC A6) says "do not retry" when the wait asked for ends past the call's deadline."""
    servicer = _AsksToWait(retry_after=30, failures=10)
    async with asking_to_wait(servicer) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Fail(sample_pb2.FailRequest(), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "BACKEND_DOWN",
        30,
    )
    assert len(servicer.arrivals) == 1
    # The -1 is about this call's deadline, not an answer final for any call: a relay must not pass it on so.
    assert (told_not_to_retry(caught.value), answered_final(caught.value)) == (True, False)


@pytest.mark.parametrize("reason", ["BACKEND_DOWN", "DATABASE_UNAVAILABLE"])
async def test_a_retry_info_within_the_deadline_is_still_retried(reason: str) -> None:
    """The server's own trouble, its database's included: no layer below retried it (the chassis does not retry
    a query), so the caller's channel is the one retry in the chain, and its next attempt may reach another
    pod, or a pool that has reconnected."""
    servicer = _AsksToWait(retry_after=0.25, failures=1, reason=reason)
    async with asking_to_wait(servicer) as stub:
        await stub.Fail(sample_pb2.FailRequest(), timeout=30)
    assert len(servicer.arrivals) == 2


async def test_an_answer_that_a_dependency_is_away_is_not_retried_whatever_its_wait() -> None:
    """UNAVAILABLE DEPENDENCY_UNAVAILABLE says the server already called its dependency, its channel retrying, and
    gave up: the caller's channel retrying it multiplied those attempts (each of the gateway's PlaceOrder retries
    drove orders' saga again: 20 Reserve calls for one checkout, where orders' breaker stopped them). It goes out
    with "do not retry" even when its wait fits the deadline, not final (a later call may fare better), its
    RetryInfo kept for the caller."""
    servicer = _AsksToWait(retry_after=0.25, failures=10, reason=errors.DEPENDENCY_UNAVAILABLE)
    async with asking_to_wait(servicer) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Fail(sample_pb2.FailRequest(), timeout=30)
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        errors.DEPENDENCY_UNAVAILABLE,
        0.25,
    )
    assert len(servicer.arrivals) == 1
    assert (told_not_to_retry(caught.value), answered_final(caught.value)) == (True, False)


@pytest.mark.parametrize("timeout", [30, None], ids=["within-the-deadline", "no-deadline"])
async def test_an_unavailable_final_for_the_call_is_not_retried_whatever_its_wait(timeout: float | None) -> None:
    """A handler's error marked final (orders' "your cancellation is accepted") goes out with the pushback
    "do not retry": gRPC retried it at once, each attempt redoing what the answer said was under way."""
    servicer = _AsksToWait(retry_after=0.25, failures=10, final=True)
    async with asking_to_wait(servicer) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Fail(sample_pb2.FailRequest(), timeout=timeout)
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "BACKEND_DOWN",
        0.25,
    )
    assert len(servicer.arrivals) == 1
    assert (told_not_to_retry(caught.value), answered_final(caught.value)) == (True, True)


class _Dependency(SampleServicer):
    """Echo answers every call `error`, as a dependency rate-limiting or draining does, and counts the calls."""

    def __init__(self, error: errors.DomainError) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        self.calls += 1
        raise self.error


@contextlib.asynccontextmanager
async def relaying_to(
    dependency: _Dependency, relay_timeout: float = ClientOptions.default_timeout_seconds
) -> AsyncIterator[tuple[sample_pb2_grpc.SampleServiceStub, str]]:
    """A stub of a sample service whose Relay lets the dependency's error escape to the chassis, and the
    dependency's address; Relay's own calls have `relay_timeout` (cut to what its caller's deadline leaves)."""
    relay = SampleServicer(ClientOptions(breaker=None, default_timeout_seconds=relay_timeout))
    async with (
        serve_in_process(sample_settings(), [binding(dependency)]) as behind,
        serve_in_process(sample_settings(), [binding(relay)]) as front,
        ResilientChannel(front.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
    ):
        yield sample_pb2_grpc.SampleServiceStub(channel.channel), behind.address


@pytest.mark.parametrize(
    ("error", "passed_on"),
    [
        (errors.ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=5), 5),
        # A shed server's wait is about its own queue: the chain behind a retry gets at least the default.
        (errors.Unavailable("busy", reason="SERVER_OVERLOADED", retry_after_seconds=0.1), 1),
        # A broken peer's hour would park every caller up the chain for that long.
        (
            errors.Unavailable("draining", reason="DRAINING", retry_after_seconds=3600),
            MAX_DEPENDENCY_RETRY_AFTER_SECONDS,
        ),
    ],
    ids=["carried", "at-least-the-default", "at-most-the-bound"],
)
async def test_a_dependencys_retry_info_is_passed_on_within_bounds(error: errors.DomainError, passed_on: float) -> None:
    """A handler that lets a dependency's "try later" escape answers UNAVAILABLE DEPENDENCY_UNAVAILABLE with
    the dependency's own RetryInfo, not the default 1 s that dropped a rate limiter's "come back in 5 s"."""
    dependency = _Dependency(error)
    async with relaying_to(dependency) as (stub, target):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Relay(
                sample_pb2.RelayRequest(target=target, echo=sample_pb2.EchoRequest(message="x")), timeout=30
            )
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        pytest.approx(passed_on),
    )


async def test_a_dependencys_retry_info_past_the_deadline_is_not_retried() -> None:
    """The carried wait is the one the pushback rule reads: a dependency asking for 20 s, under a 10 s deadline,
    leaves the caller its answer at once instead of three more attempts, each one more call to the
    dependency."""
    dependency = _Dependency(errors.Unavailable("draining", reason="DRAINING", retry_after_seconds=20))
    async with relaying_to(dependency) as (stub, target):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Relay(
                sample_pb2.RelayRequest(target=target, echo=sample_pb2.EchoRequest(message="x")), timeout=10
            )
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        20,
    )
    assert dependency.calls == 1


@pytest.mark.parametrize("caller_timeout", [30, 4], ids=["long-caller-deadline", "short-caller-deadline"])
async def test_a_dependencys_do_not_retry_for_the_relays_own_short_call_is_not_passed_on_final(
    caller_timeout: float,
) -> None:
    """The dependency's "do not retry" (gRFC A6 pushback -1) said only that its 5 s wait did not fit the 2 s the
    relay gave its own call: the relay answers with the dependency's RetryInfo, and not final (turned into
    "final", a saga step with a short timeout gave up an order on one transient answer). Its caller's channel
    still does not retry it, under any deadline: the answer is DEPENDENCY_UNAVAILABLE, the relay's give-up."""
    dependency = _Dependency(errors.Unavailable("draining", reason="DRAINING", retry_after_seconds=5))
    async with relaying_to(dependency, relay_timeout=2) as (stub, target):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Relay(
                sample_pb2.RelayRequest(target=target, echo=sample_pb2.EchoRequest(message="x")),
                timeout=caller_timeout,
            )
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        5,
    )
    assert (told_not_to_retry(caught.value), dependency.calls) == (True, 1)
    assert not answered_final(caught.value)


async def test_a_dependency_away_is_retried_by_the_relays_channel_alone() -> None:
    """The retries of one layer, not the product of two: the relay's channel retries its dependency (a wait it
    can afford), gives up, and answers DEPENDENCY_UNAVAILABLE, which its caller's channel does not send again,
    so the dependency sees RetryPolicy().max_attempts calls, not that many squared."""
    dependency = _Dependency(errors.Unavailable("down", reason="BACKEND_DOWN", retry_after_seconds=0.05))
    async with relaying_to(dependency) as (stub, target):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Relay(
                sample_pb2.RelayRequest(target=target, echo=sample_pb2.EchoRequest(message="x")), timeout=30
            )
    assert details_of(caught.value).reason == errors.DEPENDENCY_UNAVAILABLE
    assert (dependency.calls, told_not_to_retry(caught.value)) == (RetryPolicy().max_attempts, True)
