"""The client circuit breaker opens after consecutive failures, fails fast, and closes again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import call_context, errors
from shopmesh_chassis.breaker import BreakerConfig, BreakerState, CircuitBreaker
from shopmesh_chassis.client import BREAKER_LOGGER, ClientOptions, ResilientChannel
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.metrics import BreakerCollector, ServerMetrics
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer, binding

from .conftest import sample_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# A deadline only bounds a call the test holds at the target and ends itself: the breaker's held clock, not
# gRPC's, says how near the deadline it ended.
HELD_CALL_TIMEOUT = 60.0


def held(key: str) -> sample_pb2.EchoRequest:
    """An Echo the target holds (far longer than any test runs), counted at the target under `key`."""
    return sample_pb2.EchoRequest(message=key, behaviour=sample_pb2.Behaviour(attempt_key=key, sleep_ms=60_000))


async def at_the_target(servicer: SampleServicer, key: str) -> None:
    await eventually(lambda: servicer.attempts[key] == 1, f"the call {key!r} at the target")


def test_the_breaker_opens_after_the_failure_threshold_and_closes_after_a_successful_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=10), clock)
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()  # a success resets the count: failures must be consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == 10
    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record_failure()  # the probe failed: open again for a full period
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_client_errors_do_not_open_the_breaker() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2))
    breaker.record_failure()
    breaker.record_neutral()  # e.g. NOT_FOUND: the server is healthy
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_a_cancelled_probe_gives_its_slot_back_and_proves_nothing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=10), clock)
    breaker.record_failure()
    breaker.release_probe()  # closed: a cancelled call does not reset the failures so far
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    assert breaker.allow()
    breaker.release_probe()  # the probe's caller gave up: no word on the target's health
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the slot is free for the next probe


@pytest.mark.parametrize("deadline_passed", [False, True])
async def test_a_call_its_caller_cancels_counts_as_a_failure_only_once_its_deadline_has_passed(
    server: ChassisServer, servicer: SampleServicer, deadline_passed: bool
) -> None:
    """A caller's own timer that fires with gRPC's deadline in one loop pass (a loop stalled by load)
    cancels the call before DEADLINE_EXCEEDED is seen; the target still let the deadline pass."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_timeout_seconds=30), clock)
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        call = asyncio.ensure_future(stub.Echo(held("cancelled"), timeout=HELD_CALL_TIMEOUT))
        await at_the_target(servicer, "cancelled")
        if deadline_passed:
            clock.now += HELD_CALL_TIMEOUT  # the loop stalled until the deadline, as under load
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert (breaker.state is BreakerState.OPEN) is deadline_passed


async def test_breaker_opens_fails_fast_and_closes_again(server: ChassisServer, servicer: SampleServicer) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, reset_timeout_seconds=30), clock)
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        hanging = sample_pb2.RecordRequest(behaviour=sample_pb2.Behaviour(attempt_key="k", sleep_ms=3_000))
        answering = sample_pb2.RecordRequest(behaviour=sample_pb2.Behaviour(attempt_key="k"))

        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Record(hanging, timeout=0.2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert breaker.state is BreakerState.OPEN

        # Open: the call fails fast with UNAVAILABLE / CIRCUIT_OPEN and never reaches the server.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Record(answering)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.reason == "CIRCUIT_OPEN"
        assert details.retry_delay_seconds == pytest.approx(30)
        assert servicer.attempts["k"] == 3

        # After the reset timeout one probe goes through; it succeeds and the breaker closes.
        clock.now += 30
        assert (await stub.Record(answering)).attempt == 4
        assert breaker.state is BreakerState.CLOSED
        assert (await stub.Record(answering)).attempt == 5


async def test_a_breaker_logs_one_warning_when_it_opens_and_one_info_when_it_closes_never_a_line_per_refusal(
    server: ChassisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # On-call sees a dependency's breaker open and close in the logs, not only in its gauge.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=30), clock)
    record = f"/{DESCRIPTOR.full_name}/Record"
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        hanging = sample_pb2.RecordRequest(behaviour=sample_pb2.Behaviour(attempt_key="k", sleep_ms=3_000))
        answering = sample_pb2.RecordRequest(behaviour=sample_pb2.Behaviour(attempt_key="k"))
        with caplog.at_level(logging.INFO, logger=BREAKER_LOGGER):
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Record(hanging, timeout=0.2)
            for _ in range(3):  # refused: no line each
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Record(answering)
            clock.now += 30
            with pytest.raises(grpc.aio.AioRpcError):  # a failed probe: still the same outage, no line
                await stub.Record(hanging, timeout=0.2)
            clock.now += 30
            await stub.Record(answering)
            await stub.Record(answering)  # closed already: no line

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"circuit opened for {record} at {server.address}: 2 calls in a row failed, the last DEADLINE_EXCEEDED;"
            " its calls are refused for 30 s, then one probe is let through",
        ),
        (logging.INFO, f"circuit closed for {record} at {server.address}: a call got through after 60 s open"),
    ]
    opened, closed = caplog.records
    assert (opened.target, opened.method, opened.failures) == (server.address, record, 2)
    assert (closed.target, closed.method) == (server.address, record)


