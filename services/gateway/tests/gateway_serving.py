"""A gateway served in the test's process, in front of the addresses a test gives it, and how a client
sends it a token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.sdk.trace import TracerProvider

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.client import service_config
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.wiring import Channels, binding, build_servicer

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

# `client_options` of a client retrying ShopService's idempotent methods on UNAVAILABLE, as any chassis-based
# client does: what a relayed answer's pushback (or its missing "do not retry") does to the gateway's caller.
RETRYING_CLIENT = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", service_config([shop_pb2.DESCRIPTOR.services_by_name["ShopService"]])),
)


@dataclass
class ServedGateway:
    shop: Shop
    channels: Channels
    server: ChassisServer


@contextlib.asynccontextmanager
async def served_gateway(
    addresses: Mapping[str, str],
    *,
    client_options: Sequence[tuple[str, Any]] = (),
    tracer_provider: TracerProvider | None = None,
    **overrides: Any,
) -> AsyncIterator[ServedGateway]:
    """The gateway with `<service>_address` settings from `addresses` (service name -> address), a client
    stub to it (a plain channel unless `client_options` say otherwise), its channels (their breakers) and its
    server (its metrics) to look at. `tracer_provider`: the one its server and channels record into."""
    named = {f"{name}_address": address for name, address in addresses.items()}
    settings = load_settings(GatewaySettings, grpc_port=0, metrics_port=-1, **{**named, **overrides})
    channels = Channels(settings, tracer_provider)
    metrics = ServerMetrics()
    try:
        async with (
            serve_in_process(
                settings,
                [binding(build_servicer(settings, channels, metrics))],
                tracer_provider=tracer_provider,
                metrics=metrics,
            ) as server,
            grpc.aio.insecure_channel(server.address, options=client_options) as channel,
        ):
            yield ServedGateway(shop_pb2_grpc.ShopServiceStub(channel), channels, server)
    finally:
        await channels.close()


@contextlib.asynccontextmanager
async def serving_gateway(
    addresses: Mapping[str, str],
    *,
    client_options: Sequence[tuple[str, Any]] = (),
    tracer_provider: TracerProvider | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Shop, Channels]]:
    """`served_gateway`'s stub and channels."""
    async with served_gateway(
        addresses, client_options=client_options, tracer_provider=tracer_provider, **overrides
    ) as served:
        yield served.shop, served.channels


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata carrying an access token, as a client sends it."""
    return (("authorization", f"Bearer {token}"),)
