"""GRPC_MAX_CONCURRENT_RPCS: a server at its limit sheds new calls at once instead of queueing them, with
the chassis' error details and metrics (counted as shed, apart from a rate limit's RESOURCE_EXHAUSTED), and
never sheds a health check. Streaming calls (health Watch, reflection) count against it too, at most a tenth of
it (at least one), and are shed past that as unary calls are while unary calls are still served: the
interceptor passed streams through uncounted, so with gRPC core's overload protection off, streams opened and
reset at will (HTTP/2 rapid reset) left handlers running past any bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.config import DEFAULT_MAX_CONCURRENT_RPCS, ConfigError, load_settings
from shopmesh_chassis.grpc_errors import answered_shed, details_of, relaying
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.server_interceptor import SHED_RETRY_AFTER_SECONDS, STREAMS_SHARE
from shopmesh_chassis.testing import eventually, health_status, serve_in_process
from shopmesh_chassis.testing.sample_service import SampleServicer, SampleSettings, binding

from .conftest import ECHO, Holding, held_in_handlers, sample, sample_settings

LIMIT = 2
# How many of the LIMIT calls may be streams.
STREAMS = max(1, LIMIT // STREAMS_SHARE)
WATCH = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
FAIL = {**ECHO, "grpc_method": "Fail"}
RELAY = {**ECHO, "grpc_method": "Relay"}
# The sample service answers this as a rate limit does: RESOURCE_EXHAUSTED, reason RATE_LIMITED.
RATE_LIMITED = sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_RESOURCE_EXHAUSTED)
# A handler's own shedding under a reason of its own (as users' PASSWORD_HASHING_BUSY), which no rule about
# SERVER_OVERLOADED knows.
QUEUE_FULL = "QUEUE_FULL"


class Refusing(SampleServicer):
    """Echo refuses "shed" as a handler whose own queue is full does (shed, reason QUEUE_FULL), "limited" as
    a rate limit does (RATE_LIMITED, not shed), and "overloaded" as a server of a release before the shed
    marker shed calls (SERVER_OVERLOADED, not marked)."""

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        if request.message == "shed":
            raise errors.Overloaded("queue full", reason=QUEUE_FULL, retry_after_seconds=1)
        if request.message == "overloaded":
            raise errors.ResourceExhausted("server overloaded", reason=errors.SERVER_OVERLOADED, retry_after_seconds=1)
        if request.message == "limited":
            raise errors.ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=1)
        return await super().Echo(request, context)


class Relaying(SampleServicer):
    """Relay passes the target's failed answer on unchanged, as a proxy does (the gateway, by the same rule)."""

    async def Relay(self, request: sample_pb2.RelayRequest, context: Any) -> sample_pb2.RelayResponse:
        async with grpc.aio.insecure_channel(request.target) as channel:
            with relaying("sample"):
                echo = await sample_pb2_grpc.SampleServiceStub(channel).Echo(request.echo, timeout=30)
        return sample_pb2.RelayResponse(echo=echo)


@pytest.fixture
async def limited(holding: Holding) -> AsyncIterator[ChassisServer]:
    async with serve_in_process(sample_settings(grpc_max_concurrent_rpcs=LIMIT), [binding(holding)]) as s:
        yield s


