"""What a dependency asks orders to wait for: inventory's RetryInfo passed on in PlaceOrder's and CancelOrder's
answers and honoured by the recovery loop; a wait longer than a step's deadline asked again, not taken as
final; and a final answer (a state only a newer release knows) asked once per call and per recovery pass,
not STEP_ATTEMPTS times."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shopmesh_chassis import errors
from shopmesh_orders.domain.model import CancelCode, OrderState, SagaStep

from .conftest import FakePayments
from .inventory_on_the_wire import _with_inventory_over_grpc
from .saga_kit import Clock, Clocked, _not_retried, command, place


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
    await _not_retried(clocked.database, caught.value.metadata["order_id"])
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
        await _not_retried(clocked.database, order_id)
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
