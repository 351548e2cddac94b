"""The checkout saga against fakes of inventory and payments, with the real orders database (and, where what
inventory answers on the wire decides the outcome, orders' own InventoryClient over real gRPC to a test servicer
of inventory's contract: `_with_inventory_over_grpc`).

Each test states an end-to-end invariant of the saga: what is charged, what stock is held, which event
is in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.db import Database
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_orders import codec
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import InventoryClient, PaymentsClient
from shopmesh_orders.domain.model import Address, CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.domain.ports import DependencyDown
from shopmesh_orders.domain.validation import Card, CartLine, PlaceOrder
from shopmesh_orders.saga import RESERVATION_IN_DOUBT, LeaseHeld, SagaDriver, charge_key
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import OrderRepository

from .conftest import FakeCatalog, FakeInventory, FakePayments

INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]
PAYMENTS_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
GOOD = Card("4242424242424242", 12, 2030, "123")
DECLINED = Card("4000000000000002", 12, 2030, "123")
PROCESSOR_DOWN = Card("4000000000000119", 12, 2030, "123")


def command(card: Card = GOOD, *items: CartLine) -> PlaceOrder:
    return PlaceOrder(
        user_id="usr_1",
        items=items or (CartLine("prod_a", 2),),
        currency="USD",
        address=Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB"),
        email="ada@example.com",
        card=card,
    )


@pytest.fixture
def saga(database: Database, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings) -> SagaDriver:
    return SagaDriver(database, inventory, payments, settings)


@pytest.fixture
def app(database: Database, catalog: FakeCatalog, saga: SagaDriver) -> OrdersApplication:
    return OrdersApplication(database, catalog, saga)


async def place(app: OrdersApplication, cmd: PlaceOrder, key: str = "key-1") -> str:
    fingerprint = hashlib.sha256(repr(cmd).encode()).hexdigest()
    return (await app.place_order(cmd, key, scope="usr_1|PlaceOrder", fingerprint=fingerprint)).id


async def events(database: Database) -> list[tuple[str, bytes]]:
    async with database.transaction() as session:
        rows = (
            await session.execute(
                select(outbox_events.c.subject, outbox_events.c.payload).order_by(outbox_events.c.seq)
            )
        ).all()
    return [(row.subject, row.payload) for row in rows]


async def test_successful_checkout_confirms_charges_once_and_commits_stock(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    order_id = await place(app, command())
    order = await app.get_order(order_id)
    assert order.state is OrderState.CONFIRMED
    assert order.total_minor == 2500
    assert payments.captured() == 1
    assert inventory.on_hand["prod_a"] == 3
    assert inventory.reserved("prod_a") == 0
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_confirmed"
    event = events_pb2.OrderConfirmed.FromString(payload)
    assert (event.order_id, event.total.amount_minor, event.email) == (order_id, 2500, "ada@example.com")


async def test_declined_card_cancels_and_gives_the_stock_back(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(DECLINED))
    assert caught.value.reason == "CARD_DECLINED"
    order = await app.get_order(caught.value.metadata["order_id"])
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CARD_DECLINED)
    assert payments.captured() == 0
    assert inventory.reserved("prod_a") == 0
    assert inventory.on_hand["prod_a"] == 5
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    assert not events_pb2.OrderCancelled.FromString(payload).refunded


async def test_insufficient_stock_cancels_without_charging(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(GOOD, CartLine("prod_b", 2)))
    assert caught.value.reason == "INSUFFICIENT_STOCK"
    assert payments.charge_calls == 0
    assert "release" not in inventory.calls


async def test_payments_unavailable_is_retried_then_compensated(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(PROCESSOR_DOWN))
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    assert payments.charge_calls == settings.step_attempts
    assert payments.captured() == 0
    assert inventory.reserved("prod_a") == 0


class ProcessorAwayOnce(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments over a real socket whose processor is away for the first Charge (UNAVAILABLE with RetryInfo, as
    payments answers, here 60 s) and back for the next, which captures."""

    def __init__(self) -> None:
        self.charges = 0

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        self.charges += 1
        if self.charges == 1:
            raise errors.Unavailable(
                "the processor is unavailable", reason="PROCESSOR_UNAVAILABLE", retry_after_seconds=60
            )
        payment = payments_pb2.Payment(id="pay_1", order_id=request.order_id, state=payments_pb2.PAYMENT_STATE_CAPTURED)
        return payments_pb2.ChargeResponse(payment=payment)


async def test_a_charge_payments_told_a_short_step_deadline_not_to_retry_is_sent_again_and_confirms(
    database: Database, catalog: FakeCatalog, inventory: FakeInventory, settings: OrdersSettings
) -> None:
    """Payments' 60 s wait does not fit the charge's 5 s deadline, so its chassis answers with gRPC's "do not
    retry" for that call: a transient answer, not a final one, and the saga sends the charge again with a fresh
    deadline, which captures (taken as final, the order was cancelled PAYMENT_UNAVAILABLE after one call). The
    wait is far past the deadline, not just past it, so that a loaded machine cannot stall the first charge
    into DEADLINE_EXCEEDED (CHARGE_IN_DOUBT) before its answer."""
    servicer = ProcessorAwayOnce()
    binding = ServiceBinding(PAYMENTS_SERVICE, servicer, payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS_SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        payments = PaymentsClient(channel.channel, timeout=5, unknown_state_wait=settings.recovery_interval_seconds)
        app = OrdersApplication(database, catalog, SagaDriver(database, inventory, payments, settings))
        order = await app.get_order(await place(app, command()))
    assert (order.state, servicer.charges, inventory.on_hand["prod_a"]) == (OrderState.CONFIRMED, 2, 3)


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


async def test_unknown_product_records_no_order(app: OrdersApplication, database: Database) -> None:
    with pytest.raises(errors.NotFound) as caught:
        await place(app, command(GOOD, CartLine("prod_zzz", 1)))
    assert caught.value.reason == "PRODUCT_NOT_FOUND"
    assert await app.list_orders("usr_1", 10, "") == ([], "")


async def test_inventory_down_leaves_the_order_pending_for_recovery(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    assert (await app.get_order(order_id)).state is OrderState.PENDING
    inventory.down = False
    assert await app.resume_unfinished() == 1
    # Resumed without the card (never stored): no charge was ever sent, so the order is cancelled; for the
    # interruption, not PAYMENT_UNAVAILABLE (payments was up: its alert would blame the wrong service).
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    assert inventory.reserved("prod_a") == 0
    assert payments.charge_calls == 0


async def _crash_at(database: Database, order_id: str, step: SagaStep, **fields: object) -> None:
    """Make the order look as a killed driver left it: at `step`, lease run out."""
    async with database.transaction() as session:
        repo = OrderRepository(session)
        order = await repo.get(order_id)
        assert order is not None
        await repo.save(replace(order, step=step, state=OrderState.PENDING, **fields))  # type: ignore[arg-type]
        await repo.release(order_id, "nobody")


async def test_resume_after_a_crash_past_the_charge_confirms_without_charging_again(
    app: OrdersApplication, saga: SagaDriver, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    order_id = await place(app, command())
    # As if the driver died right after the charge was captured, before the commit.
    reservation_id = (await app.get_order(order_id)).reservation_id
    inventory.reservations[reservation_id] = (order_id, (CartLine("prod_a", 2),), "PENDING")
    inventory.on_hand["prod_a"] += 2
    await _crash_at(database, order_id, SagaStep.COMMIT)
    assert await app.resume_unfinished() == 1
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED
    assert payments.captured() == 1
    assert inventory.on_hand["prod_a"] == 3


async def _left_at_the_pivot(
    app: OrdersApplication, database: Database, inventory: FakeInventory, charge_attempted_at: datetime
) -> str:
    """An order as left by a driver that reserved the stock, sent the charge at `charge_attempted_at`, and died."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id: str = caught.value.metadata["order_id"]
    inventory.down = False
    reservation_id = await inventory.reserve(order_id, [CartLine("prod_a", 2)], 60)
    await _crash_at(
        database, order_id, SagaStep.CHARGE, reservation_id=reservation_id, charge_attempted_at=charge_attempted_at
    )
    return order_id


async def test_resume_at_the_pivot_asks_payments_what_happened(
    app: OrdersApplication,
    inventory: FakeInventory,
    payments: FakePayments,
    database: Database,
    settings: OrdersSettings,
) -> None:
    # The dead driver had reserved and sent the charge, and payments captured it.
    order_id = await _left_at_the_pivot(app, database, inventory, datetime.now(UTC) - timedelta(seconds=60))
    payment_id = await payments.charge(order_id, 2500, "USD", GOOD, f"{order_id}:charge")
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.payment_id) == (OrderState.CONFIRMED, payment_id)
    assert payments.captured() == 1


class Clock:
    """The saga's and recovery's clock, moved forward by the test."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class ChargeInDoubt:
    app: OrdersApplication
    clock: Clock
    order_id: str


@dataclass
class Clocked:
    """Builds orders' application on the test's fakes and database, with a clock the test moves.

    The step timeout is 5 s, so a charge is in doubt for 10 s after it was sent."""

    database: Database
    catalog: FakeCatalog
    inventory: FakeInventory
    payments: FakePayments
    settings: OrdersSettings
    clock: Clock

    def app(self, on_late_refund: Callable[[Order], None] = lambda order: None) -> OrdersApplication:
        settings = self.settings.model_copy(update={"step_timeout_seconds": 5.0})
        saga = SagaDriver(
            self.database, self.inventory, self.payments, settings, on_late_refund=on_late_refund, clock=self.clock
        )
        return OrdersApplication(self.database, self.catalog, saga, clock=self.clock)


@pytest.fixture
def clocked(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
) -> Clocked:
    return Clocked(database, catalog, inventory, payments, settings, Clock())


@pytest.fixture
async def in_doubt(clocked: Clocked) -> ChargeInDoubt:
    """An order whose driver reserved, sent the charge a moment ago and is gone: the charge may still land."""
    app = clocked.app()
    order_id = await _left_at_the_pivot(app, clocked.database, clocked.inventory, datetime.now(UTC))
    return ChargeInDoubt(app, clocked.clock, order_id)


async def test_a_charge_in_doubt_is_not_given_up_and_a_late_capture_confirms_the_order(
    in_doubt: ChargeInDoubt, inventory: FakeInventory, payments: FakePayments
) -> None:
    app, clock, order_id = in_doubt.app, in_doubt.clock, in_doubt.order_id
    # Recovery has no card and payments knows of no charge yet: it must not conclude "never charged".
    assert await app.resume_unfinished() == 1
    order = await app.get_order(order_id)
    assert (order.state, order.step) == (OrderState.PENDING, SagaStep.CHARGE)
    assert inventory.reserved("prod_a") == 2
    # The earlier driver's charge commits on payments after all.
    payment_id = await payments.charge(order_id, 2500, "USD", GOOD, charge_key(order_id))
    clock.ahead = timedelta(seconds=11)
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.payment_id) == (OrderState.CONFIRMED, payment_id)
    assert (payments.captured(), payments.refunds) == (1, [])
    assert inventory.on_hand["prod_a"] == 3


async def test_a_charge_in_doubt_that_lands_while_payments_is_down_is_refunded_once_it_is_back(
    in_doubt: ChargeInDoubt, inventory: FakeInventory, payments: FakePayments
) -> None:
    app, clock, order_id = in_doubt.app, in_doubt.clock, in_doubt.order_id
    await app.resume_unfinished()
    assert (await app.get_order(order_id)).step is SagaStep.CHARGE
    await payments.charge(order_id, 2500, "USD", GOOD, charge_key(order_id))
    payments.down = True
    # Past the charge's window payments still cannot say: the saga gives up and cancels, but nothing is
    # concluded about the charge until payments answers (the order waits at COMPENSATE, not stuck at CHARGE).
    clock.ahead = timedelta(seconds=11)
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.cancel_code) == (
        OrderState.PENDING,
        SagaStep.COMPENSATE,
        CancelCode.PAYMENT_UNAVAILABLE,
    )
    payments.down = False
    clock.ahead = timedelta(seconds=13)
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.refunded) == (OrderState.CANCELLED, True)
    assert (payments.captured(), len(payments.refunds)) == (0, 1)
    assert (inventory.reserved("prod_a"), inventory.on_hand["prod_a"]) == (0, 5)
    # Payments was asked after the charge's window: nothing is left to check again.
    assert order.charge_recheck_at is None


