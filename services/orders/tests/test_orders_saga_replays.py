"""PlaceOrder sent again with its idempotency key: the same request replays the first call's outcome (its
order, its failure, the products it named short) without charging again, even once the card has expired;
another request under the key is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import OrderState
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.saga import SagaDriver

from .conftest import FakeCatalog, FakePayments
from .saga_kit import DECLINED, GOOD, command, place


async def test_replayed_place_order_returns_the_same_order_and_charges_once(
    app: OrdersApplication, payments: FakePayments
) -> None:
    first = await place(app, command())
    again = await place(app, command())
    assert first == again
    assert payments.captured() == 1


async def test_replayed_failed_order_replays_the_failure(app: OrdersApplication, payments: FakePayments) -> None:
    for _ in range(2):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command(DECLINED))
        assert caught.value.reason == "CARD_DECLINED"
    assert payments.charge_calls == 1


async def test_same_key_with_another_request_is_rejected(app: OrdersApplication) -> None:
    await place(app, command())
    with pytest.raises(errors.InvalidArgument) as caught:
        await place(app, command(GOOD, CartLine("prod_a", 1)))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_a_retry_after_the_card_expired_returns_the_order_its_first_call_placed(
    database: Database, catalog: FakeCatalog, saga: SagaDriver, payments: FakePayments
) -> None:
    # The card is valid through December 2030; the first call is placed a second before it expires.
    now = [datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)]
    app = OrdersApplication(database, catalog, saga, clock=lambda: now[0])
    card = Card("4242424242424242", 12, 2030, "123")
    order_id = await place(app, command(card))
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED
    # Its answer was lost (the client's deadline); the client retries with the same key and request.
    now[0] = datetime(2031, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert await place(app, command(card)) == order_id
    assert payments.captured() == 1


async def test_a_retried_place_order_names_the_short_products_from_the_stored_order(app: OrdersApplication) -> None:
    """The retry answers from the stored order (no second reservation): what inventory said is kept."""
    cmd = command(GOOD, CartLine("prod_a", 1), CartLine("prod_b", 2))
    for _ in range(2):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, cmd)
        assert caught.value.reason == "INSUFFICIENT_STOCK"
        assert {k: v for k, v in caught.value.metadata.items() if k != "order_id"} == {
            "product_ids": "prod_b",
            "short_count": "1",
        }
