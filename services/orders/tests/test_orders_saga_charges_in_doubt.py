"""A charge whose outcome orders did not see: sent by a driver that died at the pivot, answered too late, or
cancelled by PlaceOrder while it might still land. Recovery asks payments what happened rather than
conclude "never charged"; a late capture confirms the order or is refunded once its window has passed,
once, even with two drivers; a refund whose answer was lost is still recorded; and the recheck pass waits
out a payments that cannot answer, without holding up the other orders."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.db import Database, as_utc
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.saga import charge_key
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import OrderRepository
from shopmesh_orders.store.tables import orders

from .conftest import FakeInventory, FakePayments
from .saga_kit import (
    GOOD,
    IN_DOUBT,
    PROCESSOR_DOWN,
    CancelledInDoubt,
    Clock,
    Clocked,
    _crash_at,
    _hold_refunds,
    _late_capture,
    _stored_by_a_newer_release,
    command,
    events,
    place,
)


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


async def test_resume_at_the_pivot_refunds_a_capture_of_another_amount_than_the_orders_total(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    """docs/architecture.md: a capture of another amount or currency is no charge of the order, whichever path
    finds it. Here the saga resumed without the card finds a capture of 1000 USD for an order of 2500 USD (an
    earlier release that priced it otherwise): not confirmed as paid, but refunded and cancelled
    PAYMENT_REQUEST_REJECTED, as PlaceOrder's own charge would have been."""
    order_id = await _left_at_the_pivot(app, database, inventory, datetime.now(UTC) - timedelta(seconds=60))
    payment_id = await payments.charge(order_id, 1000, "USD", GOOD, charge_key(order_id))
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code, order.payment_id) == (
        OrderState.CANCELLED,
        CancelCode.PAYMENT_REQUEST_REJECTED,
        payment_id,
    )
    assert order.refunded
    assert (payments.refunds, inventory.reserved("prod_a")) == ([payment_id], 0)


@dataclass
class ChargeInDoubt:
    app: OrdersApplication
    clock: Clock
    order_id: str


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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
    await app.resume_unfinished()
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.cancel_code) == (
        OrderState.PENDING,
        SagaStep.COMPENSATE,
        CancelCode.PAYMENT_UNAVAILABLE,
    )
    payments.down = False
    clock.ahead = IN_DOUBT + timedelta(seconds=3)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
    recheck_charges, refunding_pass_done = app.recheck_charges, asyncio.Event()

    async def recheck_pass(limit: int = 50) -> int:
        checked = await recheck_charges(limit)
        if payments.refunds:
            refunding_pass_done.set()
        return checked

    monkeypatch.setattr(app, "recheck_charges", recheck_pass)
    recovery = app.recovery_loop(0.01)
    recovery.start()
    try:
        await asyncio.wait_for(refunding_pass_done.wait(), 5)
    finally:
        await recovery.stop(timeout=0)
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


async def test_a_replica_whose_clock_is_ahead_does_not_recheck_before_a_late_capture_can_land(
    cancelled_in_doubt: CancelledInDoubt, clocked: Clocked, payments: FakePayments
) -> None:
    """The recheck is due by the cancelling replica's clock and judged by any replica's. One a few seconds ahead
    (an NTP step, a VM resumed) had found the window over while the last charge call was still inside its
    deadline, found no capture, marked the order checked, and the capture landing just after stayed charged on a
    cancelled order for good. The clock audit's finding (its scratch test failed so on the old code)."""
    # True time: 4.9 s after the last charge was sent, inside that call's 5 s deadline.
    clocked.clock.ahead = timedelta(seconds=4.9)
    assert await cancelled_in_doubt.app.recheck_charges() == 0
    # Another replica, its clock 6 s ahead: more than the step timeout, within the skew the project assumes.
    ahead = Clock()
    ahead.ahead = timedelta(seconds=4.9 + 6)
    assert await replace(clocked, clock=ahead).app().recheck_charges() == 0
    # The charge's commit lands now, inside its deadline; a pass past the window (any replica's) refunds it.
    payment_id = await _late_capture(payments, cancelled_in_doubt.order_id)
    clocked.clock.ahead = timedelta(seconds=120)
    assert await cancelled_in_doubt.app.recheck_charges() == 1
    assert (payments.captured(), payments.refunds) == (0, [payment_id])
    order = await cancelled_in_doubt.app.get_order(cancelled_in_doubt.order_id)
    assert (order.state, order.refunded, order.charge_recheck_at) == (OrderState.CANCELLED, True, None)


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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
    # Payments cannot answer: the check waits, it is not given up, and the pass does not fail.
    assert await app.recheck_charges() == 1
    order = await app.get_order(order_id)
    assert (order.refunded, order.charge_recheck_at is not None) == (False, True)
    assert await app.recheck_charges() == 1
    payments.down = False
    clock.ahead = IN_DOUBT + timedelta(seconds=5)
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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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
    clocked.clock.ahead = IN_DOUBT + timedelta(seconds=1)
    for _ in range(3):
        await app.recheck_charges()
    assert payments.refunds == [late]
    order = await app.get_order(other)
    assert (order.refunded, order.charge_recheck_at) == (True, None)