async def test_a_targets_own_unavailable_does_not_open_its_breaker(server: ChassisServer) -> None:
    """UNAVAILABLE with the target's own ErrorInfo (orders' DEPENDENCY_UNAVAILABLE while payments is away)
    comes from a live target, which answered: it must not refuse everyone that target's other answers."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=30))
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        failing = sample_pb2.RecordRequest(behaviour=sample_pb2.Behaviour(attempt_key="k", fail_first_attempts=5))
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Record(failing)
            assert details_of(caught.value).reason == "INJECTED_FAILURE"
        assert breaker.state is BreakerState.CLOSED


class DatabaseAway(SampleServicer):
    async def Fail(self, request: sample_pb2.FailRequest, context: object) -> sample_pb2.FailResponse:
        raise errors.Unavailable("database unavailable", reason=DATABASE_UNAVAILABLE, retry_after_seconds=1.0)


async def test_a_target_whose_own_database_is_away_opens_its_breaker() -> None:
    """DATABASE_UNAVAILABLE is the target's own answer, but about the target itself: every call it gets
    fails so, and failing fast gives its database room to come back."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=30))
    async with (
        serve_in_process(sample_settings(), [binding(DatabaseAway())]) as target,
        ResilientChannel(target.address, [DESCRIPTOR], breaker=breaker) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Fail(sample_pb2.FailRequest())
            assert details_of(caught.value).reason == DATABASE_UNAVAILABLE
        assert breaker.state is BreakerState.OPEN


async def test_unreachable_target_opens_the_breaker() -> None:
    from shopmesh_chassis.testing import free_port

    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=60))
    options = ClientOptions(default_timeout_seconds=2.0)
    async with ResilientChannel(f"127.0.0.1:{free_port()}", [DESCRIPTOR], options, breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Record(sample_pb2.RecordRequest())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Record(sample_pb2.RecordRequest())
        assert details_of(caught.value).reason == "CIRCUIT_OPEN"


def test_the_breakers_state_and_openings_are_reported_to_prometheus() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=10), clock)
    metrics = ServerMetrics()
    charge = "/shopmesh.payments.v1.PaymentsService/Charge"
    metrics.watch_breakers("payments", {charge: breaker})
    metrics.watch_breakers("nobody", {})  # a channel built without breakers: nothing to report

    def reported() -> tuple[str, float]:
        states = [
            s
            for s in BreakerState
            if metrics.registry.get_sample_value(
                "shopmesh_client_breaker_state", {"dependency": "payments", "method": charge, "state": s.value}
            )
        ]
        opened = metrics.registry.get_sample_value(
            "shopmesh_client_breaker_opened_total", {"dependency": "payments", "method": charge}
        )
        assert len(states) == 1, states
        return states[0].value, opened or 0.0

    assert reported() == ("closed", 0)
    breaker.record_failure()
    breaker.record_failure()
    assert reported() == ("open", 1)
    clock.now += 10
    assert reported() == ("half_open", 1)
    assert breaker.allow()  # the probe goes out, and fails: open again
    breaker.record_failure()
    assert reported() == ("open", 2)
    assert metrics.registry.get_sample_value("shopmesh_client_breaker_state", {"dependency": "nobody"}) is None