async def test_a_charge_in_doubt_that_never_landed_cancels_as_checkout_interrupted_once_its_window_has_passed(
    in_doubt: ChargeInDoubt, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    """The driver holding the card died with its charge sent (or about to be: the mark is written with the
    reservation) and no answer; payments never captured. Payments failed nothing that anyone saw: the checkout
    was interrupted, and PAYMENT_UNAVAILABLE (whose alert blames payments) would say more than is known."""
    app, clock, order_id = in_doubt.app, in_doubt.clock, in_doubt.order_id
    await app.resume_unfinished()
    assert (await app.get_order(order_id)).step is SagaStep.CHARGE
    clock.ahead = timedelta(seconds=11)
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    # Asked after the charge's window: nothing left to check again, nothing charged, the stock is back.
    assert (order.refunded, order.charge_recheck_at) == (False, None)
    assert (payments.charge_calls, payments.captured(), inventory.reserved("prod_a")) == (0, 0, 0)
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    cancelled = events_pb2.OrderCancelled.FromString(payload)
    assert (cancelled.reason.code, cancelled.refunded) == (orders_pb2.CANCEL_REASON_CODE_CHECKOUT_INTERRUPTED, False)


@dataclass
class CancelledInDoubt:
    """An order PlaceOrder cancelled at once because each of its charge calls ended UNAVAILABLE."""

    app: OrdersApplication
    clock: Clock
    order_id: str
    late_refunds: list[str]


@pytest.fixture
async def cancelled_in_doubt(clocked: Clocked, settings: OrdersSettings) -> CancelledInDoubt:
    late_refunds: list[str] = []
    app = clocked.app(on_late_refund=lambda order: late_refunds.append(order.id))
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(PROCESSOR_DOWN))
    # PlaceOrder still answers at once: it does not wait for the charge's window.
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    assert clocked.payments.charge_calls == settings.step_attempts
    order_id: str = caught.value.metadata["order_id"]
    order = await app.get_order(order_id)
    assert (order.state, order.charge_recheck_at is not None) == (OrderState.CANCELLED, True)
    return CancelledInDoubt(app, clocked.clock, order_id, late_refunds)