async def test_a_call_over_the_limit_is_refused_at_once_with_details_and_the_rest_complete(
    limited: ChassisServer, holding: Holding
) -> None:
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = await held_in_handlers(limited, stub, LIMIT)

        refused = stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await refused
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        details = details_of(raised.value)
        assert details.error_info is not None
        assert details.error_info.reason == "SERVER_OVERLOADED"
        assert details.retry_delay_seconds == pytest.approx(SHED_RETRY_AFTER_SECONDS)
        # Refused while the held calls still ran, and trailers-only, like every error of the chassis.
        assert not any(call.done() for call in busy)
        assert not await refused.initial_metadata()
        # Shed load shows in the metrics as what it is (counted as the handler ends, which may be just after
        # the client has its answer).
        await eventually(
            lambda: sample(limited, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") == 1,
            "the refusal counted",
        )

        holding.release.set()
        assert [r.message for r in await asyncio.gather(*busy)] == ["slow"] * LIMIT
        # With the slots free again the server takes calls as before.
        assert (await stub.Echo(sample_pb2.EchoRequest(message="again"), timeout=30)).message == "again"
    await eventually(
        lambda: sample(limited, "grpc_server_handled_total", grpc_code="OK") == LIMIT + 1, "every answered call counted"
    )


async def test_health_checks_are_answered_while_the_server_is_at_its_limit_and_a_watch_is_shed(
    limited: ChassisServer, holding: Holding
) -> None:
    """A Watch is a handler like any other: one bound for every handler of the replica, streams no way around
    it. Check, what probes ask, is never shed."""
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = await held_in_handlers(limited, stub, LIMIT)
        # A kubelet probe refused here would restart a pod for being busy.
        for _ in range(3):
            assert await health_status(limited.address, timeout=5) == health_pb2.HealthCheckResponse.SERVING
        health: Any = health_pb2_grpc.HealthStub(channel)
        assert_shed(await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        assert not any(call.done() for call in busy)
        holding.release.set()
        await asyncio.gather(*busy)
        (await open_watch(health)).cancel()


async def test_failed_calls_give_their_slot_back(limited: ChassisServer, holding: Holding) -> None:
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        for kind in (sample_pb2.ERROR_KIND_UNEXPECTED, sample_pb2.ERROR_KIND_NOT_FOUND) * LIMIT:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Fail(sample_pb2.FailRequest(kind=kind), timeout=30)
        # All LIMIT slots at once: one kept by a failed call would shed one of these (RESOURCE_EXHAUSTED).
        busy = await held_in_handlers(limited, stub, LIMIT)
        holding.release.set()
        assert [a.message for a in await asyncio.gather(*busy)] == ["slow"] * LIMIT


async def test_a_caller_of_a_shedding_server_answers_its_own_caller_unavailable_with_retry_info(
    limited: ChassisServer, holding: Holding, stub: sample_pb2_grpc.SampleServiceStub
) -> None:
    async with grpc.aio.insecure_channel(limited.address) as channel:
        busy = await held_in_handlers(limited, sample_pb2_grpc.SampleServiceStub(channel), LIMIT)
        # `stub` is another chassis server whose Relay handler calls the shedding one and does not catch.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Relay(sample_pb2.RelayRequest(target=limited.address, echo=sample_pb2.EchoRequest(message="x")))
        holding.release.set()
        await asyncio.gather(*busy)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    details = details_of(raised.value)
    assert details.error_info is not None
    assert details.error_info.reason == "DEPENDENCY_UNAVAILABLE"
    assert details.retry_delay_seconds is not None


async def test_a_shed_call_is_counted_as_shed_and_a_rate_limited_one_is_not(
    limited: ChassisServer, holding: Holding
) -> None:
    """Both answer RESOURCE_EXHAUSTED; only the shed one is the server failing its caller, which the
    availability SLO and ShopmeshServerErrors count from shopmesh_grpc_server_shed_total."""
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = await held_in_handlers(limited, stub, LIMIT)
        # Before any call is shed, the method's shed series is there at 0 (rate() misses a first increment).
        assert limited.metrics.registry.get_sample_value("shopmesh_grpc_server_shed_total", ECHO) == 0
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        assert details_of(shed.value).reason == "SERVER_OVERLOADED"
        holding.release.set()
        await asyncio.gather(*busy)
        with pytest.raises(grpc.aio.AioRpcError) as limited_call:
            await stub.Fail(RATE_LIMITED, timeout=30)
        assert (limited_call.value.code(), details_of(limited_call.value).reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )

    def counts() -> tuple[float, float, float, float]:
        return (
            sample(limited, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED"),
            sample(limited, "shopmesh_grpc_server_shed_total"),
            sample(limited, "grpc_server_handled_total", FAIL, grpc_code="RESOURCE_EXHAUSTED"),
            sample(limited, "shopmesh_grpc_server_shed_total", FAIL),
        )

    await eventually(lambda: counts() == (1, 1, 1, 0), "Echo's refusal counted handled and shed, Fail's handled only")


async def test_a_shed_calls_server_span_is_an_error_and_a_rate_limited_ones_is_not(holding: Holding) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = sample_settings(grpc_max_concurrent_rpcs=LIMIT)
    try:
        async with (
            serve_in_process(settings, [binding(holding)], tracer_provider=provider) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            stub = sample_pb2_grpc.SampleServiceStub(channel)
            busy = await held_in_handlers(server, stub, LIMIT)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
            holding.release.set()
            await asyncio.gather(*busy)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Fail(RATE_LIMITED, timeout=30)

            def statuses() -> list[tuple[str, int, trace.StatusCode]]:
                spans = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
                return sorted(
                    (s.name, int(str((s.attributes or {})["rpc.grpc.status_code"])), s.status.status_code)
                    for s in spans
                    if (s.attributes or {}).get("rpc.grpc.status_code") == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                )

            # Each span ends a moment after its client has the answer, as the handler unwinds.
            await eventually(lambda: len(statuses()) == 2, "the two refusals' server spans")
    finally:
        provider.shutdown()
    code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert statuses() == [
        ("/shopmesh.sample.v1.SampleService/Echo", code, trace.StatusCode.ERROR),
        ("/shopmesh.sample.v1.SampleService/Fail", code, trace.StatusCode.UNSET),
    ]


async def test_a_shed_answer_is_marked_shed_for_a_relay_and_a_rate_limited_one_is_not(
    limited: ChassisServer, holding: Holding
) -> None:
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = await held_in_handlers(limited, stub, LIMIT)
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        holding.release.set()
        await asyncio.gather(*busy)
        with pytest.raises(grpc.aio.AioRpcError) as rate_limited:
            await stub.Fail(RATE_LIMITED, timeout=30)
    assert (details_of(shed.value).reason, answered_shed(shed.value)) == ("SERVER_OVERLOADED", True)
    assert (details_of(rate_limited.value).reason, answered_shed(rate_limited.value)) == ("RATE_LIMITED", False)


async def test_a_server_relaying_a_shed_answer_counts_it_shed_whatever_its_reason_and_a_rate_limit_not() -> None:
    """The relaying server's caller was refused for want of capacity as surely as if the relay had shed it: the
    relay counts it shed (its ShopmeshServerErrors and SLO) and marks its own answer so, for a relay of it."""
    async with (
        serve_in_process(sample_settings(), [binding(Refusing())]) as refusing,
        serve_in_process(sample_settings(), [binding(Relaying())]) as relaying,
        grpc.aio.insecure_channel(relaying.address) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        answers: dict[str, tuple[grpc.StatusCode, str | None, bool]] = {}
        for message in ("shed", "limited"):
            relay = sample_pb2.RelayRequest(target=refusing.address, echo=sample_pb2.EchoRequest(message=message))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Relay(relay, timeout=30)
            answers[message] = (refused.value.code(), details_of(refused.value).reason, answered_shed(refused.value))

        def counts() -> tuple[float, float, float]:
            return (
                sample(refusing, "shopmesh_grpc_server_shed_total"),
                sample(relaying, "grpc_server_handled_total", RELAY, grpc_code="RESOURCE_EXHAUSTED"),
                sample(relaying, "shopmesh_grpc_server_shed_total", RELAY),
            )

        await eventually(lambda: counts() == (1, 2, 1), "the shed answer counted shed by both, the rate limit by none")
    assert answers == {
        "shed": (grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUE_FULL, True),
        "limited": (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", False),
    }


async def test_a_server_relaying_an_unmarked_server_overloaded_of_an_older_release_counts_it_shed() -> None:
    """A dependency of a release before the shed marker answers its shedding RESOURCE_EXHAUSTED SERVER_OVERLOADED
    without it; while a rollout runs the relay still counts it shed, by that reason, and marks its own answer."""
    async with (
        serve_in_process(sample_settings(), [binding(Refusing())]) as refusing,
        serve_in_process(sample_settings(), [binding(Relaying())]) as relaying,
        grpc.aio.insecure_channel(relaying.address) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        relay = sample_pb2.RelayRequest(target=refusing.address, echo=sample_pb2.EchoRequest(message="overloaded"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Relay(relay, timeout=30)

        def counts() -> tuple[float, float, float]:
            return (
                sample(refusing, "shopmesh_grpc_server_shed_total"),
                sample(relaying, "grpc_server_handled_total", RELAY, grpc_code="RESOURCE_EXHAUSTED"),
                sample(relaying, "shopmesh_grpc_server_shed_total", RELAY),
            )

        await eventually(lambda: counts() == (0, 1, 1), "the unmarked SERVER_OVERLOADED counted shed by the relay")
    assert (refused.value.code(), details_of(refused.value).reason, answered_shed(refused.value)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.SERVER_OVERLOADED,
        True,
    )


# The audit's burst: 400 concurrent checkouts through one gateway, each one call in flight at every service.
CHECKOUT_BURST = 400


async def test_a_server_left_at_its_defaults_bounds_its_handlers_well_above_a_checkout_burst() -> None:
    """With gRPC core's overload protection off, GRPC_MAX_CONCURRENT_RPCS is the only bound on handlers still
    ending after their clients reset their calls (HTTP/2 rapid reset); unbounded by default, nothing bounded them
    in a chart that did not set it. The default leaves a burst room to spare."""
    settings = sample_settings()
    assert settings.grpc_max_concurrent_rpcs == DEFAULT_MAX_CONCURRENT_RPCS
    assert DEFAULT_MAX_CONCURRENT_RPCS >= 2 * CHECKOUT_BURST
    assert ChassisServer(settings, [binding()]).interceptor.max_in_flight == DEFAULT_MAX_CONCURRENT_RPCS


async def test_grpc_max_concurrent_rpcs_0_leaves_handlers_unbounded_and_a_negative_one_stops_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ChassisServer(sample_settings(grpc_max_concurrent_rpcs=0), [binding()]).interceptor.max_in_flight is None
    monkeypatch.setenv("GRPC_MAX_CONCURRENT_RPCS", "-1")
    with pytest.raises(ConfigError, match=r"^invalid configuration: GRPC_MAX_CONCURRENT_RPCS="):
        load_settings(SampleSettings, grpc_port=0, metrics_port=-1)


async def open_watch(health: Any) -> Any:
    """A Watch in its handler: its first status read."""
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    return watch


async def refusal_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    # Trailers-only, like every error of the chassis.
    assert not await call.initial_metadata()
    return refused.value


def assert_shed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
    details = details_of(error)
    assert details.reason == "SERVER_OVERLOADED"
    assert details.retry_delay_seconds == pytest.approx(SHED_RETRY_AFTER_SECONDS)
    assert answered_shed(error)


async def test_streams_past_their_share_of_the_limit_are_shed_as_unary_calls_are_and_unary_calls_still_served(
    limited: ChassisServer, holding: Holding
) -> None:
    assert limited.interceptor.max_streams == STREAMS >= 1
    async with grpc.aio.insecure_channel(limited.address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        watches = [await open_watch(health) for _ in range(STREAMS)]

        assert_shed(await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        reflection = channel.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        assert_shed(await refusal_of(reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        await eventually(
            lambda: (
                sample(limited, "shopmesh_grpc_server_shed_total", WATCH) == 1
                and sample(limited, "grpc_server_handled_total", WATCH, grpc_code="RESOURCE_EXHAUSTED") == 1
            ),
            "the refused Watch counted shed",
        )

        # The watchers starve no unary call: the rest of the limit is theirs, and one more is shed.
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        unary = LIMIT - STREAMS
        busy = await held_in_handlers(limited, stub, unary)
        with pytest.raises(grpc.aio.AioRpcError) as one_more:
            await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        assert_shed(one_more.value)

        # A stream ended gives its place back: once its handler has returned, a Watch is taken again...
        holding.release.set()
        await asyncio.wait_for(asyncio.gather(*busy), timeout=60)
        watches.pop().cancel()
        await eventually(_watch_taken(health), "a Watch served once one ended")
    await eventually(
        lambda: sample(limited, "shopmesh_grpc_server_shed_total", ECHO) == 1, "the refused Echo counted shed"
    )


async def test_a_shed_calls_message_names_the_limit_it_met_the_streams_share_first_for_a_stream(
    limited: ChassisServer, holding: Holding
) -> None:
    """The whole limit for a unary call, and for a stream while the streams hold less than their share; the
    streams' share for a stream once they hold it, whether or not the whole limit is met as well."""
    calls = f"the server is handling its limit of {LIMIT} calls; retry shortly"
    streams = f"the server is handling its limit of {STREAMS} streaming calls; retry shortly"
    async with grpc.aio.insecure_channel(limited.address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        busy = await held_in_handlers(limited, stub, LIMIT)
        assert (await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10))).details() == calls
        holding.release.set()
        await asyncio.wait_for(asyncio.gather(*busy), timeout=60)

        watches = [await open_watch(health) for _ in range(STREAMS)]
        assert (await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10))).details() == streams
        holding.release.clear()
        busy = await held_in_handlers(limited, stub, LIMIT - STREAMS)
        assert (await refusal_of(health.Watch(health_pb2.HealthCheckRequest(), timeout=10))).details() == streams
        with pytest.raises(grpc.aio.AioRpcError) as one_more:
            await stub.Echo(sample_pb2.EchoRequest(message="one too many"), timeout=30)
        assert one_more.value.details() == calls
        holding.release.set()
        await asyncio.wait_for(asyncio.gather(*busy), timeout=60)
        for watch in watches:
            watch.cancel()


def _watch_taken(health: Any) -> Any:
    async def taken() -> bool:
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        try:
            await watch.read()
        except grpc.aio.AioRpcError as refused:
            assert_shed(refused)
            return False
        finally:
            watch.cancel()
        return True

    return taken


async def test_an_admitted_stream_is_counted_started_and_handled_with_its_ending_out_of_the_latency_histogram(
    limited: ChassisServer,
) -> None:
    """Only a shed stream was counted (started, handled RESOURCE_EXHAUSTED): one shed Watch was then all of its
    method's calls to ShopmeshServerErrors, a ratio of 1 and a page. A served one is counted started when
    admitted and handled when it ends: a Watch its caller cancels, or whose deadline passes, CANCELLED (no
    server error: a stream lasts until its caller stops it), a reflection stream that completes OK. Never in
    the latency histogram, which is about unary calls (a Watch lives for hours)."""
    reflected = {"grpc_type": "bidi_stream", "grpc_service": "grpc.reflection.v1alpha.ServerReflection"}
    reflected["grpc_method"] = "ServerReflectionInfo"
    async with grpc.aio.insecure_channel(limited.address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        watch = await open_watch(health)
        assert sample(limited, "grpc_server_started_total", WATCH) == 1
        assert sample(limited, "grpc_server_handled_total", WATCH, grpc_code="CANCELLED") == 0
        watch.cancel()
        await eventually(
            lambda: sample(limited, "grpc_server_handled_total", WATCH, grpc_code="CANCELLED") == 1,
            "the cancelled Watch counted handled CANCELLED",
        )
        # Ended by its deadline: the caller's choice of how long to watch, too.
        short = health.Watch(health_pb2.HealthCheckRequest(), timeout=1)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in short:
                pass
        assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(
            lambda: sample(limited, "grpc_server_handled_total", WATCH, grpc_code="CANCELLED") == 2,
            "the Watch its deadline ended counted handled CANCELLED",
        )
        reflection = channel.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        async for _ in reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            pass
        await eventually(
            lambda: sample(limited, "grpc_server_handled_total", reflected, grpc_code="OK") == 1,
            "the completed reflection stream counted handled OK",
        )
    assert sample(limited, "grpc_server_started_total", WATCH) == 2
    assert sample(limited, "grpc_server_started_total", reflected) == 1
    assert sample(limited, "grpc_server_handling_seconds_count", WATCH) == 0
    assert sample(limited, "grpc_server_handling_seconds_count", reflected) == 0
    assert sample(limited, "shopmesh_grpc_server_shed_total", WATCH) == 0