def test_a_failed_probe_is_reported_until_a_call_gets_through() -> None:
    """Half-open reads the same after a blip nobody probed since as in front of a dependency still down
    whose method is rarely called: only the failed probe tells them apart, and it must stay reported through
    the half-open wait however long no call comes (ShopmeshCircuitOpen fires on it)."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=10), clock)
    metrics = ServerMetrics()
    charge = "/shopmesh.payments.v1.PaymentsService/Charge"
    metrics.watch_breakers("payments", {charge: breaker})

    def probe_failed() -> float | None:
        return metrics.registry.get_sample_value(
            "shopmesh_client_breaker_probe_failed", {"dependency": "payments", "method": charge}
        )

    assert probe_failed() == 0
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 10
    assert probe_failed() == 0, "opened, then idle: nothing says the dependency is still down"
    assert breaker.allow()
    breaker.record_failure()
    clock.now += 3600
    assert breaker.observed_state() is BreakerState.HALF_OPEN
    assert probe_failed() == 1, "an hour without a call after a failed probe"
    assert breaker.allow()
    breaker.release_probe()  # a probe its caller cancelled says nothing
    assert probe_failed() == 1
    assert breaker.allow()
    breaker.record_success()
    assert probe_failed() == 0


def test_the_last_failed_probe_is_reported_with_its_wall_clock_time() -> None:
    """probe_failed stays 1 from a failed probe until a call gets through, however long: a dependency back
    since, with no call to find it so, reads the same as one still down. When that probe failed tells them
    apart (ShopmeshCircuitOpen wants it within 30 minutes), in Unix seconds for Prometheus' time(), though the
    breaker keeps time on its monotonic clock."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_timeout_seconds=10), clock)
    collector = BreakerCollector(wall_clock=lambda: 1_700_000_000.0 + clock.now)
    registry = CollectorRegistry()
    registry.register(collector)
    charge = "/shopmesh.payments.v1.PaymentsService/Charge"
    collector.watch("payments", {charge: breaker})

    def failed_at() -> float | None:
        return registry.get_sample_value(
            "shopmesh_client_breaker_probe_failed_timestamp_seconds", {"dependency": "payments", "method": charge}
        )

    assert failed_at() == 0, "no probe yet"
    breaker.record_failure()
    clock.now += 10
    assert failed_at() == 0, "opened, not probed"
    assert breaker.allow()
    breaker.record_failure()
    probed = clock.now
    clock.now += 3600
    assert failed_at() == 1_700_000_000.0 + probed
    clock.now += 1
    assert breaker.allow()
    breaker.record_failure()
    assert failed_at() == 1_700_000_000.0 + clock.now, "the next failed probe refreshes it"
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert (
        registry.get_sample_value("shopmesh_client_breaker_probe_failed", {"dependency": "payments", "method": charge})
        == 0
    )


def slow(ms: int) -> sample_pb2.EchoRequest:
    return sample_pb2.EchoRequest(message="m", behaviour=sample_pb2.Behaviour(sleep_ms=ms))