def _hold_refunds(payments: FakePayments, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Refunds wait in payments: the first event is set when one arrives, the second lets them through."""
    refund, refunding, release = payments.refund, asyncio.Event(), asyncio.Event()

    async def slow_refund(payment_id: str, reason: str, idempotency_key: str) -> None:
        refunding.set()
        await release.wait()
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "refund", slow_refund)
    return refunding, release


async def _late_capture(payments: FakePayments, order_id: str) -> str:
    """The last charge call's commit on payments, under way when its deadline passed, completes now."""
    return await payments.charge(order_id, 2500, "USD", GOOD, charge_key(order_id))


async def test_a_capture_that_lands_after_place_order_cancelled_is_refunded_once_its_window_has_passed(
    cancelled_in_doubt: CancelledInDoubt,
    payments: FakePayments,
    inventory: FakeInventory,
    database: Database,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    payment_id = await _late_capture(payments, order_id)
    # Within the charge's window nothing is asked yet.
    assert await app.recheck_charges() == 0
    assert (payments.captured(), payments.refund_calls) == (1, 0)
    # Past it, the recovery loop finds the capture and refunds it.
    clock.ahead = timedelta(seconds=11)
    recheck_charges, refunding_pass_done = app.recheck_charges, asyncio.Event()

    async def recheck_pass(limit: int = 50) -> int:
        checked = await recheck_charges(limit)
        if payments.refunds:
            refunding_pass_done.set()
        return checked

    monkeypatch.setattr(app, "recheck_charges", recheck_pass)
    recovery = asyncio.create_task(app.run_recovery(0.01))
    try:
        await asyncio.wait_for(refunding_pass_done.wait(), 5)
    finally:
        recovery.cancel()
    assert (payments.captured(), payments.refunds) == (0, [payment_id])
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.PAYMENT_UNAVAILABLE)
    assert (order.refunded, order.charge_recheck_at) == (True, None)
    assert cancelled_in_doubt.late_refunds == [order_id]
    assert any(r.levelname == "ERROR" and order_id in r.getMessage() for r in caplog.records)
    # The customer was told of the cancellation once; the refund sends no second OrderCancelled.
    [(subject, _payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    assert (inventory.reserved("prod_a"), inventory.on_hand["prod_a"]) == (0, 5)
    # Checked once: later passes leave it alone.
    clock.ahead = timedelta(seconds=60)
    assert await app.recheck_charges() == 0
    assert (payments.refund_calls, cancelled_in_doubt.late_refunds) == (1, [order_id])


async def test_two_drivers_refund_a_late_capture_once(
    cancelled_in_doubt: CancelledInDoubt,
    clocked: Clocked,
    payments: FakePayments,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    other_late_refunds: list[str] = []
    other = clocked.app(on_late_refund=lambda order: other_late_refunds.append(order.id))
    payment_id = await _late_capture(payments, order_id)
    clock.ahead = timedelta(seconds=11)
    refunding, release = _hold_refunds(payments, monkeypatch)
    first = asyncio.create_task(app.recheck_charges())
    await refunding.wait()
    # The other replica's pass runs while the first is refunding: the order is not its to check.
    assert await other.recheck_charges() == 0
    release.set()
    assert await first == 1
    assert await other.recheck_charges() == 0
    assert (payments.refund_calls, payments.refunds) == (1, [payment_id])
    assert (cancelled_in_doubt.late_refunds, other_late_refunds) == ([order_id], [])


async def test_a_cancelled_order_whose_charge_never_landed_is_checked_once_and_not_refunded(
    cancelled_in_doubt: CancelledInDoubt, payments: FakePayments, caplog: pytest.LogCaptureFixture
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    listed = payments.list_calls
    clock.ahead = timedelta(seconds=11)
    assert await app.recheck_charges() == 1
    assert (payments.list_calls, payments.refund_calls) == (listed + 1, 0)
    order = await app.get_order(order_id)
    assert (order.state, order.refunded, order.charge_recheck_at) == (OrderState.CANCELLED, False, None)
    assert await app.recheck_charges() == 0
    assert payments.list_calls == listed + 1
    assert cancelled_in_doubt.late_refunds == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_late_capture_is_refunded_once_payments_answers_again(
    cancelled_in_doubt: CancelledInDoubt, payments: FakePayments
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    payment_id = await _late_capture(payments, order_id)
    payments.down = True
    clock.ahead = timedelta(seconds=11)
    # Payments cannot answer: the check waits, it is not given up, and the pass does not fail.
    assert await app.recheck_charges() == 1
    order = await app.get_order(order_id)
    assert (order.refunded, order.charge_recheck_at is not None) == (False, True)
    assert await app.recheck_charges() == 1
    payments.down = False
    clock.ahead = timedelta(seconds=15)
    assert await app.recheck_charges() == 1
    assert payments.refunds == [payment_id]
    order = await app.get_order(order_id)
    assert (order.refunded, order.charge_recheck_at) == (True, None)
    assert cancelled_in_doubt.late_refunds == [order_id]


async def test_a_capture_found_by_compensation_leaves_nothing_to_check_again(
    clocked: Clocked, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = clocked.app()
    charge = payments.charge

    async def lands_but_times_out(
        order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str
    ) -> str:
        await charge(order_id, amount_minor, currency, GOOD, idempotency_key)
        raise errors.Unavailable("deadline exceeded", reason="PAYMENT_UNAVAILABLE")

    monkeypatch.setattr(payments, "charge", lands_but_times_out)
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    order = await app.get_order(caught.value.metadata["order_id"])
    assert (order.state, order.refunded, order.charge_recheck_at) == (OrderState.CANCELLED, True, None)
    assert payments.refund_calls == 1


async def test_reservation_expired_after_charge_refunds_and_cancels(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    inventory.expire_on_commit = True
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == "RESERVATION_EXPIRED"
    assert payments.captured() == 0
    assert len(payments.refunds) == 1
    (_, payload) = (await events(database))[-1]
    assert events_pb2.OrderCancelled.FromString(payload).refunded


async def test_a_retry_reaching_a_reservation_that_expired_cancels_without_charging(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    """Reserve is keyed by order id and replays the order's reservation whatever its state: a PlaceOrder
    retry that finds the order still at RESERVE after its reservation expired must not charge the card (a
    charge that the commit then refuses, refunded)."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    # The first driver's Reserve went through but its answer was lost; the reservation expired since.
    inventory.reservations["res_9"] = (order_id, (CartLine("prod_a", 2),), "EXPIRED")
    inventory.down = False
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == "RESERVATION_EXPIRED"
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code, order.refunded) == (
        OrderState.CANCELLED,
        CancelCode.RESERVATION_EXPIRED,
        False,
    )
    assert payments.charge_calls == 0
    assert inventory.reserved("prod_a") == 0
    (_, payload) = (await events(database))[-1]
    assert not events_pb2.OrderCancelled.FromString(payload).refunded


async def _reserved_by_recovery_while_payments_is_down(
    clocked: Clocked, inventory: FakeInventory, payments: FakePayments
) -> tuple[OrdersApplication, str, str]:
    """An order whose PlaceOrder gave up on inventory, then reserved by the recovery loop (no card) while
    payments could not say whether a charge exists: left PENDING at CHARGE, nothing charged."""
    app = clocked.app()
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    inventory.down = False
    payments.down = True
    clocked.clock.ahead = timedelta(seconds=5)
    assert await app.resume_unfinished() == 1
    order = await app.get_order(order_id)
    assert (order.state, order.step, payments.charge_calls) == (OrderState.PENDING, SagaStep.CHARGE, 0)
    payments.down = False
    return app, order_id, order.reservation_id


async def test_a_retry_with_the_card_past_the_saga_deadline_does_not_charge_for_a_lapsed_reservation(
    clocked: Clocked, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    """A PlaceOrder retried with the card once the saga's deadline (the reservation TTL) has passed finds the
    order at the charge step: if inventory's reservation lapsed meanwhile, the stock is gone and the commit
    would refuse it, so the card must not be charged (a capture of the customer's money, then a refund)."""
    app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(clocked, inventory, payments)
    clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 10)
    inventory.reservations[reservation_id] = (order_id, (CartLine("prod_a", 2),), "EXPIRED")
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == "RESERVATION_EXPIRED"
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code, order.refunded) == (
        OrderState.CANCELLED,
        CancelCode.RESERVATION_EXPIRED,
        False,
    )
    assert (payments.charge_calls, payments.refunds) == (0, [])


async def test_a_retry_with_the_card_past_the_saga_deadline_charges_while_the_reservation_still_holds(
    clocked: Clocked, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    """The recovery loop reserved later than the order was placed, so its reservation can outlive the
    order's own deadline: a retry that finds it still held confirms the order."""
    app, order_id, _ = await _reserved_by_recovery_while_payments_is_down(clocked, inventory, payments)
    clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 1)
    assert await place(app, command()) == order_id
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED
    assert (payments.captured(), payments.refunds) == (1, [])


async def test_a_retry_with_the_card_past_the_saga_deadline_is_not_blamed_on_payments_when_inventory_is_down(
    clocked: Clocked, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    """Inventory cannot say whether the stock is still held: the saga goes on as it did without asking (the
    commit waits for inventory), rather than cancel the order as PAYMENT_UNAVAILABLE, which payments was not."""
    app, order_id, _ = await _reserved_by_recovery_while_payments_is_down(clocked, inventory, payments)
    clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 1)
    inventory.down = True
    with pytest.raises(errors.Unavailable):
        await place(app, command())
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.cancel_code) == (OrderState.PENDING, SagaStep.COMMIT, None)
    inventory.down = False
    assert await place(app, command()) == order_id
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED
    assert (payments.captured(), payments.refunds) == (1, [])


@dataclass
class Reachable:
    """Orders' InventoryClient, cut off while `down` (the DependencyDown a transport failure gives)."""

    client: InventoryClient
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise DependencyDown("inventory down")

    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        self._check()
        return await self.client.reserve(order_id, items, ttl_seconds)

    async def commit(self, reservation_id: str) -> None:
        self._check()
        await self.client.commit(reservation_id)

    async def release(self, reservation_id: str) -> None:
        self._check()
        await self.client.release(reservation_id)


# A ReservationState number this release of the contract has no name for: what a newer inventory storing a new
# state (say ON_HOLD) puts on the wire to this release of orders.
A_NEWER_RELEASES_STATE = inventory_pb2.ReservationState.ValueType(max(inventory_pb2.ReservationState.values()) + 1)


class InventoryOnTheWire(inventory_pb2_grpc.InventoryServiceServicer):
    """InventoryService as its contract describes the reservation calls, in memory, for orders' InventoryClient to
    call over a real gRPC socket: Reserve replays the order's reservation whatever its state (the number stored,
    even one this release cannot name) and reserves anew only for an order it has none for; Commit and Release
    refuse what inventory refuses (FAILED_PRECONDITION, by state), and an id it does not have is NOT_FOUND,
    RESERVATION_NOT_FOUND. Stock levels and expiry are left out: the tests set the states. Every Release is
    recorded. The next `reserve_races_to_lose` Reserves (and `release_races_to_lose` Releases) answer ABORTED, as
    inventory does when its write lost a concurrency race (a serialization failure, or a state change that lost
    its retries). While `asks_to_wait` is set, every call answers UNAVAILABLE with RetryInfo asking for that many
    seconds, as an inventory draining or shedding load does (`asked_to_wait` counts them)."""

    def __init__(self) -> None:
        self.reservations: dict[str, inventory_pb2.Reservation] = {}
        self.released: list[str] = []
        self.reserve_races_to_lose = 0
        self.release_races_to_lose = 0
        self.asks_to_wait: float | None = None
        # How many calls answered so.
        self.asked_to_wait = 0

    def _check_available(self) -> None:
        if self.asks_to_wait is not None:
            self.asked_to_wait += 1
            raise errors.Unavailable("inventory is draining", retry_after_seconds=self.asks_to_wait)

    @staticmethod
    def _lost_race() -> errors.Aborted:
        return errors.Aborted("concurrent update of the same records; retry", reason="CONCURRENT_UPDATE")

    def of_order(self, order_id: str) -> inventory_pb2.Reservation | None:
        return next((r for r in self.reservations.values() if r.order_id == order_id), None)

    def held(self, product_id: str) -> int:
        return sum(
            i.quantity
            for r in self.reservations.values()
            if r.state == inventory_pb2.RESERVATION_STATE_PENDING
            for i in r.items
            if i.product_id == product_id
        )

    def _get(self, reservation_id: str) -> inventory_pb2.Reservation:
        if reservation_id not in self.reservations:
            raise errors.NotFound(
                f"reservation {reservation_id!r} not found",
                reason="RESERVATION_NOT_FOUND",
                metadata={"reservation_id": reservation_id},
            )
        return self.reservations[reservation_id]

    @staticmethod
    def _refused(reservation: inventory_pb2.Reservation) -> errors.FailedPrecondition:
        reason = {
            inventory_pb2.RESERVATION_STATE_EXPIRED: "RESERVATION_EXPIRED",
            inventory_pb2.RESERVATION_STATE_RELEASED: "RESERVATION_RELEASED",
        }.get(reservation.state, "RESERVATION_STATE_UNKNOWN")
        return errors.FailedPrecondition(
            f"reservation {reservation.id!r}: {reason}", reason=reason, metadata={"reservation_id": reservation.id}
        )

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> inventory_pb2.ReserveResponse:
        self._check_available()
        if self.reserve_races_to_lose:
            self.reserve_races_to_lose -= 1
            raise self._lost_race()
        reservation = self.of_order(request.order_id)
        if reservation is None:
            reservation = inventory_pb2.Reservation(
                id=f"res_{uuid.uuid4().hex}",  # never an id it had before, as inventory
                order_id=request.order_id,
                items=request.items,
                state=inventory_pb2.RESERVATION_STATE_PENDING,
            )
            self.reservations[reservation.id] = reservation
        return inventory_pb2.ReserveResponse(reservation=reservation)

    async def CommitReservation(
        self, request: inventory_pb2.CommitReservationRequest, context: Any
    ) -> inventory_pb2.CommitReservationResponse:
        self._check_available()
        reservation = self._get(request.reservation_id)
        if reservation.state == inventory_pb2.RESERVATION_STATE_PENDING:
            reservation.state = inventory_pb2.RESERVATION_STATE_COMMITTED
        elif reservation.state != inventory_pb2.RESERVATION_STATE_COMMITTED:
            raise self._refused(reservation)
        return inventory_pb2.CommitReservationResponse(reservation=reservation)

    async def ReleaseReservation(
        self, request: inventory_pb2.ReleaseReservationRequest, context: Any
    ) -> inventory_pb2.ReleaseReservationResponse:
        self.released.append(request.reservation_id)
        self._check_available()
        if self.release_races_to_lose:
            self.release_races_to_lose -= 1
            raise self._lost_race()
        reservation = self._get(request.reservation_id)
        if reservation.state in (inventory_pb2.RESERVATION_STATE_PENDING, inventory_pb2.RESERVATION_STATE_COMMITTED):
            reservation.state = inventory_pb2.RESERVATION_STATE_RELEASED
        elif reservation.state not in (
            inventory_pb2.RESERVATION_STATE_RELEASED,
            inventory_pb2.RESERVATION_STATE_EXPIRED,
        ):
            # Releasing units a newer release may already have moved would count them twice.
            raise self._refused(reservation)
        return inventory_pb2.ReleaseReservationResponse(reservation=reservation)


@contextlib.asynccontextmanager
async def _with_inventory_over_grpc(
    clocked: Clocked, timeout: float = 5
) -> AsyncIterator[tuple[Clocked, InventoryOnTheWire]]:
    """`clocked` with orders' InventoryClient in place of the fake, talking over real gRPC to `InventoryOnTheWire`
    served by the chassis (what inventory answers is then what the client decodes, unknown enum numbers too);
    `timeout` is each call's deadline (a step's)."""
    inventory = InventoryOnTheWire()
    binding = ServiceBinding(INVENTORY_SERVICE, inventory, inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    async with (
        serve_in_process(clocked.settings, [binding]) as server,
        ResilientChannel(server.address, [INVENTORY_SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        port = Reachable(
            InventoryClient(
                channel.channel, timeout=timeout, unknown_state_wait=clocked.settings.recovery_interval_seconds
            )
        )
        yield replace(clocked, inventory=port), inventory  # type: ignore[arg-type]


async def _reserved_in_a_newer_state_past_the_deadline(
    clocked: Clocked, inventory: InventoryOnTheWire
) -> tuple[OrdersApplication, str, str]:
    """An order reserved by the recovery loop while payments was down (`clocked.inventory` is the client of
    `inventory`), whose reservation inventory now stores, and replays, in a state only a newer release can
    name; the clock past the saga's deadline, for the customer's retry with the card."""
    app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(
        clocked, clocked.inventory, clocked.payments
    )
    inventory.reservations[reservation_id].state = A_NEWER_RELEASES_STATE
    clocked.clock.ahead = timedelta(seconds=clocked.settings.reservation_ttl_seconds + 1)
    return app, order_id, reservation_id


async def test_a_retry_with_the_card_past_the_saga_deadline_waits_while_inventory_cannot_name_the_reservation_state(
    clocked: Clocked, payments: FakePayments
) -> None:
    """Inventory replays the order's reservation in a state a newer release stored: whether it holds the stock
    is unknown, so nothing is charged against it and the order waits at the charge step (not charged, then
    stuck at the commit inventory refuses; nor cancelled as PAYMENT_UNAVAILABLE, which payments was not)."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, _ = await _reserved_in_a_newer_state_past_the_deadline(clocked, inventory)
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        order = await app.get_order(order_id)
        assert (payments.charge_calls, order.state, order.step, order.cancel_code) == (
            0,
            OrderState.PENDING,
            SagaStep.CHARGE,
            None,
        )
        assert caught.value.reason == RESERVATION_IN_DOUBT
        assert inventory.released == []
    # Inventory's answer does not change until a release of orders that knows the state drives the order: the
    # customer's retry is asked for after the recovery loop's next pass, and no channel retries it at once.
    assert (caught.value.retry_after_seconds, caught.value.final) == (clocked.settings.recovery_interval_seconds, True)


async def test_an_order_left_in_doubt_about_its_reservation_is_cancelled_uncharged_and_waits_to_release_it(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings, database: Database
) -> None:
    """After RESERVATION_IN_DOUBT nobody holds the card: the recovery loop settles the charge step as for any
    driver gone before charging (payments has no charge: CHECKOUT_INTERRUPTED). Compensation cannot release
    a reservation in a state only a newer inventory knows (inventory refuses, RESERVATION_STATE_UNKNOWN: it
    may hold stock, and releasing it could count units twice), so the order waits PENDING at that step:
    nothing charged, no cancellation told or published yet, every retry answered UNAVAILABLE naming the
    order. Once a release that knows the state serves, the release goes through and the order is cancelled,
    nothing charged, with one OrderCancelled."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, reservation_id = await _reserved_in_a_newer_state_past_the_deadline(clocked, inventory)
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        assert caught.value.reason == RESERVATION_IN_DOUBT
        clocked.clock.ahead += timedelta(seconds=settings.recovery_backoff_max_seconds)
        assert await app.resume_unfinished() == 1
        order = await app.get_order(order_id)
        assert (order.state, order.step, order.cancel_code) == (
            OrderState.PENDING,
            SagaStep.COMPENSATE,
            CancelCode.CHECKOUT_INTERRUPTED,
        )
        # GetOrder shows it PENDING, with no cancel reason: CHECKOUT_INTERRUPTED says the stock was released.
        shown = codec.order_to_proto(order)
        assert (shown.state, shown.HasField("cancel_reason")) == (orders_pb2.ORDER_STATE_PENDING, False)
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        assert (caught.value.reason, caught.value.metadata["order_id"]) == (errors.DEPENDENCY_UNAVAILABLE, order_id)
        assert (payments.charge_calls, payments.refund_calls, await events(database)) == (0, 0, [])
        assert inventory.reservations[reservation_id].state == A_NEWER_RELEASES_STATE
        # A release of inventory that knows the state serves (it can release the reservation).
        inventory.reservations[reservation_id].state = inventory_pb2.RESERVATION_STATE_PENDING
        clocked.clock.ahead += timedelta(seconds=settings.recovery_backoff_max_seconds)
        assert await app.resume_unfinished() == 1
        order = await app.get_order(order_id)
        assert (order.state, order.cancel_code, order.refunded) == (
            OrderState.CANCELLED,
            CancelCode.CHECKOUT_INTERRUPTED,
            False,
        )
        assert order.cancel_message == "The order could not be completed in time; nothing was charged."
        assert (payments.charge_calls, payments.captured(), inventory.held("prod_a")) == (0, 0, 0)
        [(subject, _payload)] = await events(database)
        assert subject == "orders.v1.order_cancelled"


async def test_a_retry_with_the_card_past_the_saga_deadline_asks_again_when_inventory_loses_a_race(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings
) -> None:
    """Inventory answers the reservation check ABORTED once (its write lost a concurrency race, which its next
    try wins): that says nothing about the stock, so the check asks again and the order, whose stock is still
    held, is charged and confirmed. (Taken as in doubt, the order was left for the recovery loop, which has no
    card and cancels it as CHECKOUT_INTERRUPTED.)"""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(
            clocked, clocked.inventory, payments
        )
        clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 1)
        inventory.reserve_races_to_lose = 1
        assert await place(app, command()) == order_id
        order = await app.get_order(order_id)
        assert (order.state, order.reservation_id) == (OrderState.CONFIRMED, reservation_id)
        assert (payments.captured(), payments.refunds, inventory.released) == (1, [], [])
        assert inventory.reservations[reservation_id].state == inventory_pb2.RESERVATION_STATE_COMMITTED


async def test_a_retry_with_the_card_past_the_saga_deadline_waits_while_inventory_keeps_losing_races(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings
) -> None:
    """A race lost on every try of the check still says nothing about the stock: the order waits at the charge
    step, nothing charged (not cancelled as PAYMENT_UNAVAILABLE, which payments was not), and a later retry
    that inventory answers confirms it."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, _ = await _reserved_by_recovery_while_payments_is_down(clocked, clocked.inventory, payments)
        clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 1)
        inventory.reserve_races_to_lose = settings.step_attempts
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        assert caught.value.reason == RESERVATION_IN_DOUBT
        order = await app.get_order(order_id)
        assert (payments.charge_calls, order.state, order.step, order.cancel_code) == (
            0,
            OrderState.PENDING,
            SagaStep.CHARGE,
            None,
        )
        assert inventory.reserve_races_to_lose == 0
        assert await place(app, command()) == order_id
        assert (await app.get_order(order_id)).state is OrderState.CONFIRMED


async def test_a_retry_with_the_card_past_the_saga_deadline_releases_a_reservation_inventory_made_anew(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings
) -> None:
    """Inventory replays an order's reservation whatever its state, and never deletes one; but if its row is
    gone (a restore, a clean-up), Reserve makes a new reservation for the order. That one is not the order's:
    the commit of the order's own would fail after the charge, and the new hold would linger until it expires.
    The saga gives it back and cancels without charging."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(
            clocked, clocked.inventory, payments
        )
        clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 10)
        del inventory.reservations[reservation_id]  # Its row is gone.
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command())
        assert caught.value.reason == "RESERVATION_EXPIRED"
        order = await app.get_order(order_id)
        assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.RESERVATION_EXPIRED)
        assert (payments.charge_calls, payments.refunds) == (0, [])
        made_anew = inventory.of_order(order_id)
        assert made_anew is not None
        assert made_anew.id != reservation_id
        # The new hold given back; then compensation's release of the order's own, which inventory no longer has.
        assert inventory.released == [made_anew.id, reservation_id]
        assert (made_anew.state, inventory.held("prod_a")) == (inventory_pb2.RESERVATION_STATE_RELEASED, 0)


async def test_a_charged_order_whose_reservation_inventory_no_longer_has_is_refunded_once_and_cancelled(
    clocked: Clocked, payments: FakePayments, database: Database
) -> None:
    """The reservation's row is removed outside inventory (a restore, a manual clean-up) between the charge and
    the commit: inventory answers the commit NOT_FOUND, RESERVATION_NOT_FOUND. It holds no stock, as a lapsed
    reservation: the capture is refunded, once, and the order cancelled as RESERVATION_EXPIRED, told to the
    customer and published (not INTERNAL on every retry, with the customer's money kept)."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(
            clocked, clocked.inventory, payments
        )
        del inventory.reservations[reservation_id]  # Its row is gone.
        for _ in range(2):  # The retry replays the outcome; nothing is refunded again.
            with pytest.raises(errors.FailedPrecondition) as caught:
                await place(app, command())
            assert (caught.value.reason, caught.value.metadata) == ("RESERVATION_EXPIRED", {"order_id": order_id})
        order = await app.get_order(order_id)
        assert (order.state, order.cancel_code, order.refunded) == (
            OrderState.CANCELLED,
            CancelCode.RESERVATION_EXPIRED,
            True,
        )
        assert (payments.charge_calls, payments.captured(), payments.refunds) == (1, 0, [order.payment_id])
        assert payments.refund_calls == 1
        # Compensation's release of the order's reservation, which inventory no longer has: nothing is held.
        assert inventory.released == [reservation_id]
        assert inventory.of_order(order_id) is None
        [(subject, payload)] = await events(database)
        assert subject == "orders.v1.order_cancelled"
        cancelled = events_pb2.OrderCancelled.FromString(payload)
        assert (cancelled.reason.code, cancelled.refunded) == (orders_pb2.CANCEL_REASON_CODE_RESERVATION_EXPIRED, True)


async def test_a_reservation_made_anew_past_the_saga_deadline_that_cannot_be_given_back_still_cancels_as_expired(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings
) -> None:
    """Giving back the hold inventory made anew is tidying up: whatever inventory answers to it, the order's own
    reservation is gone, so the order is cancelled as RESERVATION_EXPIRED with nothing charged (not retried,
    given up on and cancelled as PAYMENT_UNAVAILABLE, which payments was not); the hold lapses at its TTL."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(
            clocked, clocked.inventory, payments
        )
        clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 10)
        del inventory.reservations[reservation_id]  # Its row is gone.
        # Every Release the saga sends before compensation's loses a race.
        inventory.release_races_to_lose = settings.step_attempts
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command())
        assert caught.value.reason == "RESERVATION_EXPIRED"
        order = await app.get_order(order_id)
        assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.RESERVATION_EXPIRED)
        assert (payments.charge_calls, payments.refunds) == (0, [])


@pytest.mark.parametrize("lapsed", ["EXPIRED", "RELEASED"])
async def test_compensation_that_finds_the_reservation_lapsed_still_cancels(
    app: OrdersApplication, saga: SagaDriver, inventory: FakeInventory, database: Database, lapsed: str
) -> None:
    """Compensation asks Reserve again to name a reservation whose id it never learned: one that lapsed holds
    no stock, so there is nothing to release, and that is no reason to stop compensating."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    inventory.reservations["res_9"] = (order_id, (CartLine("prod_a", 2),), lapsed)
    inventory.down = False
    await _crash_at(
        database,
        order_id,
        SagaStep.COMPENSATE,
        reservation_id="",
        reserve_attempted=True,
        cancel_code=CancelCode.CHECKOUT_INTERRUPTED,
        cancel_message="The order could not be completed in time; nothing was charged.",
    )
    order = await saga.drive(order_id, None)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    assert inventory.reservations["res_9"][2] == lapsed
    assert inventory.reserved("prod_a") == 0


class StillClock(Clock):
    """A Clock that moves only when the test moves it: how long the test itself takes changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.start = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.start + self.ahead


async def test_place_order_waiting_on_inventory_passes_on_the_wait_inventory_asked_for(
    clocked: Clocked, payments: FakePayments
) -> None:
    """Inventory draining asks orders to come back in 20 s: PlaceOrder's UNAVAILABLE at the reserve step says
    20 s too, not 1 s, so its caller does not come back at once to a dependency that asked for time."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        inventory.asks_to_wait = 20
        app = clocked.app()
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        order = await app.get_order(caught.value.metadata["order_id"])
    assert (caught.value.reason, caught.value.retry_after_seconds) == (errors.DEPENDENCY_UNAVAILABLE, 20)
    assert (order.state, order.step, payments.charge_calls) == (OrderState.PENDING, SagaStep.RESERVE, 0)


async def test_an_inventory_wait_past_a_steps_deadline_is_asked_again_and_not_final(
    clocked: Clocked, payments: FakePayments
) -> None:
    """Inventory asks for 3 s under a step's 1 s deadline, so its chassis sends gRPC's "do not retry" for that
    call only: the saga asks again with a fresh deadline, STEP_ATTEMPTS times, and its UNAVAILABLE is not final
    (PlaceOrder's own pushback then weighs the 3 s against PlaceOrder's caller's deadline). Taken as final, the
    step was asked once and PlaceOrder's caller told not to retry whatever its deadline."""
    async with _with_inventory_over_grpc(clocked, timeout=1) as (clocked, inventory):
        inventory.asks_to_wait = 3
        with pytest.raises(errors.Unavailable) as caught:
            await place(clocked.app(), command())
    assert (caught.value.reason, caught.value.retry_after_seconds, caught.value.final) == (
        errors.DEPENDENCY_UNAVAILABLE,
        3,
        False,
    )
    assert (inventory.asked_to_wait, payments.charge_calls) == (clocked.settings.step_attempts, 0)


def _state_only_a_newer_release_knows() -> errors.Unavailable:
    # As the adapter answers a reservation a newer inventory stored (clients._state_unknown).
    return errors.Unavailable(
        "inventory answered a state this release of orders does not know", retry_after_seconds=2, final=True
    )


async def test_a_step_whose_dependency_answers_final_is_asked_once_by_place_order_and_by_each_recovery_pass(
    clocked: Clocked,
) -> None:
    """A final answer does not change within the saga's STEP_ATTEMPTS retries of a step (nor within a channel's):
    the step is asked once, not STEP_ATTEMPTS times, and the saga's UNAVAILABLE passes on its wait and final."""
    app, inventory = clocked.app(), clocked.inventory
    inventory.answers = _state_only_a_newer_release_knows()
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    assert inventory.calls == ["reserve"]
    assert (caught.value.reason, caught.value.retry_after_seconds, caught.value.final) == (
        errors.DEPENDENCY_UNAVAILABLE,
        inventory.answers.retry_after_seconds,
        True,
    )
    assert await app.resume_unfinished() == 1
    assert inventory.calls == ["reserve", "reserve"]
    order = await app.get_order(caught.value.metadata["order_id"])
    assert (order.state, order.step) == (OrderState.PENDING, SagaStep.RESERVE)


async def test_a_cancellation_whose_refund_meets_a_final_answer_asks_payments_once_as_does_each_recovery_pass(
    clocked: Clocked,
) -> None:
    """Payments refuses the refund for a payment in a state a newer release stored (the adapter's final answer,
    asking for the recovery interval): CancelOrder's driver asks once, not STEP_ATTEMPTS times, and its
    accepted answer carries that wait; a recovery pass asks once as well."""
    app, payments = clocked.app(), clocked.payments
    order_id = await place(app, command())
    payments.answers = errors.Unavailable(
        "payments refused the refund: PAYMENT_NOT_REFUNDABLE",
        reason="PAYMENT_UNAVAILABLE",
        retry_after_seconds=2,
        final=True,
    )
    with pytest.raises(errors.Unavailable) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert "accepted" in caught.value.message
    assert (payments.refund_calls, caught.value.retry_after_seconds, caught.value.final) == (1, 2, True)
    assert await app.resume_unfinished() == 1
    assert payments.refund_calls == 2
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.refunded) == (OrderState.CONFIRMED, SagaStep.REFUND, False)


async def test_a_cancellation_accepted_while_inventory_asks_to_wait_passes_that_wait_on(
    clocked: Clocked, payments: FakePayments
) -> None:
    """Refunded, the release meets inventory asking for 20 s: the cancellation is accepted, and the answer's
    RetryInfo is inventory's 20 s, when a retry with the same key may find the order cancelled."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app = clocked.app()
        order_id = await place(app, command())
        inventory.asks_to_wait = 20
        with pytest.raises(errors.Unavailable) as caught:
            await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
        order = await app.get_order(order_id)
    assert (caught.value.reason, caught.value.metadata) == (errors.DEPENDENCY_UNAVAILABLE, {"order_id": order_id})
    assert "accepted" in caught.value.message
    assert caught.value.retry_after_seconds == 20
    assert (order.state, order.step, order.refunded, payments.refund_calls) == (
        OrderState.CONFIRMED,
        SagaStep.REFUND,
        True,
        1,
    )


async def test_the_recovery_loop_leaves_an_order_alone_as_long_as_inventory_asked(clocked: Clocked) -> None:
    """A recovery pass meets inventory asking for 20 s: the order is not tried again before then (the loop's
    own backoff alone, one 2 s interval for an order this fresh, would have it tried every pass), and is
    once that wait is over."""
    clocked = replace(clocked, clock=StillClock())
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        inventory.asks_to_wait = 20
        app = clocked.app()
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command())
        order_id = caught.value.metadata["order_id"]
        assert await app.resume_unfinished() == 1
        inventory.asks_to_wait = None
        clocked.clock.ahead = timedelta(seconds=10)
        assert await app.resume_unfinished() == 0
        clocked.clock.ahead = timedelta(seconds=21)
        assert await app.resume_unfinished() == 1
        order = await app.get_order(order_id)
    # Resumed without the card, which no driver has any more: never charged, the stock given back.
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    assert inventory.held("prod_a") == 0


async def test_customer_cancellation_refunds_and_restocks(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    order_id = await place(app, command())
    cancelled = await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_code) == (OrderState.CANCELLED, CancelCode.CUSTOMER_REQUESTED)
    assert cancelled.cancel_message == "changed my mind"
    assert payments.captured() == 0
    assert inventory.on_hand["prod_a"] == 5
    # The same key replays; another key finds the order no longer cancellable.
    assert (await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")).id == order_id
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "again", "cancel-2", "f2")
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"


async def test_a_cancellation_while_another_runs_is_refused_as_already_being_cancelled(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await place(app, command())
    refunding, release = _hold_refunds(payments, monkeypatch)
    first = asyncio.create_task(app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"))
    await refunding.wait()
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "me too", "cancel-2", "f2")
    assert (caught.value.reason, caught.value.metadata["state"]) == ("ORDER_NOT_CANCELLABLE", "ORDER_STATE_CONFIRMED")
    assert "already being cancelled" in str(caught.value)
    release.set()
    assert (await first).state is OrderState.CANCELLED
    assert len(payments.refunds) == 1


async def test_a_cancellation_whose_release_meets_inventory_down_is_finished_by_the_recovery_loop_refunded_once(
    clocked: Clocked, database: Database
) -> None:
    """The refund went through, inventory was down for the release: the cancellation stands, and the recovery
    loop finishes it once inventory answers, with no retry of CancelOrder, nothing refunded twice, one event."""
    app, inventory, payments = clocked.app(), clocked.inventory, clocked.payments
    order_id = await place(app, command())
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    # Answered as the contract says: not cancelled yet, but accepted, and finished without a retry.
    assert (caught.value.reason, caught.value.metadata) == (errors.DEPENDENCY_UNAVAILABLE, {"order_id": order_id})
    assert "accepted" in caught.value.message
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.refunded) == (OrderState.CONFIRMED, SagaStep.REFUND, True)
    # A pass while inventory is still down refunds nothing again; the order then waits its backoff.
    assert await app.resume_unfinished() == 1
    assert (payments.refund_calls, inventory.reserved("prod_a"), inventory.on_hand["prod_a"]) == (1, 0, 3)
    inventory.down = False
    clocked.clock.ahead = timedelta(seconds=120)
    recovery = asyncio.create_task(app.run_recovery(0.01))
    try:

        async def cancelled() -> bool:
            return (await app.get_order(order_id)).state is OrderState.CANCELLED

        await eventually(cancelled, f"{order_id} cancelled by the recovery loop")
    finally:
        recovery.cancel()
    order = await app.get_order(order_id)
    assert (order.cancel_code, order.cancel_message, order.refunded) == (
        CancelCode.CUSTOMER_REQUESTED,
        "changed my mind",
        True,
    )
    assert (payments.refund_calls, payments.captured()) == (1, 0)
    assert (inventory.on_hand["prod_a"], inventory.reserved("prod_a")) == (5, 0)
    assert [subject for subject, _payload in await events(database)] == [
        "orders.v1.order_confirmed",
        "orders.v1.order_cancelled",
    ]
    # The customer's retry with the same key now answers with the cancelled order.
    assert (await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")).state is OrderState.CANCELLED


async def test_a_second_driver_cannot_take_a_held_order(
    app: OrdersApplication, saga: SagaDriver, inventory: FakeInventory
) -> None:
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    owner = saga.new_lease_owner()
    assert await saga._claim(order_id, owner)
    with pytest.raises(LeaseHeld):
        await saga.drive(order_id, None)


async def test_a_cancellation_whose_order_another_driver_holds_is_accepted_not_aborted(
    app: OrdersApplication, saga: SagaDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery loop (or the request's first attempt, which the caller's channel retried on its
    UNAVAILABLE) holds the order being cancelled: the cancellation is recorded under the key and that driver
    completes it, so CancelOrder answers it is accepted, not ABORTED "retry with the same key"."""
    monkeypatch.setattr("shopmesh_orders.application._WAIT_FOR_OTHER_DRIVER_SECONDS", 0.2)
    order_id = await place(app, command())
    original = saga.drive

    async def recovery_took_it_first(order_id: str, *args: Any) -> Order:
        assert await saga._claim(order_id, saga.new_lease_owner())
        return await original(order_id, *args)

    monkeypatch.setattr(saga, "drive", recovery_took_it_first)
    with pytest.raises(errors.Unavailable) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (caught.value.reason, caught.value.metadata) == (errors.DEPENDENCY_UNAVAILABLE, {"order_id": order_id})
    assert "accepted" in caught.value.message
    # The wait the other accepted answer carries when its dependency names none; it had no RetryInfo at all.
    assert (caught.value.retry_after_seconds, caught.value.final) == (1.0, True)
    assert (await app.get_order(order_id)).cancellation_pending


async def test_list_orders_pages_newest_first(app: OrdersApplication) -> None:
    ids = [await place(app, command(GOOD, CartLine("prod_a", 1)), key=f"k{i}") for i in range(3)]
    first, token = await app.list_orders("usr_1", 2, "")
    second, last = await app.list_orders("usr_1", 2, token)
    assert [o.id for o in first + second] == list(reversed(ids))
    assert last == ""
    with pytest.raises(errors.InvalidArgument) as caught:
        await app.list_orders("usr_2", 2, token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_a_driver_whose_lease_was_taken_over_reports_the_other_drivers_outcome(
    app: OrdersApplication, saga: SagaDriver, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    original_reserve = inventory.reserve

    async def slow_reserve(order_id: str, items: object, ttl_seconds: float) -> str:
        # While this step is slow, the lease runs out and the recovery loop drives the order itself.
        inventory.reserve = original_reserve  # type: ignore[method-assign]
        async with database.transaction() as session:
            await OrderRepository(session).release(order_id, "expired")
            from sqlalchemy import update

            from shopmesh_orders.store.tables import orders

            await session.execute(
                update(orders).where(orders.c.id == order_id).values(lease_until=None, lease_owner=None)
            )
        await app.resume_unfinished()
        return await original_reserve(order_id, items, ttl_seconds)  # type: ignore[arg-type]

    inventory.reserve = slow_reserve  # type: ignore[method-assign]
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    # The recovery driver had no card: it cancelled and released; the caller is told so, not ABORTED (and
    # not PAYMENT_UNAVAILABLE: no charge was ever sent).
    assert caught.value.reason == "CHECKOUT_INTERRUPTED"
    assert payments.captured() == 0
    assert inventory.reserved("prod_a") == 0


class HeldClock:
    """The saga's and recovery's clock, standing still until the test moves it: a lease runs out when the
    test says, never because the machine was slow."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class HungInventory:
    """Inventory whose first `slow_calls` Reserve calls each end at their deadline, `latency` on `clock`, and
    then fail UNAVAILABLE (a hung inventory); the last of them stays in flight from `in_last_slow_call` until
    the test sets `let_it_end`. Later calls are answered at once."""

    inner: FakeInventory
    clock: HeldClock
    latency: timedelta
    slow_calls: int
    reserve_calls: int = 0
    in_last_slow_call: asyncio.Event = field(default_factory=asyncio.Event)
    let_it_end: asyncio.Event = field(default_factory=asyncio.Event)

    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        self.reserve_calls += 1
        if self.reserve_calls <= self.slow_calls:
            self.clock.now += self.latency
            if self.reserve_calls == self.slow_calls:
                self.in_last_slow_call.set()
                await self.let_it_end.wait()
            raise errors.Unavailable("inventory did not answer in time")
        return await self.inner.reserve(order_id, items, ttl_seconds)

    async def commit(self, reservation_id: str) -> None:
        await self.inner.commit(reservation_id)

    async def release(self, reservation_id: str) -> None:
        await self.inner.release(reservation_id)


async def test_a_place_order_driver_retrying_a_slow_reserve_keeps_its_order_from_the_recovery_loop(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
) -> None:
    # As deployed: each Reserve attempt ends within the lease (step timeout 5 s < lease 10 s), but a step's
    # attempts together (3 x 5 s plus backoff) outlast it. Here a lease of 8 s: the second attempt ends at
    # 10 s, past the lease the driver started with, within the one it renews before that attempt.
    settings = settings.model_copy(update={"saga_lease_seconds": 8.0, "step_timeout_seconds": 5.0, "step_attempts": 3})
    assert settings.saga_lease_seconds >= settings.lease_needed_seconds
    clock = HeldClock()
    hung = HungInventory(inventory, clock, latency=timedelta(seconds=5), slow_calls=2)
    app = OrdersApplication(database, catalog, SagaDriver(database, hung, payments, settings, clock=clock), clock=clock)
    placing = asyncio.create_task(place(app, command()))
    # The recovery loop's periodic pass comes by while the driver holding the card retries the reserve.
    waiting = asyncio.create_task(hung.in_last_slow_call.wait())
    await asyncio.wait([placing, waiting], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert hung.in_last_slow_call.is_set(), f"the driver never retried the reserve: {placing}"
    await app.resume_unfinished()
    hung.let_it_end.set()
    order_id = await asyncio.wait_for(placing, 30)
    order = await app.get_order(order_id)
    # The customer's driver held the card and payments was up: the order should have been charged.
    assert (order.state, order.cancel_code) == (OrderState.CONFIRMED, None)
    assert payments.captured() == 1


def _meet_after_reading_the_cancel_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CancelOrder transactions both read the order before either saves it, where the database lets them
    (PostgreSQL; SQLite's writers never overlap, so each goes on alone after a short wait)."""
    read, arrived, both = OrderRepository.cancel_origin, [0], asyncio.Event()

    async def meeting(self: OrderRepository, order_id: str) -> tuple[str | None, str | None]:
        origin = await read(self, order_id)
        arrived[0] += 1
        if arrived[0] == 2:
            both.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both.wait(), 0.5)
        return origin

    monkeypatch.setattr(OrderRepository, "cancel_origin", meeting)


async def _cancelled_twice_at_once(
    app: OrdersApplication, monkeypatch: pytest.MonkeyPatch, second: tuple[str, str, str]
) -> list[Order | BaseException]:
    """A placed order cancelled ("changed my mind", key cancel-1) and, at the same moment, as `second` says
    (reason, key, fingerprint): both calls read the order before either saves."""
    order_id = await place(app, command())
    _meet_after_reading_the_cancel_origin(monkeypatch)
    return await asyncio.gather(
        app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"),
        app.cancel_order(order_id, *second),
        return_exceptions=True,
    )


async def test_two_cancellations_at_once_with_other_keys_cancel_once_and_refuse_the_other_as_not_cancellable(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = await _cancelled_twice_at_once(app, monkeypatch, ("me too", "cancel-2", "f2"))
    cancelled = [o for o in outcomes if isinstance(o, Order)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert [o.state for o in cancelled] == [OrderState.CANCELLED]
    # The contract: FAILED_PRECONDITION ORDER_NOT_CANCELLABLE for a cancellation under another key.
    assert [(type(e), getattr(e, "reason", None)) for e in refused] == [
        (errors.FailedPrecondition, "ORDER_NOT_CANCELLABLE")
    ]
    assert len(payments.refunds) == 1


async def test_a_cancellation_retried_with_its_key_while_the_first_runs_returns_the_order_or_key_in_use(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = await _cancelled_twice_at_once(app, monkeypatch, ("changed my mind", "cancel-1", "f1"))
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            # The contract: a retry racing the original is ABORTED, reason IDEMPOTENCY_KEY_IN_USE.
            assert (type(outcome), getattr(outcome, "reason", None)) == (errors.Aborted, "IDEMPOTENCY_KEY_IN_USE")
        else:
            assert outcome.state is OrderState.CANCELLED
    assert len(payments.refunds) == 1


async def test_a_cancellation_key_sent_again_for_another_order_is_refused_as_reused(
    app: OrdersApplication, payments: FakePayments
) -> None:
    # Keys are scoped to the method and the caller (common/v1): the stored cancellation was per order, so
    # the key of one cancellation, sent for a second order, cancelled that order too.
    first, second = await place(app, command()), await place(app, command(), key="place-2")
    await app.cancel_order(first, "changed my mind", "cancel-1", "f1")
    with pytest.raises(errors.InvalidArgument) as refused:
        await app.cancel_order(second, "changed my mind", "cancel-1", "f2")
    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert (await app.get_order(second)).state is OrderState.CONFIRMED
    assert len(payments.refunds) == 1


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


async def test_shutdown_waits_for_a_cancellation_whose_caller_went_away(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await place(app, command())
    refunding, go_on = asyncio.Event(), asyncio.Event()
    refund = payments.refund

    async def slow_refund(payment_id: str, reason: str, idempotency_key: str) -> None:
        refunding.set()
        await go_on.wait()
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "refund", slow_refund)
    caller = asyncio.create_task(app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"))
    await refunding.wait()
    caller.cancel()
    # Shutdown begins while the saga refunds: it must wait for it, as for a PlaceOrder's saga.
    asyncio.get_running_loop().call_later(0.2, go_on.set)
    await app.wait_running(timeout=5)
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED
    assert payments.refunds != []


async def test_an_order_cancelled_with_a_reason_a_newer_release_added_stays_readable(
    app: OrdersApplication, database: Database
) -> None:
    """Review finding: CHECKOUT_INTERRUPTED is a new value in orders.cancel_code. docs/chassis.md: during a
    rolling update, a canary's stable track or after a rollback, the previous release runs on the same
    database; it reads the column with CancelCode(row.cancel_code), which raises ValueError for a value it
    does not know, so GetOrder and ListOrders of that user fail INTERNAL on old pods (the symptom the
    totals fix removed). This release is no more tolerant of the next added reason: a cancel code this
    release does not know must not make the order unreadable."""
    from sqlalchemy import update

    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(state=OrderState.CANCELLED.value, cancel_code="SOME_LATER_REASON")
        )
    order = await app.get_order(order_id)
    assert order.state is OrderState.CANCELLED
    page, _ = await app.list_orders("usr_1", 10, "")
    assert [o.id for o in page] == [order_id]


async def test_a_cancel_code_this_release_does_not_know_is_answered_as_unspecified_and_never_written_over(
    app: OrdersApplication, database: Database
) -> None:
    from sqlalchemy import update

    from shopmesh.orders.v1 import orders_pb2
    from shopmesh_orders.codec import order_to_proto
    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(state=OrderState.CANCELLED.value, cancel_code="SOME_LATER_REASON", cancel_message="Why.")
        )
    order = await app.get_order(order_id)
    assert order.cancel_code is CancelCode.UNSPECIFIED
    reason = order_to_proto(order).cancel_reason
    assert (reason.code, reason.message) == (orders_pb2.CANCEL_REASON_CODE_UNSPECIFIED, "Why.")
    async with database.transaction() as session:
        await OrderRepository(session).save(replace(order, updated_at=order.updated_at + timedelta(seconds=1)))
    async with database.transaction() as session:
        stored = (await session.execute(select(orders.c.cancel_code).where(orders.c.id == order_id))).scalar_one()
    assert stored == "SOME_LATER_REASON"


async def test_an_order_in_a_state_and_step_this_release_does_not_know_is_listed_and_left_alone(
    app: OrdersApplication, database: Database
) -> None:
    """docs/chassis.md: values a newer release adds to a stored enum stay readable. An order at a step this
    release cannot drive is answered with the contract's 0 state, not cancellable here, and passed over
    by the recovery loop (which must not spend its batch on it), its stored state and step kept."""
    from sqlalchemy import update

    from shopmesh.orders.v1 import orders_pb2
    from shopmesh_orders.codec import order_to_proto
    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == order_id).values(state="HELD", step="REVIEW"))
    order = await app.get_order(order_id)
    assert (order.state, order.step) == (OrderState.UNSPECIFIED, SagaStep.UNSPECIFIED)
    assert order_to_proto(order).state == orders_pb2.ORDER_STATE_UNSPECIFIED
    page, _ = await app.list_orders("usr_1", 10, "")
    assert [o.id for o in page] == [order_id]
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "fp")
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"
    assert await app.resume_unfinished() == 0
    async with database.transaction() as session:
        await OrderRepository(session).save(replace(order, updated_at=order.updated_at + timedelta(seconds=1)))
    async with database.transaction() as session:
        stored = (await session.execute(select(orders.c.state, orders.c.step).where(orders.c.id == order_id))).one()
    assert tuple(stored) == ("HELD", "REVIEW")


async def test_a_retry_of_an_order_a_newer_release_finished_in_a_state_this_one_cannot_name_is_not_told_it_is_processed(
    app: OrdersApplication, database: Database, inventory: FakeInventory
) -> None:
    """PlaceOrder retried for an order a newer release finished (step DONE) in a state this release cannot name:
    nothing is being processed, and the saga is not driven. It was told "still being processed", which sent
    clients looking for a checkout that had ended. A replica of the newer release answers the retry: 1 s,
    not final (see `_outcome`)."""
    from sqlalchemy import update

    from shopmesh_orders.store.tables import orders

    order_id = await place(app, command())
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == order_id).values(state="HELD"))
    calls = len(inventory.calls)
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    assert "still being processed" not in caught.value.message
    assert "finished by a newer release" in caught.value.message
    assert (caught.value.metadata, caught.value.retry_after_seconds, caught.value.final) == (
        {"order_id": order_id},
        1.0,
        False,
    )
    assert len(inventory.calls) == calls