async def _cancelled_in_doubt(app: OrdersApplication, count: int) -> list[str]:
    cancelled = []
    for n in range(count):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command(PROCESSOR_DOWN), key=f"place-{n}")
        cancelled.append(caught.value.metadata["order_id"])
    return cancelled


async def test_rechecks_failing_with_an_unexpected_error_do_not_keep_the_pass_from_another_orders_late_capture(
    clocked: Clocked, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recheck that fails with an error other than UNAVAILABLE (payments answering a status the adapter does
    not expect, or a bug) fails alike on every pass. Left due as it was, it stayed first due (the oldest
    `charge_recheck_at`), so once a pass's `limit` of them failed, no other order's late capture was ever
    refunded: it is put off, as an order the recovery loop cannot move on is."""
    app = clocked.app()
    *failing, other = await _cancelled_in_doubt(app, 3)
    payments_for = payments.payments_for

    async def unexpected_answer_for_some(order_id: str) -> list[Any]:
        if order_id in failing:
            raise RuntimeError("payments answered INTERNAL: ...")
        return await payments_for(order_id)

    monkeypatch.setattr(payments, "payments_for", unexpected_answer_for_some)
    late = await _late_capture(payments, other)
    clocked.clock.ahead = IN_DOUBT + timedelta(seconds=1)
    for _ in range(3):
        await app.recheck_charges(limit=2)
    assert payments.refunds == [late]
    order = await app.get_order(other)
    assert (order.refunded, order.charge_recheck_at) == (True, None)
    assert [(await app.get_order(o)).charge_recheck_at is not None for o in failing] == [True, True]


async def test_cancelled_in_doubt_orders_whose_rows_cannot_be_loaded_do_not_keep_another_orders_late_capture_unrefunded(
    clocked: Clocked, payments: FakePayments
) -> None:
    """A recheck whose order this release cannot load (a row a newer release wrote) fails alike on every pass.
    Only an order that was loaded was put off: these were released with `charge_recheck_at` as it was, led
    every pass, and once a pass's `limit` of them failed no other order's late capture was ever refunded."""
    app = clocked.app()
    *unloadable, other = await _cancelled_in_doubt(app, 3)
    await _stored_by_a_newer_release(clocked.database, unloadable)
    due = await _recheck_due(clocked.database, unloadable)
    late = await _late_capture(payments, other)
    clocked.clock.ahead = IN_DOUBT + timedelta(seconds=1)
    for _ in range(3):
        await app.recheck_charges(limit=2)
    assert payments.refunds == [late]
    order = await app.get_order(other)
    assert (order.refunded, order.charge_recheck_at) == (True, None)
    # Put off, not checked: still to be rechecked, later, and no longer held.
    rows = await _recheck_rows(clocked.database, unloadable)
    assert [row.lease_owner for row in rows] == [None, None]
    put_off = await _recheck_due(clocked.database, unloadable)
    assert all(after > before for after, before in zip(put_off, due, strict=True))


async def _recheck_rows(database: Database, order_ids: list[str]) -> list[Any]:
    # Read raw: these rows are ones `get_order` cannot load.
    async with database.read() as session:
        result = await session.execute(
            select(orders.c.id, orders.c.charge_recheck_at, orders.c.lease_owner).where(orders.c.id.in_(order_ids))
        )
        by_id = {row.id: row for row in result}
    return [by_id[order_id] for order_id in order_ids]


async def _recheck_due(database: Database, order_ids: list[str]) -> list[datetime]:
    return [as_utc(row.charge_recheck_at) for row in await _recheck_rows(database, order_ids)]


async def test_payments_down_stops_the_recheck_pass_and_leaves_every_order_due(
    clocked: Clocked, payments: FakePayments
) -> None:
    app = clocked.app()
    cancelled = await _cancelled_in_doubt(app, 2)
    due = [(await app.get_order(o)).charge_recheck_at for o in cancelled]
    payments.down = True
    clocked.clock.ahead = IN_DOUBT + timedelta(seconds=1)
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

    # Put off by half the time it has waited since it was cancelled.
    first = IN_DOUBT + timedelta(seconds=1)
    assert timedelta(seconds=1) < await put_off_at(first.total_seconds()) <= first / 2 + timedelta(seconds=0.5)
    # Not due again at once: the next pass leaves it alone.
    assert await app.recheck_charges() == 0
    assert timedelta(seconds=59) < await put_off_at(1000) <= timedelta(seconds=60)
    assert len(asked) == 2
    order = await app.get_order(order_id)
    assert (order.state, order.refunded) == (OrderState.CANCELLED, False)
