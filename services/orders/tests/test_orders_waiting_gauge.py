"""shopmesh_orders_waiting_for_dependency: what on-call sees of a payments outage while it lasts. Every order
then waits at COMPENSATE (its charge failed, and compensation must ask payments what went through) and none
is counted in shopmesh_orders_finished_total until payments answers again; the gauge counts them, by step,
from the first recovery round after their driver gave up, and is back to 0 once they are finished."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from shopmesh_chassis import errors
from shopmesh_chassis.testing import eventually
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, OrderState, SagaStep
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_orders.saga import SagaDriver

from .saga_kit import Clocked, _not_retried, command, place

WAITING = "shopmesh_orders_waiting_for_dependency"
STEPS = ("RESERVE", "CHARGE", "COMMIT", "COMPENSATE", "REFUND")


def waiting(registry: CollectorRegistry) -> dict[str, float | None]:
    return {step: registry.get_sample_value(WAITING, {"step": step}) for step in STEPS}


def none_waiting_but(**counts: float) -> dict[str, float | None]:
    return {step: counts.get(step, 0.0) for step in STEPS}


async def test_orders_waiting_for_payments_are_counted_by_step_while_it_is_down_and_no_longer_once_finished(
    clocked: Clocked,
) -> None:
    registry = CollectorRegistry()
    metrics = OrderMetrics(registry)
    saga = SagaDriver(clocked.database, clocked.inventory, clocked.payments, clocked.settings, clock=clocked.clock)
    app = OrdersApplication(
        clocked.database, clocked.catalog, saga, clock=clocked.clock, on_waiting=metrics.waiting_for_dependency
    )
    assert waiting(registry) == none_waiting_but(), "each step's series is exported at 0 from the start"

    clocked.payments.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    assert caught.value.metadata["step"] == SagaStep.COMPENSATE.value
    order_id = caught.value.metadata["order_id"]

    recovery = app.recovery_loop(0.01)
    recovery.start()
    try:
        await eventually(lambda: waiting(registry) == none_waiting_but(COMPENSATE=1), "the waiting order counted")
        # The recovery loop's own tries while payments stays down (each holding the order for its step's retries)
        # leave it counted: it still waits.
        calls = clocked.payments.list_calls
        clocked.clock.ahead += timedelta(minutes=2)
        await eventually(lambda: clocked.payments.list_calls > calls, "the recovery loop asking payments again")
        assert await app.count_waiting() == {SagaStep.COMPENSATE: 1}

        clocked.payments.down = False
        clocked.clock.ahead += timedelta(minutes=2)
        await eventually(lambda: waiting(registry) == none_waiting_but(), "no order counted once it is finished")
    finally:
        await recovery.stop(timeout=0)
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.PAYMENT_UNAVAILABLE)


async def test_an_order_that_fails_with_an_error_of_its_own_is_not_counted_as_waiting(
    clocked: Clocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a driver fails on the order with anything but a dependency's UNAVAILABLE (an answer orders does not
    expect, a bug: ShopmeshOrderRecoveryFailing's case), it no longer waits for a dependency."""
    app = clocked.app()
    clocked.payments.down = True
    with pytest.raises(errors.Unavailable):
        await place(app, command())
    assert await app.count_waiting() == {SagaStep.COMPENSATE: 1}

    async def unexpected(order_id: str) -> list[object]:
        raise RuntimeError("an answer orders does not expect")

    monkeypatch.setattr(clocked.payments, "payments_for", unexpected)
    assert await app.resume_unfinished() == 1
    assert await app.count_waiting() == {}


async def test_an_order_waiting_for_a_newer_release_of_orders_is_not_counted_as_waiting_for_a_dependency(
    clocked: Clocked,
) -> None:
    """After a rollback, inventory answers for a reservation a newer release stored a state this release of
    orders cannot act on (final: clients._state_unknown). Inventory is healthy; the order waits for a release
    of orders that knows the state, and ShopmeshCheckoutsWaiting (fix the dependency) must not fire for it."""
    app = clocked.app()
    clocked.inventory.answers = errors.Unavailable(
        "inventory answered a state this release of orders does not know for the reservation (7)",
        reason="RESERVATION_STATE_UNKNOWN",
        retry_after_seconds=2,
        final=True,
    )
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    assert caught.value.final
    assert await app.count_waiting() == {}
    # Nor once the recovery loop has met the same answer (the card holder's grace over, within the deadline).
    order_id = caught.value.metadata["order_id"]
    await _not_retried(clocked.database, order_id)
    assert await app.resume_unfinished() == 1
    assert clocked.inventory.calls == ["reserve", "reserve"]
    assert await app.count_waiting() == {}
    order = await app.get_order(order_id)
    assert (order.state, order.step) == (OrderState.PENDING, SagaStep.RESERVE), "it still waits, uncounted"
