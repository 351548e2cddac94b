"""PaymentCaptured and PaymentRefunded reach the PAYMENTS stream of a real nats-server exactly once, with
the event id as Nats-Msg-Id; and the service serves while NATS is away, publishing once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from shopmesh.payments.v1 import events_pb2
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server

from .conftest import Payments, charge_request, running_payments


async def stream_messages(client: Client) -> list[tuple[str, dict[str, str], bytes]]:
    """(subject, headers, payload) of every message in the PAYMENTS stream, in order."""
    js = client.jetstream()
    info = await js.stream_info("PAYMENTS")
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg("PAYMENTS", seq)
        messages.append((message.subject or "", dict(message.headers or {}), message.data or b""))
    return messages


async def all_published(payments: Payments) -> bool:
    outbox = await payments.outbox()
    return bool(outbox) and all(published for _, published in outbox)


async def test_capture_and_refund_reach_the_stream_once_each_with_the_event_id_as_msg_id(
    tmp_path: Path, nats_srv: NatsServer
) -> None:
    async with running_payments(tmp_path, background=True, nats_url=nats_srv.url) as payments:
        captured = (await payments.charge(charge_request("ord_1", amount_minor=4200), key="ord_1:charge")).payment
        await payments.charge(charge_request("ord_1", amount_minor=4200), key="ord_1:charge")  # replayed
        await payments.refund(captured.id, key="ord_1:refund", reason="cancelled")
        await payments.refund(captured.id, key="ord_1:refund-again", reason="cancelled")  # already refunded
        await eventually(lambda: all_published(payments), "every outbox event published")
        assert await payments.outbox() == [
            ("payments.v1.payment_captured", True),
            ("payments.v1.payment_refunded", True),
        ]
    client = await nats.connect(nats_srv.url)
    try:
        messages = await stream_messages(client)
    finally:
        await client.close()
    assert [subject for subject, _, _ in messages] == ["payments.v1.payment_captured", "payments.v1.payment_refunded"]
    (_, captured_headers, captured_data), (_, refunded_headers, refunded_data) = messages
    event = events_pb2.PaymentCaptured.FromString(captured_data)
    assert captured_headers["Nats-Msg-Id"] == event.event_id
    assert event.event_id.startswith("evt_")
    assert (event.payment_id, event.order_id, event.amount.amount_minor, event.amount.currency, event.card_last4) == (
        captured.id,
        "ord_1",
        4200,
        "USD",
        "4242",
    )
    assert event.occurred_at == captured.created_at
    assert "traceparent" in captured_headers
    refund = events_pb2.PaymentRefunded.FromString(refunded_data)
    assert refunded_headers["Nats-Msg-Id"] == refund.event_id
    assert (refund.payment_id, refund.order_id, refund.amount.amount_minor, refund.reason) == (
        captured.id,
        "ord_1",
        4200,
        "cancelled",
    )


async def test_the_service_serves_while_nats_is_away_and_publishes_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    settings: dict[str, Any] = {"nats_url": f"nats://127.0.0.1:{port}"}
    async with running_payments(tmp_path, background=True, **settings) as payments:
        captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
        assert await payments.outbox() == [("payments.v1.payment_captured", False)]
        with nats_server(tmp_path / "nats", port=port) as server:
            await eventually(lambda: all_published(payments), "every outbox event published")
            assert await payments.outbox() == [("payments.v1.payment_captured", True)]
            client = await nats.connect(server.url)
            try:
                messages = await stream_messages(client)
            finally:
                await client.close()
            # Stop the service while NATS is still up, so its connection drains cleanly.
            await payments.runtime.stop()
    assert len(messages) == 1
    assert events_pb2.PaymentCaptured.FromString(messages[0][2]).payment_id == captured.id
