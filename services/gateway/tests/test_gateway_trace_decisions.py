"""Whose word the gateway takes on whether a call is recorded: a client's W3C `traceparent` marked sampled
is followed from the proxies in front of it (TRUSTED_PROXIES: the edge, a sidecar), which drew at
OTEL_TRACES_SAMPLER_RATIO already, and drawn again at that ratio from anyone else. Followed from every peer,
a client reaching the gateway's gRPC port had every call it marked sampled recorded by the gateway and
every service behind it, whatever the ratio. The trace goes on either way: its id is the client's.

The gateway runs over a real socket with the chassis' sampler at ratio 0, so that a draw never records,
and with an in-memory exporter to see what it recorded; notifications is the gateway tests' stand-in,
which shows the `traceparent` the gateway sends on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.tracing import sampler

from .gateway_fakes import fakes_serving
from .gateway_serving import bearer, serving_gateway

pytestmark = pytest.mark.asyncio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
LIST_NOTIFICATIONS = "/shopmesh.gateway.v1.ShopService/ListNotifications"


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(0.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def recorded_calls(exporter: InMemorySpanExporter) -> list[str]:
    return [s.name for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]


@pytest.mark.parametrize(
    ("trusted_proxies", "recorded"),
    [("", []), ("127.0.0.0/8,::1/128", [LIST_NOTIFICATIONS])],
    ids=["from-a-client", "from-a-trusted-proxy"],
)
async def test_a_sampled_traceparent_is_followed_only_from_a_trusted_proxy(
    exported: tuple[TracerProvider, InMemorySpanExporter], trusted_proxies: str, recorded: list[str]
) -> None:
    provider, exporter = exported
    async with (
        fakes_serving() as fakes,
        serving_gateway(fakes.addresses, tracer_provider=provider, trusted_proxies=trusted_proxies) as (shop, _),
    ):
        token = bearer(fakes.users.key.token("usr_alice"))
        await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=(*token, ("traceparent", SAMPLED)))
        # The span is ended, and exported by the simple processor, before the answer is sent.
        assert recorded_calls(exporter) == recorded
        [sent_on] = fakes.notifications.seen_traceparents
    assert sent_on is not None
    version, trace_id, _, flags = sent_on.split("-")
    assert (version, trace_id) == ("00", TRACE_ID), "the client's trace goes on"
    assert flags == ("01" if recorded else "00"), "the services behind follow the gateway's decision"