async def test_compensation_renews_the_lease_before_each_of_its_remote_calls(
    app: OrdersApplication,
    saga: SagaDriver,
    inventory: FakeInventory,
    payments: FakePayments,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compensation lists payments, refunds, reserves and releases with no step saved between the calls:
    without a renewal before each, two slow calls (2 x STEP_TIMEOUT_SECONDS) outlasted the lease, and the
    recovery loop compensated the same order beside its driver."""
    order_id = await place(app, command())
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    await _crash_at(
        database,
        order_id,
        SagaStep.COMPENSATE,
        reservation_id="",
        reserve_attempted=True,
        charge_attempted_at=long_ago,
        cancel_code=CancelCode.PAYMENT_UNAVAILABLE,
        cancel_message="Payment could not be processed right now; nothing was charged.",
    )
    timeline: list[str] = []
    keep_lease = saga._keep_lease

    async def renewing(order_id: str, owner: str) -> None:
        timeline.append("renew")
        await keep_lease(order_id, owner)

    monkeypatch.setattr(saga, "_keep_lease", renewing)
    remote: list[tuple[object, str]] = [(payments, "payments_for"), (payments, "refund")]
    for fake, name in [*remote, (inventory, "reserve"), (inventory, "release")]:
        call = getattr(fake, name)

        async def recorded(*args: object, _call: Callable[..., Any] = call, _name: str = name) -> Any:
            timeline.append(_name)
            return await _call(*args)

        monkeypatch.setattr(fake, name, recorded)
    order = await saga.drive(order_id, None)
    assert (order.state, order.refunded) == (OrderState.CANCELLED, True)
    calls = [i for i, entry in enumerate(timeline) if entry != "renew"]
    assert [timeline[i] for i in calls] == ["payments_for", "refund", "reserve", "release"]
    assert all(timeline[i - 1] == "renew" for i in calls), timeline


async def test_a_recheck_keeps_its_lease_across_its_remote_calls(
    cancelled_in_doubt: CancelledInDoubt,
    clocked: Clocked,
    payments: FakePayments,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding (sibling of the compensation's renewals): recheck_charge lists payments and then
    refunds each capture with no renewal between the calls, so two calls each within STEP_TIMEOUT_SECONDS
    outlast a lease that covers one (lease_needed_seconds), and another replica's recovery pass takes the
    order over and refunds and reports the same late capture again."""
    order_id, clock = cancelled_in_doubt.order_id, cancelled_in_doubt.clock
    settings = clocked.settings.model_copy(update={"step_timeout_seconds": 5.0, "saga_lease_seconds": 6.0})
    assert settings.saga_lease_seconds >= settings.lease_needed_seconds
    reported: dict[str, list[str]] = {"first": [], "other": []}

    def build(name: str) -> OrdersApplication:
        saga = SagaDriver(
            clocked.database,
            clocked.inventory,
            payments,
            settings,
            on_late_refund=lambda order: reported[name].append(order.id),
            clock=clock,
        )
        return OrdersApplication(clocked.database, clocked.catalog, saga, clock=clock)

    first, other = build("first"), build("other")
    await _late_capture(payments, order_id)
    clock.ahead = timedelta(seconds=11)
    payments_for, refund = payments.payments_for, payments.refund
    refunding, release = asyncio.Event(), asyncio.Event()

    async def slow_list(order_id: str) -> list[Any]:
        if not refunding.is_set():
            clock.ahead += timedelta(seconds=4)  # within the 5 s step timeout
        return await payments_for(order_id)

    async def slow_refund(payment_id: str, reason: str, idempotency_key: str) -> None:
        if not refunding.is_set():
            refunding.set()
            await release.wait()
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "payments_for", slow_list)
    monkeypatch.setattr(payments, "refund", slow_refund)
    checking = asyncio.create_task(first.recheck_charges())
    await refunding.wait()
    clock.ahead += timedelta(seconds=4)  # the refund, also within the step timeout
    try:
        await asyncio.wait_for(other.recheck_charges(), 5)
    finally:
        release.set()
        await checking
    assert payments.refund_calls == 1, "another driver refunded the order while its driver was refunding it"
    assert reported == {"first": [order_id], "other": []}


