"""What payments answers a charge it refuses as a request is what orders' PaymentsClient reads: the real payments
service (its validation and idempotency, on SQLite, over real gRPC) and orders' own client, which the saga tests
drive against stand-ins of the contract. A request payments refuses for a field of orders' (an amount of 0, the
charge's key reused with another request and no capture held) cancels the order as the shop's fault,
PAYMENT_REQUEST_REJECTED; only a refusal of the card itself is told to the customer as a declined (or expired)
card."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database, sqlite_url
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import serve_in_process
from shopmesh_orders.clients import PaymentsClient
from shopmesh_orders.domain.model import CancelCode
from shopmesh_orders.domain.ports import PaymentRefused
from shopmesh_orders.domain.validation import Card
from shopmesh_payments.migrations import VERSIONS
from shopmesh_payments.settings import PaymentsSettings
from shopmesh_payments.store.tables import metadata
from shopmesh_payments.wiring import PaymentsRuntime

SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
GOOD = Card("4242424242424242", 12, 2030, "123")


@asynccontextmanager
async def _payments(tmp_path: Path) -> AsyncIterator[PaymentsClient]:
    database = Database(sqlite_url(tmp_path, "payments"))
    await migrate(database, VERSIONS, metadata)
    settings = load_settings(PaymentsSettings, grpc_port=0, metrics_port=-1, data_dir=str(tmp_path))
    runtime = PaymentsRuntime(settings, database)
    try:
        async with (
            serve_in_process(settings, [runtime.binding]) as server,
            ResilientChannel(server.address, [SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
        ):
            yield PaymentsClient(channel.channel, timeout=5, unknown_state_wait=1)
    finally:
        await database.dispose()


async def _refusal(client: PaymentsClient, amount_minor: int, card: Card, key: str = "ord_1:charge") -> CancelCode:
    with pytest.raises(PaymentRefused) as caught:
        await client.charge("ord_1", amount_minor, "USD", card, key)
    return caught.value.code


async def test_a_charge_of_an_amount_payments_refuses_is_no_declined_card(tmp_path: Path) -> None:
    async with _payments(tmp_path) as client:
        assert (await _refusal(client, 0, GOOD)).value == "PAYMENT_REQUEST_REJECTED"
        # The card is still the card's: a number failing the Luhn check, an expired one.
        assert await _refusal(client, 100, Card("4242424242424241", 12, 2030, "123")) is CancelCode.CARD_DECLINED
        assert await _refusal(client, 100, Card("4242424242424242", 1, 2020, "123")) is CancelCode.CARD_EXPIRED
        assert await _refusal(client, 100, Card("4000000000000002", 12, 2030, "123")) is CancelCode.CARD_DECLINED


async def test_a_charge_key_payments_saw_with_another_request_and_no_capture_is_no_declined_card(
    tmp_path: Path,
) -> None:
    async with _payments(tmp_path) as client:
        assert await _refusal(client, 100, Card("4000000000000002", 12, 2030, "123")) is CancelCode.CARD_DECLINED
        assert (await _refusal(client, 200, GOOD)).value == "PAYMENT_REQUEST_REJECTED"


async def test_a_charge_key_payments_saw_with_another_request_that_captured_is_the_orders_charge(
    tmp_path: Path,
) -> None:
    """The first charge's answer lost, its retry sent otherwise (another release, a price re-read): payments
    refuses it IDEMPOTENCY_KEY_REUSED, and its capture is the order's charge. Cancelled "nothing was charged",
    as it was, the order's stock was released and the money kept."""
    async with _payments(tmp_path) as client:
        first = await client.charge("ord_1", 100, "USD", GOOD, "ord_1:charge")
        assert await client.charge("ord_1", 200, "USD", GOOD, "ord_1:charge") == first
