"""Traces end to end, as `make run` records them: every service exports its spans over OTLP to the
local trace sink, and one checkout is one trace, from orders' PlaceOrder through inventory and payments
to its event's create span, the consumers that got that event over NATS (notifications, recommendations)
under it, and on to the e-mail's delivery to the stack's SMTP sink; the consumers' log lines about the order
carry its trace id. The outbox relay's publish of the event is a trace of its own linked to the create span.
`make traces` shows it as a tree, the linked send span under the create span.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh_platform.stack import Stack
from shopmesh_platform.traces import Trace, load

from .shop import CHECKOUT_SERVICES, eventually, place_request, user

pytestmark = pytest.mark.asyncio(loop_scope="module")

PLACE_ORDER = "shopmesh.orders.v1.OrdersService/PlaceOrder"
SMTP_SEND = "smtp send"
CONFIRMED = "orders.v1.order_confirmed"
# The services consuming a confirmed order's event, each in the checkout's trace.
CONSUMERS = ("notifications", "recommendations")
# What a checkout calls (service, method): a server span each, all in the checkout's trace.
CHECKOUT_SERVER_SPANS = {
    ("orders", "PlaceOrder"),
    ("catalog", "BatchGetProducts"),
    ("inventory", "Reserve"),
    ("payments", "Charge"),
    ("inventory", "CommitReservation"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, services=[*CHECKOUT_SERVICES, *CONSUMERS], traces=True) as running:
        yield running


async def test_a_checkout_is_one_trace_across_grpc_and_nats(stack: Stack) -> None:
    # A plain channel, as a front-end's: no trace context of its own, so orders starts the trace.
    async with grpc.aio.insecure_channel(stack.address("inventory")) as channel:
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        await inventory.SetStock(inventory_pb2.SetStockRequest(product_id="prod_chef_knife", on_hand=5))
    async with grpc.aio.insecure_channel(stack.address("orders")) as channel:
        orders = orders_pb2_grpc.OrdersServiceStub(channel)
        placed = await orders.PlaceOrder(
            place_request(user(), "prod_chef_knife"), metadata=(("idempotency-key", str(uuid.uuid4())),)
        )
    assert placed.order.state == orders_pb2.ORDER_STATE_CONFIRMED

    def checkout_trace() -> Trace | None:
        for trace in load(stack.traces_dir):
            roots = trace.roots
            if (
                roots
                and roots[0]["name"].endswith(PLACE_ORDER)
                and roots[0]["attributes"].get("shopmesh.order_id", placed.order.id) == placed.order.id
            ):
                # Each service exports its spans in batches of its own, in no order across services.
                servers = {(s["service"], s["name"].rsplit("/", 1)[-1]) for s in trace.spans if s["kind"] == "server"}
                # The e-mail is sent last, by the sender's own loop, once the consumer has recorded it.
                mailed = any(s["service"] == "notifications" and s["name"] == SMTP_SEND for s in trace.spans)
                consumers = {s["service"] for s in trace.spans if s["kind"] == "consumer"}
                if servers >= CHECKOUT_SERVER_SPANS and mailed and consumers >= set(CONSUMERS):
                    return trace
        return None

    async def arrived() -> Trace | None:
        return checkout_trace()

    trace = await eventually(arrived, "the checkout's server spans and its e-mail in one trace")
    # Payments' Charge creates its own event (payment_captured) in the checkout's trace too.
    [create] = [s for s in trace.spans if s["kind"] == "producer" and s["name"] == f"create {CONFIRMED}"]
    assert create["service"] == "orders"
    assert create["attributes"]["messaging.operation.type"] == "create"

    async def send_arrived() -> dict[str, Any] | None:
        linked = [
            s
            for t in load(stack.traces_dir)
            for s in t.spans
            if {"trace_id": trace.trace_id, "span_id": create["span_id"]} in s.get("links", [])
        ]
        return linked[0] if linked else None

    send = await eventually(send_arrived, "the relay's send span, linked to the event's create span")
    assert (send["service"], send["kind"], send["name"]) == ("orders", "client", f"send {CONFIRMED}")
    assert send["trace_id"] != trace.trace_id
    assert send["attributes"]["messaging.message.id"] == create["attributes"]["messaging.message.id"]
    assert send["attributes"]["shopmesh.outcome"] == "published"
    assert send["attributes"]["shopmesh.outbox.wait_seconds"] >= 0
    by_id = {s["span_id"]: s for s in trace.spans}
    [root] = trace.roots
    assert (root["service"], root["kind"]) == ("orders", "server")

    def chain(span: dict[str, object]) -> list[str]:
        out = []
        while span["parent_span_id"] in by_id:
            span = by_id[str(span["parent_span_id"])]
            out.append(f"{span['service']}:{span['kind']}")
        return out

    servers = {(s["service"], s["name"].rsplit("/", 1)[-1]) for s in trace.spans if s["kind"] == "server"}
    assert servers == CHECKOUT_SERVER_SPANS
    for consumer in CONSUMERS:
        [span] = [s for s in trace.spans if s["service"] == consumer and s["kind"] == "consumer"]
        assert span["name"] == f"consume {CONFIRMED}", consumer
        assert span["parent_span_id"] == create["span_id"], consumer  # the event's creation context, stored with it
        assert chain(span)[-1] == "orders:server", consumer  # under the checkout, through the outbox and NATS
    [consumed] = [s for s in trace.spans if s["service"] == "notifications" and s["kind"] == "consumer"]
    # The e-mail, sent by the sender's loop after the consumer's span ended, under the span that recorded it.
    [sent] = [s for s in trace.spans if s["service"] == "notifications" and s["kind"] == "client"]
    assert sent["name"] == SMTP_SEND
    assert sent["parent_span_id"] == consumed["span_id"]
    assert sent["attributes"]["shopmesh.order_id"] == placed.order.id
    assert sent["attributes"]["shopmesh.outcome"] == "sent"
    assert sent["attributes"]["shopmesh.attempt"] == 1
    assert int(sent["start_ns"]) >= int(consumed["start_ns"])
    assert not trace.failed

    # What each consumer logged about the order (notifications: recorded, sent; recommendations: learned
    # from it) is JSON under the checkout's trace, as the spans are.
    assert stack.logs is not None
    for consumer in CONSUMERS:
        about = [json.loads(line) for line in stack.logs.text(consumer).splitlines() if placed.order.id in line]
        assert about, f"{consumer} logged nothing about {placed.order.id}"
        assert {(line.get("trace_id"), bool(line.get("span_id"))) for line in about} == {(trace.trace_id, True)}, about

    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shopmesh_platform.traces", trace.trace_id[:12], "--dir", str(stack.traces_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    header, first, *rest = shown.stdout.splitlines()
    assert header.startswith(f"trace {trace.trace_id}: {len(trace.spans)} spans")
    assert f"orders  server  {root['name']}" in first
    assert any(f"orders  producer  create {CONFIRMED}" in line for line in rest)
    assert any(f"orders  client  send {CONFIRMED}  (linked, trace {send['trace_id'][:8]})" in line for line in rest)
    assert any(f"notifications  consumer  consume {CONFIRMED}" in line for line in rest)
    assert any(f"notifications  client  {SMTP_SEND}" in line for line in rest)