async def test_insufficient_stock_names_the_products_as_the_contract_says(app: OrdersApplication) -> None:
    """Review finding: orders.proto (PlaceOrder) promises FAILED_PRECONDITION INSUFFICIENT_STOCK with
    metadata "product_ids" (and inventory now sends short_count beside it), but _outcome answers only
    {"order_id"}: the client cannot tell which items to remove."""
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(GOOD, CartLine("prod_b", 2)))
    assert caught.value.reason == "INSUFFICIENT_STOCK"
    assert caught.value.metadata.get("product_ids") == "prod_b", caught.value.metadata


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


async def test_a_refund_that_landed_but_answered_too_late_still_cancels_the_order_as_refunded(
    clocked: Clocked, payments: FakePayments, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The charge lands but its answer is lost (deadline), compensation finds the capture and refunds it, and
    the refund's own answer is lost after payments committed it (deadline exceeded, as a slow payments does).
    The retried compensation then finds no capture (it is REFUNDED now) and must still record the refund:
    the customer was charged and refunded, and OrderCancelled.refunded is "true when a captured payment was
    refunded as part of the cancellation"."""
    app = clocked.app()
    charge, refund = payments.charge, payments.refund

    async def charge_lands_but_times_out(
        order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str
    ) -> str:
        await charge(order_id, amount_minor, currency, GOOD, idempotency_key)
        raise errors.Unavailable("deadline exceeded", reason="PAYMENT_UNAVAILABLE")

    async def refund_lands_but_times_out_once(payment_id: str, reason: str, idempotency_key: str) -> None:
        first = not payments.refunds
        await refund(payment_id, reason, idempotency_key)
        if first:
            raise errors.Unavailable("deadline exceeded", reason="PAYMENT_UNAVAILABLE")

    monkeypatch.setattr(payments, "charge", charge_lands_but_times_out)
    monkeypatch.setattr(payments, "refund", refund_lands_but_times_out_once)
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    order = await app.get_order(caught.value.metadata["order_id"])
    assert order.state is OrderState.CANCELLED
    assert (payments.captured(), len(payments.refunds)) == (0, 1)
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    assert (order.refunded, events_pb2.OrderCancelled.FromString(payload).refunded) == (True, True)


async def test_orders_killed_between_the_reservation_and_the_charge_cancels_as_checkout_interrupted(
    clocked: Clocked, payments: FakePayments, inventory: FakeInventory
) -> None:
    """docs/architecture.md: "A saga resumed before any charge was sent (the PlaceOrder holding the card gave up
    earlier, say while inventory was unavailable, or orders restarted) cannot charge: it cancels as
    CHECKOUT_INTERRUPTED, not PAYMENT_UNAVAILABLE, which means payments failed." Here orders dies right after
    the reservation is saved (FAULT_PAUSE_AFTER_STEP=RESERVED, the point the SIGKILL system test uses), before
    any charge call: payments never saw the order, yet the resumed saga blames payments."""
    clocked.settings = clocked.settings.model_copy(update={"fault_pause_after_step": "RESERVED"})
    app = clocked.app()
    placing = asyncio.create_task(place(app, command()))

    async def paused() -> Order | None:
        listed, _ = await app.list_orders("usr_1", 10, "")
        return listed[0] if listed and listed[0].step is SagaStep.CHARGE else None

    order = await eventually(paused, "the saga paused with the reservation saved")
    # The process dies: its driver and the call holding the card are gone.
    for task in [placing, *app._running]:
        task.cancel()
    await asyncio.gather(placing, *app._running, return_exceptions=True)
    assert payments.charge_calls == 0
    # The restarted orders' recovery loop, once the lease and any charge's window have run out.
    clocked.clock.ahead = timedelta(seconds=60)
    assert await app.resume_unfinished() == 1
    order = await app.get_order(order.id)
    assert (payments.charge_calls, inventory.reserved("prod_a")) == (0, 0)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)


