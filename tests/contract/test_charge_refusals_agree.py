"""What payments answers a charge it refuses as a request is what orders' PaymentsClient reads: the real payments
service (its validation and idempotency, on SQLite, over real gRPC) and orders' own client, which the saga tests
drive against stand-ins of the contract. A request payments refuses for a field of orders' (an amount of 0, the
charge's key reused with another request and nothing of the order's held) cancels the order as the shop's fault,
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


async def test_a_charge_key_payments_saw_with_another_order_is_no_declined_card(tmp_path: Path) -> None:
    async with _payments(tmp_path) as client:
        await client.charge("ord_2", 100, "USD", GOOD, "ord_1:charge")
        assert (await _refusal(client, 100, GOOD)).value == "PAYMENT_REQUEST_REJECTED"


async def test_a_charge_whose_first_request_under_its_key_was_declined_is_the_cards_refusal(tmp_path: Path) -> None:
    """The first charge's answer lost (the card declined), its retry sent otherwise: payments refuses it
    IDEMPOTENCY_KEY_REUSED, and the order is cancelled for the card, not as a request of ours at fault."""
    async with _payments(tmp_path) as client:
        assert await _refusal(client, 100, Card("4000000000000002", 12, 2030, "123")) is CancelCode.CARD_DECLINED
        with pytest.raises(PaymentRefused) as caught:
            await client.charge("ord_1", 200, "USD", GOOD, "ord_1:charge")
        assert caught.value.code is CancelCode.CARD_DECLINED
        assert caught.value.payment_id


async def test_a_charge_key_payments_saw_with_another_request_that_captured_the_total_is_the_orders_charge(
    tmp_path: Path,
) -> None:
    """The first charge's answer lost, its retry sent otherwise (another card of the customer's): payments
    refuses it IDEMPOTENCY_KEY_REUSED, and its capture of the order's total is the order's charge. Cancelled
    "nothing was charged", the order's stock would be released and the money kept."""
    async with _payments(tmp_path) as client:
        first = await client.charge("ord_1", 100, "USD", GOOD, "ord_1:charge")
        other_card = Card("5555555555554444", 11, 2031, "456")
        assert await client.charge("ord_1", 100, "USD", other_card, "ord_1:charge") == first


async def test_a_capture_of_another_amount_under_the_charge_key_is_no_charge_of_the_order(tmp_path: Path) -> None:
    """A capture of 100 is no charge of an order of 200: the order is refused as our request at fault, naming
    the capture, which compensation refunds."""
    async with _payments(tmp_path) as client:
        first = await client.charge("ord_1", 100, "USD", GOOD, "ord_1:charge")
        with pytest.raises(PaymentRefused) as caught:
            await client.charge("ord_1", 200, "USD", GOOD, "ord_1:charge")
        assert (caught.value.code, caught.value.payment_id) == (CancelCode.PAYMENT_REQUEST_REJECTED, first)
        with pytest.raises(PaymentRefused) as caught:
            await client.charge("ord_1", 100, "EUR", GOOD, "ord_1:charge")
        assert (caught.value.code, caught.value.payment_id) == (CancelCode.PAYMENT_REQUEST_REJECTED, first)


async def test_a_capture_of_another_amount_found_past_the_keys_retention_is_no_charge_of_the_order(
    tmp_path: Path,
) -> None:
    """ORDER_ALREADY_CHARGED (the key's outcome purged) names the order's capture: of another amount, it is no
    charge of the order either."""
    async with _payments(tmp_path) as client:
        first = await client.charge("ord_1", 100, "USD", GOOD, "ord_1:charge-before")
        with pytest.raises(PaymentRefused) as caught:
            await client.charge("ord_1", 200, "USD", GOOD, "ord_1:charge")
        assert (caught.value.code, caught.value.payment_id) == (CancelCode.PAYMENT_REQUEST_REJECTED, first)
        assert await client.charge("ord_1", 100, "USD", GOOD, "ord_1:charge-again") == first
