"""A client's deadline shorter than the gateway's floor (MIN_CLIENT_DEADLINE_SECONDS, the latency threshold, plus
the chassis' DEADLINE_SKEW_TOLERANCE_SECONDS) is its own mistake: the gateway refuses it INVALID_ARGUMENT at
once, before any call of its own, so that no DEADLINE_EXCEEDED is counted, in the gateway or behind it.
Counted, such calls were server errors for the availability SLO and ShopmeshServerErrors: any anonymous client
could page on-call with tiny deadlines, or with one a little above the threshold that it cancelled itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.config import ConfigError, ServiceSettings, load_settings
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_gateway.guard import deadline_floor
from shopmesh_gateway.settings import GatewaySettings

from .gateway_fakes import fakes_serving
from .gateway_serving import ServedGateway, served_gateway

LIST = {"grpc_type": "unary", "grpc_method": "ListProducts"}
CATALOG_LIST = {**LIST, "grpc_service": "shopmesh.catalog.v1.CatalogService"}
SHOP_LIST = {**LIST, "grpc_service": "shopmesh.gateway.v1.ShopService"}
# A floor of the test's own, far above the default (0.25 s), and a deadline below it: long enough that the
# refusal reaches the client before the client's own timer ends the call, however loaded the machine. The
# catalog's work takes longer than the deadline, so that without the floor every call missed its deadline in
# the gateway and in the catalog (the gateway's own budget for catalog longer still).
FLOOR = 5.0
SHORT_DEADLINE = 3.0
WORK_SECONDS = 4.0
BELOW_THE_FLOOR = {"min_client_deadline_seconds": FLOOR, "catalog_timeout_seconds": 10.0}
CALLS = 20


@dataclass
class SlowCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    """ListProducts takes `work_seconds`."""

    work_seconds: float = WORK_SECONDS
    calls: int = 0

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        self.calls += 1
        await asyncio.sleep(self.work_seconds)
        return catalog_pb2.ListProductsResponse()


def handled(server: ChassisServer, method: dict[str, str]) -> dict[str, float]:
    """grpc_server_handled_total of `method` by code, the codes counted at all."""
    counts = {}
    for metric in server.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "grpc_server_handled_total" and all(sample.labels.get(k) == v for k, v in method.items()):
                counts[sample.labels["grpc_code"]] = sample.value
    return {code: count for code, count in counts.items() if count}


@contextlib.asynccontextmanager
async def slow_catalog_behind_gateway(
    work_seconds: float = WORK_SECONDS, **overrides: Any
) -> AsyncIterator[tuple[SlowCatalog, ChassisServer, ServedGateway]]:
    catalog = SlowCatalog(work_seconds)
    bound = ServiceBinding(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        catalog,
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
    )
    settings = ServiceSettings(service_name="catalog", grpc_port=0, metrics_port=-1)
    async with (
        fakes_serving() as fakes,
        serve_in_process(settings, [bound]) as catalog_server,
        served_gateway({**fakes.addresses, "catalog": catalog_server.address}, **overrides) as gateway,
    ):
        yield catalog, catalog_server, gateway


async def test_calls_with_deadlines_below_the_floor_are_refused_invalid_argument_and_no_deadline_miss_is_counted() -> (
    None
):
    async with slow_catalog_behind_gateway(**BELOW_THE_FLOOR) as (catalog, catalog_server, gateway):

        async def call() -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway.shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=SHORT_DEADLINE)
            return refused.value

        for refusal in await asyncio.gather(*(call() for _ in range(CALLS))):
            details = details_of(refusal)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT, refusal
            assert details.reason == "DEADLINE_TOO_SHORT"
            assert [(v.field, v.reason) for v in details.field_violations] == [("grpc-timeout", "DEADLINE_TOO_SHORT")]
            assert f"{round(deadline_floor(FLOOR) * 1000)} ms" in details.field_violations[0].description
            # Trailers-only: the refusal came before the handler sent anything.
            assert not refusal.initial_metadata()

        assert catalog.calls == 0, "no call made behind the refusal"
        # Counted once the answer is sent: a moment after the client has it.
        await eventually(
            lambda: handled(gateway.server, SHOP_LIST) == {"INVALID_ARGUMENT": CALLS},
            "every refusal counted INVALID_ARGUMENT, and nothing else",
        )
        assert handled(catalog_server, CATALOG_LIST) == {}


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no deadline", "a long deadline"])
async def test_a_call_without_a_deadline_or_with_a_long_one_is_answered(timeout: float | None) -> None:
    async with slow_catalog_behind_gateway(work_seconds=0.3) as (catalog, _, gateway):
        await gateway.shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=timeout)
        assert catalog.calls == 1
        await eventually(lambda: handled(gateway.server, SHOP_LIST) == {"OK": 1}, "the call counted OK")


async def test_a_signed_in_method_refuses_a_short_deadline_before_checking_the_token() -> None:
    async with slow_catalog_behind_gateway(**BELOW_THE_FLOOR) as (_, _, gateway):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            # No token at all: the deadline is refused first, not the missing authorization.
            await gateway.shop.ListOrders(shop_pb2.ListOrdersRequest(), timeout=SHORT_DEADLINE)
        assert (refused.value.code(), details_of(refused.value).reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "DEADLINE_TOO_SHORT",
        )


async def test_a_floor_of_zero_lets_any_deadline_through() -> None:
    async with slow_catalog_behind_gateway(min_client_deadline_seconds=0.0) as (_, _, gateway):
        with pytest.raises(grpc.aio.AioRpcError) as missed:
            await gateway.shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=0.2)
        assert missed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("value", ["-0.1", "inf", "31"])
def test_a_negative_endless_or_huge_floor_is_refused_at_startup(value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(GatewaySettings, min_client_deadline_seconds=value)


def test_the_default_floor_is_the_latency_slos_threshold() -> None:
    # The charts' slo.latency.thresholdSeconds (0.25 s), which they set the floor from in turn.
    assert load_settings(GatewaySettings).min_client_deadline_seconds == 0.25


def test_the_floor_is_the_threshold_plus_the_chassis_skew_tolerance() -> None:
    # What the chassis counts DEADLINE_EXCEEDED when its caller cancels: at most the tolerance left.
    assert deadline_floor(0.25) == 0.25 + DEADLINE_SKEW_TOLERANCE_SECONDS
    assert deadline_floor(0.0) == 0.0


async def test_a_client_cancelling_in_its_deadlines_last_stretch_under_the_floor_is_no_deadline_miss() -> None:
    """The audit's case: at the default threshold (0.25 s), a client sending 0.3 s and cancelling after 0.21 s,
    within the latency SLO, left the chassis at most its skew tolerance, and the gateway and catalog behind it
    counted DEADLINE_EXCEEDED: the availability budget spent by the client's choice. Now the deadline is
    below the floor, refused before any work. The same stretch at the test's own threshold (FLOOR): at 0.25 s a
    refusal that took the loaded machine more than 0.21 s was cancelled by the client first."""
    deadline = FLOOR + DEADLINE_SKEW_TOLERANCE_SECONDS / 2  # above the threshold, below the floor
    cancel_after = deadline - 0.9 * DEADLINE_SKEW_TOLERANCE_SECONDS  # less than the tolerance left
    async with slow_catalog_behind_gateway(work_seconds=2 * FLOOR, **BELOW_THE_FLOOR) as (
        catalog,
        catalog_server,
        gateway,
    ):

        async def call() -> tuple[grpc.StatusCode, str] | str:
            answer = gateway.shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=deadline)
            answered = asyncio.Event()
            answer.add_done_callback(lambda _: answered.set())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), cancel_after)
            cancelled = answer.cancel()
            try:
                await answer
            except grpc.aio.AioRpcError as refused:
                return details_of(refused).code, details_of(refused).reason
            except asyncio.CancelledError:
                if not cancelled:
                    raise  # the test's own cancellation, not the call's
            return "cancelled by the client before any answer" if cancelled else "answered"

        # Every call refused at once, not cancelled by its client: otherwise the counts below hold for no call.
        assert [await call() for _ in range(CALLS)] == [
            (grpc.StatusCode.INVALID_ARGUMENT, "DEADLINE_TOO_SHORT")
        ] * CALLS
        assert catalog.calls == 0, "no call made behind the refusal"
        await eventually(
            lambda: sum(handled(gateway.server, SHOP_LIST).values()) == CALLS, "every call counted by the gateway"
        )
        assert "DEADLINE_EXCEEDED" not in handled(gateway.server, SHOP_LIST), handled(gateway.server, SHOP_LIST)
        await eventually(
            lambda: sum(handled(catalog_server, CATALOG_LIST).values()) == catalog.calls,
            "every call catalog got counted",
        )
        assert "DEADLINE_EXCEEDED" not in handled(catalog_server, CATALOG_LIST), handled(catalog_server, CATALOG_LIST)