async def test_a_compensation_killed_between_its_refund_and_saving_it_still_cancels_the_order_as_refunded(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    """The sibling of the lost refund answer: the driver compensating a capture got payments' answer to the
    refund and died before saving it. The next driver finds the payment REFUNDED, not captured."""
    order_id = await _left_at_the_pivot(app, database, inventory, datetime.now(UTC) - timedelta(seconds=60))
    payment_id = await payments.charge(order_id, 2500, "USD", GOOD, charge_key(order_id))
    await payments.refund(payment_id, "Payment could not be processed right now", f"{order_id}:refund")
    await _crash_at(database, order_id, SagaStep.COMPENSATE, cancel_code=CancelCode.PAYMENT_UNAVAILABLE)
    assert await app.resume_unfinished() == 1
    order = await app.get_order(order_id)
    assert (order.state, order.refunded, order.charge_recheck_at) == (OrderState.CANCELLED, True, None)
    assert (payments.captured(), payments.refunds, inventory.reserved("prod_a")) == (0, [payment_id], 0)
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    assert events_pb2.OrderCancelled.FromString(payload).refunded


async def test_a_recheck_that_refunded_a_late_capture_but_failed_to_save_still_records_the_refund(
    cancelled_in_doubt: CancelledInDoubt, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    payment_id = await _late_capture(payments, order_id)
    clock.ahead = timedelta(seconds=11)
    save, failed = OrderRepository.save, []

    async def save_fails_once_after_the_refund(self: OrderRepository, order: Order, lease: Any = None) -> Order:
        if payments.refunds and not failed:
            failed.append(order.id)
            raise errors.Unavailable("database unavailable", reason="DATABASE_UNAVAILABLE")
        return await save(self, order, lease)

    monkeypatch.setattr(OrderRepository, "save", save_fails_once_after_the_refund)
    assert await app.recheck_charges() == 1
    assert (failed, payments.refunds) == ([order_id], [payment_id])
    assert (await app.get_order(order_id)).charge_recheck_at is not None
    # The next pass finds the capture refunded, not captured: the order still records that it was refunded.
    assert await app.recheck_charges() == 1
    order = await app.get_order(order_id)
    assert (order.state, order.refunded, order.charge_recheck_at) == (OrderState.CANCELLED, True, None)
    assert (payments.refund_calls, cancelled_in_doubt.late_refunds) == (1, [order_id])


async def test_one_cancellation_key_sent_for_two_orders_at_once_cancels_only_one(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is the caller's for the method: two orders cancelled at once under one key must not both be
    # cancelled (neither transaction sees the other's uncommitted cancel_key on PostgreSQL).
    first, second = await place(app, command()), await place(app, command(), key="place-2")
    _meet_after_reading_the_cancel_origin(monkeypatch)
    outcomes = await asyncio.gather(
        app.cancel_order(first, "changed my mind", "cancel-1", "f1"),
        app.cancel_order(second, "changed my mind", "cancel-1", "f2"),
        return_exceptions=True,
    )
    cancelled = [o for o in outcomes if isinstance(o, Order)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert [(type(e), getattr(e, "reason", None)) for e in refused] == [
        (errors.InvalidArgument, "IDEMPOTENCY_KEY_REUSED")
    ]
    assert len(cancelled) == 1
    assert len(payments.refunds) == 1


async def test_a_customers_cancel_reason_is_kept_as_given_when_the_payment_is_refunded(
    app: OrdersApplication, payments: FakePayments
) -> None:
    # The customer's reason (up to 500 characters) is the cancelled order's message: the refund rewrites
    # one ending "; nothing was charged." as if it were orders' own reason, and at 500 characters the
    # rewritten text (506) no longer fits cancel_message's VARCHAR(500) on PostgreSQL.
    order_id = await place(app, command())
    reason = "x" * (500 - len("; nothing was charged.")) + "; nothing was charged."
    cancelled = await app.cancel_order(order_id, reason, "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_message) == (OrderState.CANCELLED, reason)
    assert len(payments.refunds) == 1


async def test_orders_that_wait_for_good_do_not_keep_the_recovery_loop_from_newer_orders(
    app: OrdersApplication, inventory: FakeInventory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders that wait on a dependency for good (here: at COMMIT, their reservations in a state a newer
    inventory stored, which this inventory answers RESERVATION_STATE_UNKNOWN, i.e. UNAVAILABLE: "the order
    waits") are the oldest unfinished ones. The recovery pass takes the oldest `limit` each time: once that
    many wait, a newer order left by a driver that died must still be resumed by a later pass."""
    commit = inventory.commit

    async def commit_or_wait(reservation_id: str) -> None:
        if reservation_id.startswith("res_newer_state"):
            raise errors.Unavailable("inventory answered RESERVATION_STATE_UNKNOWN")
        await commit(reservation_id)

    monkeypatch.setattr(inventory, "commit", commit_or_wait)
    inventory.down = True
    waiting = []
    for n in range(2):
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command(), key=f"waiting-{n}")
        waiting.append(caught.value.metadata["order_id"])
        await _crash_at(database, waiting[-1], SagaStep.COMMIT, reservation_id=f"res_newer_state_{n}")
    # A newer checkout whose driver gave up while inventory was down; inventory is back.
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command(), key="newer")
    newer = caught.value.metadata["order_id"]
    inventory.down = False

    for _ in range(5):
        await app.resume_unfinished(limit=2)
    assert [(await app.get_order(o)).state for o in waiting] == [OrderState.PENDING, OrderState.PENDING]
    order = await app.get_order(newer)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)


async def test_a_recheck_payments_cannot_answer_for_one_order_does_not_hold_up_the_others(
    clocked: Clocked, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order whose payment is in a state a newer payments stored (orders rolled back) waits: the adapter
    answers UNAVAILABLE for that order only (clients._state_unknown). The recheck pass stops at the first
    UNAVAILABLE ("the others would fare no better"), and that order is always the first due: a late capture
    of every order cancelled after it would never be refunded."""
    app = clocked.app()
    cancelled = []
    for n in range(2):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command(PROCESSOR_DOWN), key=f"place-{n}")
        cancelled.append(caught.value.metadata["order_id"])
    waiting, other = cancelled
    payments_for = payments.payments_for

    async def state_unknown_for_one(order_id: str) -> list[Any]:
        if order_id == waiting:
            raise errors.Unavailable(
                "payments answered a state this release of orders does not know", reason="PAYMENT_UNAVAILABLE"
            )
        return await payments_for(order_id)

    monkeypatch.setattr(payments, "payments_for", state_unknown_for_one)
    late = await _late_capture(payments, other)
    clocked.clock.ahead = timedelta(seconds=11)
    for _ in range(3):
        await app.recheck_charges()
    assert payments.refunds == [late]
    order = await app.get_order(other)
    assert (order.refunded, order.charge_recheck_at) == (True, None)


async def test_an_order_the_recovery_loop_could_not_move_on_waits_longer_each_time_up_to_a_limit(
    clocked: Clocked, inventory: FakeInventory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order that waits is tried again after half as long as it has gone without progress: at least a
    recovery interval (2 s here), at most RECOVERY_BACKOFF_MAX_SECONDS (60 s), not on every pass."""
    app = clocked.app()
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    await _crash_at(database, order_id, SagaStep.COMMIT, reservation_id="res_newer_state")
    inventory.down = False
    tried: list[str] = []

    async def commit_waits(reservation_id: str) -> None:
        tried.append(reservation_id)
        raise errors.Unavailable("inventory answered RESERVATION_STATE_UNKNOWN")

    monkeypatch.setattr(inventory, "commit", commit_waits)

    async def tried_at(seconds_ahead: float) -> bool:
        clocked.clock.ahead = timedelta(seconds=seconds_ahead)
        before = len(tried)
        await app.resume_unfinished()
        return len(tried) > before

    assert await tried_at(0)
    assert not await tried_at(0)
    assert await tried_at(3)
    # 20 s without progress: 10 s more.
    assert await tried_at(20)
    assert not await tried_at(28)
    assert await tried_at(33)
    assert await tried_at(1000)
    assert not await tried_at(1057)
    assert await tried_at(1063)
    order = await app.get_order(order_id)
    assert (order.state, order.step) == (OrderState.PENDING, SagaStep.COMMIT)


async def test_an_order_the_recovery_loop_left_waiting_is_not_kept_from_a_retried_place_order(
    clocked: Clocked, inventory: FakeInventory
) -> None:
    """The wait is the recovery loop's: PlaceOrder retried with the card drives the order at once."""
    app = clocked.app()
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    await app.resume_unfinished()
    async with clocked.database.read() as session:
        assert await OrderRepository(session).unfinished(clocked.clock(), 50) == []
    inventory.down = False
    assert await place(app, command()) == order_id
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED


async def _cancelled_in_doubt(app: OrdersApplication, count: int) -> list[str]:
    cancelled = []
    for n in range(count):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command(PROCESSOR_DOWN), key=f"place-{n}")
        cancelled.append(caught.value.metadata["order_id"])
    return cancelled


async def test_payments_down_stops_the_recheck_pass_and_leaves_every_order_due(
    clocked: Clocked, payments: FakePayments
) -> None:
    app = clocked.app()
    cancelled = await _cancelled_in_doubt(app, 2)
    due = [(await app.get_order(o)).charge_recheck_at for o in cancelled]
    payments.down = True
    clocked.clock.ahead = timedelta(seconds=11)
    listed = payments.list_calls
    assert await app.recheck_charges() == 2
    # The first order's question failed for payments as a whole: the second is not asked about.
    assert payments.list_calls == listed + 1
    assert [(await app.get_order(o)).charge_recheck_at for o in cancelled] == due


async def test_a_recheck_payments_cannot_answer_for_one_order_is_put_off_longer_each_time_up_to_a_limit(
    clocked: Clocked, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = clocked.app()
    (order_id,) = await _cancelled_in_doubt(app, 1)
    asked: list[str] = []

    async def state_unknown(order_id: str) -> list[Any]:
        asked.append(order_id)
        raise errors.Unavailable("payments answered a state this release does not know", reason="PAYMENT_UNAVAILABLE")

    monkeypatch.setattr(payments, "payments_for", state_unknown)

    async def put_off_at(seconds_ahead: float) -> timedelta:
        clocked.clock.ahead = timedelta(seconds=seconds_ahead)
        assert await app.recheck_charges() == 1
        order = await app.get_order(order_id)
        assert order.charge_recheck_at is not None
        return order.charge_recheck_at - clocked.clock()

    assert timedelta(seconds=1) < await put_off_at(11) <= timedelta(seconds=6)
    # Not due again at once: the next pass leaves it alone.
    assert await app.recheck_charges() == 0
    assert timedelta(seconds=59) < await put_off_at(1000) <= timedelta(seconds=60)
    assert len(asked) == 2
    order = await app.get_order(order_id)
    assert (order.state, order.refunded) == (OrderState.CANCELLED, False)


_SERIALIZATION_FAILURE = text(
    "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent update'"
    " USING ERRCODE = 'serialization_failure'; END $$"
)


async def _left_pending_while_inventory_was_down(
    app: OrdersApplication, inventory: FakeInventory, key: str = "key-1"
) -> str:
    """An order placed while inventory was down: PENDING, due for the recovery loop. Its id."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command(), key=key)
    inventory.down = False
    return caught.value.metadata["order_id"]


def _first_call_meets(monkeypatch: pytest.MonkeyPatch, method: str, statement: Any) -> list[bool]:
    """Make OrderRepository.`method` run `statement` on its session before its first call (PostgreSQL's own
    error through asyncpg, as the database would raise it); the list it returns is non-empty once it did."""
    original, met = getattr(OrderRepository, method), []

    async def first_call_meets_it(self: OrderRepository, *args: Any) -> bool:
        if not met:
            met.append(True)
            await self._session.execute(statement)
        result: bool = await original(self, *args)
        return result

    monkeypatch.setattr(OrderRepository, method, first_call_meets_it)
    return met


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_on_orders_database_while_resuming_is_a_warning_and_the_next_pass_resumes_the_order(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    # PostgreSQL's own serialization_failure (SQLSTATE 40001), as a lost race raises it.
    raced = _first_call_meets(monkeypatch, "claim", _SERIALIZATION_FAILURE)
    assert await app.resume_unfinished() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # Still due: the next pass resumes it.
    assert (await app.get_order(order_id)).state is OrderState.PENDING
    assert await app.resume_unfinished() == 1
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED


_TOO_MANY_CONNECTIONS = text(
    "DO $$ BEGIN RAISE EXCEPTION 'sorry, too many clients already' USING ERRCODE = 'too_many_connections'; END $$"
)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_orders_database_going_away_while_resuming_stops_the_pass_with_one_warning_and_the_next_resumes(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The other orders due would fare no better: one warning, no traceback per order, and all stay due."""
    order_ids = [await _left_pending_while_inventory_was_down(app, inventory, key) for key in ("away-1", "away-2")]
    # PostgreSQL's own refusal (SQLSTATE 53300), as a database out of connections answers.
    _first_call_meets(monkeypatch, "claim", _TOO_MANY_CONNECTIONS)
    assert await app.resume_unfinished() == 2
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and "database is unavailable" in r.getMessage()]
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert [(await app.get_order(i)).state for i in order_ids] == [OrderState.PENDING] * 2, "the pass stopped"
    assert await app.resume_unfinished() == 2
    assert [(await app.get_order(i)).state for i in order_ids] == [OrderState.CANCELLED] * 2


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_orders_database_away_when_a_recovery_pass_starts_is_one_warning_and_the_loop_goes_on(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The query of the orders due fails before any order is reached: it was swallowed unseen."""
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    away = _first_call_meets(monkeypatch, "unfinished", _TOO_MANY_CONNECTIONS)
    recovery = asyncio.create_task(app.run_recovery(0.01))
    try:

        async def cancelled() -> bool:
            return (await app.get_order(order_id)).state is OrderState.CANCELLED

        # Resumed by a later pass: the loop outlived the failed one.
        await eventually(cancelled, f"{order_id} resumed after the database came back")
        assert not recovery.done()
    finally:
        recovery.cancel()
    assert away
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and "database is unavailable" in r.getMessage()]
    assert "resume_unfinished" in warned.getMessage()
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_bug_when_a_recovery_pass_starts_is_an_error_with_its_traceback_each_pass_and_the_loop_goes_on(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    calls: list[bool] = []

    async def query_has_a_bug(self: OrderRepository, *args: Any) -> list[str]:
        calls.append(True)
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "charges_to_recheck", query_has_a_bug)
    recovery = asyncio.create_task(app.run_recovery(0.01))
    try:
        # Each pass meets it again after its resumptions: the loop keeps going past the failure.
        await eventually(lambda: len(calls) >= 3, "three passes reaching the charge recheck")
        assert not recovery.done()
    finally:
        recovery.cancel()
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(failed) >= 2
    assert all("recheck_charges" in r.getMessage() and r.exc_info is not None for r in failed)
    assert all(isinstance(r.exc_info[1], RuntimeError) for r in failed if r.exc_info)


async def test_a_fault_that_is_no_race_while_resuming_is_still_an_error_with_its_traceback(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = await _left_pending_while_inventory_was_down(app, inventory)

    async def claim_has_a_bug(self: OrderRepository, *args: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "claim", claim_has_a_bug)
    assert await app.resume_unfinished() == 1
    [failed] = [r for r in caplog.records if r.levelname == "ERROR" and order_id in r.getMessage()]
    assert failed.exc_info is not None


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_on_orders_database_while_rechecking_a_charge_is_a_warning_and_the_next_pass_checks_it(
    cancelled_in_doubt: CancelledInDoubt,
    payments: FakePayments,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    clock.ahead = timedelta(seconds=11)
    raced = _first_call_meets(monkeypatch, "claim_recheck", _SERIALIZATION_FAILURE)
    assert await app.recheck_charges() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert await app.recheck_charges() == 1
    assert (await app.get_order(order_id)).charge_recheck_at is None