async def test_a_probe_its_caller_cancels_leaves_the_breaker_half_open(
    server: ChassisServer, servicer: SampleServicer
) -> None:
    """The dependency hangs; after the reset timeout one probe goes out, and its caller gives up on it
    (the gateway's TaskGroup cancels a page's calls when one fails). The probe learned nothing about the
    target: the breaker must not close on it and send every call to the hanging target again."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=30), clock)
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Echo(slow(3_000), timeout=0.2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert breaker.state is BreakerState.OPEN

        clock.now += 30  # half-open: one probe may go
        probe = asyncio.ensure_future(stub.Echo(held("probe"), timeout=HELD_CALL_TIMEOUT))
        await at_the_target(servicer, "probe")
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.allow()  # its slot is free for the next probe


async def test_a_call_sent_before_the_breaker_opened_does_not_free_the_running_probes_slot(
    server: ChassisServer, servicer: SampleServicer
) -> None:
    """A call sent while the breaker was closed, cancelled while a half-open probe runs, took no slot and
    gives none back: else a second probe would go out beside the first."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_timeout_seconds=30), clock)
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        early = asyncio.ensure_future(stub.Echo(held("early"), timeout=HELD_CALL_TIMEOUT))
        await at_the_target(servicer, "early")
        breaker.record_failure()  # other calls failed meanwhile: open
        clock.now += 30
        probe = asyncio.ensure_future(stub.Echo(held("probe"), timeout=HELD_CALL_TIMEOUT))
        await at_the_target(servicer, "probe")
        assert breaker.state is BreakerState.HALF_OPEN
        early.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await early
        assert not breaker.allow(), "the running probe's slot was given away"
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert breaker.allow()  # the probe's own cancel gave its slot back


