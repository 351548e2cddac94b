"""The recovery loop resumes what a driver left unfinished (a PlaceOrder that gave up while inventory was down,
orders killed mid-saga): without the card it never charges, and cancels as CHECKOUT_INTERRUPTED, not as
a payments failure; an order it cannot move on (it waits on a dependency, or fails with an error) waits longer
each time, up to a limit, without keeping newer orders or the customer's own retry waiting."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_chassis.testing import eventually
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.domain.ports import DependencyDown
from shopmesh_orders.domain.validation import CartLine
from shopmesh_orders.saga import SagaDriver, refund_key
from shopmesh_orders.store.repository import OrderRepository

from .conftest import FakeInventory, FakePayments
from .saga_kit import Clocked, _crash_at, _not_retried, _stored_by_a_newer_release, command, place


async def test_inventory_down_leaves_the_order_pending_for_recovery(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    assert (await app.get_order(order_id)).state is OrderState.PENDING
    inventory.down = False
    await _not_retried(database, order_id)
    assert await app.resume_unfinished() == 1
    # Resumed without the card (never stored): no charge was ever sent, so the order is cancelled; for the
    # interruption, not PAYMENT_UNAVAILABLE (payments was up: its alert would blame the wrong service).
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    assert inventory.reserved("prod_a") == 0
    assert payments.charge_calls == 0


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
    await _not_retried(database, newer)
    inventory.down = False

    for _ in range(5):
        await app.resume_unfinished(limit=2)
    assert [(await app.get_order(o)).state for o in waiting] == [OrderState.PENDING, OrderState.PENDING]
    order = await app.get_order(newer)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)


async def test_orders_failing_with_an_unexpected_error_do_not_keep_the_recovery_loop_from_a_charged_order(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders whose resumption fails with an error other than UNAVAILABLE (here: payments answering a refund
    with a status the adapter does not expect, as PAYMENT_NOT_FOUND after a restore of payments) fail the same
    way on every pass. Released with no wait, they were due since they last changed, so once `limit` of them
    failed they took every pass's batch, and an order whose customer was charged stayed PENDING for good."""
    inventory.on_hand["prod_a"] = 100
    failing = [await place(app, command(), key=f"failing-{n}") for n in range(2)]
    refund = payments.refund

    async def refund_meets_an_unexpected_answer(payment_id: str, reason: str, idempotency_key: str) -> None:
        if any(idempotency_key == refund_key(order_id) for order_id in failing):
            raise RuntimeError("payments answered NOT_FOUND (PAYMENT_NOT_FOUND)")
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "refund", refund_meets_an_unexpected_answer)
    for order_id in failing:
        with pytest.raises(RuntimeError):
            await app.cancel_order(order_id, "changed my mind", f"cancel-{order_id}", f"fingerprint-{order_id}")
    charged = await charged_and_left_to_recovery(app, inventory, monkeypatch)
    assert ((await app.get_order(charged)).step, payments.captured()) == (SagaStep.COMMIT, 3)

    for _ in range(5):
        await app.resume_unfinished(limit=2)
    assert (await app.get_order(charged)).state is OrderState.CONFIRMED
    assert [(await app.get_order(o)).step for o in failing] == [SagaStep.REFUND, SagaStep.REFUND]


async def test_orders_that_cannot_be_loaded_do_not_keep_the_recovery_loop_from_a_charged_order(
    app: OrdersApplication,
    inventory: FakeInventory,
    payments: FakePayments,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orders whose rows this release cannot load (an address a newer release stored without a field this one
    needs) fail on every pass. Putting them off reloaded the order, which failed again: they were released
    with no wait, stayed due since they last changed, and once `limit` of them failed they took every pass's
    batch, an order whose customer was charged left PENDING for good."""
    inventory.down = True
    unloadable = []
    for n in range(2):
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command(), key=f"unloadable-{n}")
        unloadable.append(caught.value.metadata["order_id"])
    inventory.down = False
    await _not_retried(database, *unloadable)
    await _stored_by_a_newer_release(database, unloadable)
    charged = await charged_and_left_to_recovery(app, inventory, monkeypatch)
    assert ((await app.get_order(charged)).step, payments.captured()) == (SagaStep.COMMIT, 1)

    for _ in range(5):
        await app.resume_unfinished(limit=2)
    assert (await app.get_order(charged)).state is OrderState.CONFIRMED


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


async def charged_and_left_to_recovery(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A newer customer's order, charged: inventory's commit was unavailable, so PlaceOrder left it to recovery
    (at COMMIT), and inventory answers again from now on. Its id."""
    commit = inventory.commit

    async def commit_unavailable(reservation_id: str) -> None:
        raise DependencyDown("inventory down")

    with monkeypatch.context() as patched:
        patched.setattr(inventory, "commit", commit_unavailable)
        with pytest.raises(errors.Unavailable) as caught:
            await place(app, command(), key="charged")
    assert inventory.commit == commit
    return str(caught.value.metadata["order_id"])