async def test_calls_cancelled_by_their_caller_in_time_do_not_erase_the_failure_streak(server: ChassisServer) -> None:
    """Deadline failures of a hanging target with a call in between that its caller gave up on early: that
    call says nothing either way, and the streak goes on to open the breaker."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, reset_timeout_seconds=30))
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(slow(3_000), timeout=0.1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):  # given up on long before its 5 s deadline
                await stub.Echo(slow(3_000), timeout=5.0)
        assert breaker.state is BreakerState.CLOSED
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(slow(3_000), timeout=0.1)
        assert breaker.state is BreakerState.OPEN


async def test_short_inbound_deadlines_do_not_open_the_breaker_of_a_healthy_dependency(
    server: ChassisServer,
) -> None:
    """A client of ours sends tiny deadlines (grpc-timeout is the caller's to choose); our outbound calls
    inherit them and end DEADLINE_EXCEEDED although the dependency answers in 50 ms. They say how impatient
    that client is: counted, five would open the breaker and refuse every other user (a cheap denial of
    service)."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, reset_timeout_seconds=30))
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        assert (await stub.Echo(slow(50))).message == "m"  # healthy: answers in 50 ms
        for _ in range(5):
            # One impatient inbound call: 10 ms left when it calls the dependency.
            token = call_context.enter(0.01, [])
            try:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Echo(slow(50))
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                call_context.leave(token)
        # Another user, with all the time in the world.
        try:
            response = await stub.Echo(slow(50))
        except grpc.aio.AioRpcError as error:
            pytest.fail(f"a patient caller was refused: {error.code()} {details_of(error).reason}")
        assert response.message == "m"


class AnsweringOnTheClock(SampleServicer):
    """Echo takes `latency` of the breaker's held clock to answer: the target's usual latency, whatever the
    machine's load does to the real one."""

    def __init__(self, clock: FakeClock, latency: float) -> None:
        super().__init__()
        self._clock = clock
        self._latency = latency

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        self._clock.now += self._latency
        return await super().Echo(request, context)


async def test_a_budget_handed_down_by_the_caller_still_opens_the_breaker_of_a_hanging_target() -> None:
    """Recommendations call catalog with 1 s of their own, inside the gateway's 300 ms budget: every call
    to catalog gets the budget's rest, cut below half its own. Catalog usually answers within milliseconds,
    so when it hangs, 300 ms is ample time it let pass: the breaker counts it, and opens."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, reset_timeout_seconds=30), clock)
    async with (
        serve_in_process(sample_settings(), [binding(AnsweringOnTheClock(clock, latency=0.005))]) as catalog,
        ResilientChannel(catalog.address, [DESCRIPTOR], breaker=breaker) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        assert (await stub.Echo(slow(0), timeout=1.0)).message == "m"  # its usual latency: 5 ms
        for _ in range(3):
            token = call_context.enter(0.3, [])  # serving the gateway's call, 300 ms left
            try:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Echo(slow(3_000), timeout=1.0)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                call_context.leave(token)
        assert breaker.state is BreakerState.OPEN


async def test_a_caller_timer_armed_with_the_deadline_still_opens_the_breaker_of_a_hanging_target(
    server: ChassisServer,
) -> None:
    """`async with asyncio.timeout(budget): stub.X(..., timeout=budget)`: the caller's timer, armed a moment
    before gRPC's deadline, cancels each call to a hanging target just before DEADLINE_EXCEEDED would end
    it. The target had the whole deadline all the same: the breaker counts it, and opens."""
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, reset_timeout_seconds=30))
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        budget = 0.15
        for _ in range(12):
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                async with asyncio.timeout(budget):
                    await stub.Echo(slow(3_000), timeout=budget)
        assert breaker.opened >= 1, "12 calls to a hanging dependency timed out and the breaker never opened"


def test_failures_of_calls_already_in_flight_do_not_open_an_open_breaker_again() -> None:
    """Ten calls were in flight when the dependency died. The first five open the breaker; the other five
    fail while it is open: the same outage, so no second opening (shopmesh_client_breaker_opened_total
    would say the dependency flapped) and no open period restarted from the last straggler."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, reset_timeout_seconds=10), clock)
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    for _ in range(5):  # the stragglers of the same outage
        breaker.record_failure()
    assert breaker.opened == 1, f"one outage counted as {breaker.opened} openings"
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN, "the open period restarted from the stragglers"


async def test_a_call_refused_while_a_probe_runs_is_not_told_to_retry_at_once(
    server: ChassisServer, servicer: SampleServicer
) -> None:
    """Half-open, one probe out (users' Login may hold it for 5 s, orders' PlaceOrder for 15 s): every other
    call is refused with CIRCUIT_OPEN, and its RetryInfo must not say 0 s. The gateway passes that delay on
    to its clients (grpc_errors.relayed), so clients that honour RetryInfo came straight back, to be
    refused again, for as long as the probe ran."""
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_timeout_seconds=30), clock)
    async with ResilientChannel(server.address, [DESCRIPTOR], breaker=breaker) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(slow(3_000), timeout=0.2)
        assert breaker.state is BreakerState.OPEN

        clock.now += 30  # half-open: one probe goes out and hangs
        probe = asyncio.ensure_future(stub.Echo(held("probe"), timeout=HELD_CALL_TIMEOUT))
        await at_the_target(servicer, "probe")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Echo(sample_pb2.EchoRequest(message="x"))
            details = details_of(caught.value)
            assert details.reason == "CIRCUIT_OPEN"
            assert details.retry_delay_seconds is not None
            assert details.retry_delay_seconds > 0, "refused while the probe runs, yet told to retry now"
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await probe


async def test_each_method_has_a_breaker_of_its_own(server: ChassisServer) -> None:
    """One method timing out (users' Login behind its argon2 queue) must not refuse the target's other
    methods, which it answers at once."""
    options = ClientOptions(breaker=BreakerConfig(failure_threshold=2, reset_timeout_seconds=30))
    async with ResilientChannel(server.address, [DESCRIPTOR], options) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel.channel)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(slow(3_000), timeout=0.2)
        echo, record = "/shopmesh.sample.v1.SampleService/Echo", "/shopmesh.sample.v1.SampleService/Record"
        assert channel.breakers[echo].state is BreakerState.OPEN
        await stub.Record(sample_pb2.RecordRequest())
        assert channel.breakers[record].state is BreakerState.CLOSED


def test_half_open_with_its_probe_out_asks_for_a_reset_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_timeout_seconds=10), clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.retry_after() == 0  # a probe may go now
    assert breaker.allow()
    assert not breaker.allow()
    assert breaker.retry_after() == 10
