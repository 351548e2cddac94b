"""The order's stock reservation after the pivot or on a retry: one that expired, was released, vanished from
inventory, was made anew, or is in a state only a newer inventory can name. Most are met by a PlaceOrder
retried with the card past the saga's deadline (the reservation TTL), after the recovery loop reserved while
payments was down: the card is charged only against a reservation that holds, a capture against one that
does not is refunded, and nothing is blamed on payments that payments did not do. Where what inventory
answers on the wire decides, these run orders' own InventoryClient over real gRPC
(inventory_on_the_wire.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW
from shopmesh_chassis.db import Database
from shopmesh_orders import codec
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, OrderState, SagaStep
from shopmesh_orders.domain.ports import DependencyDown
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.saga import RESERVATION_IN_DOUBT, SagaDriver
from shopmesh_orders.settings import OrdersSettings

from .conftest import FakeInventory, FakePayments
from .inventory_on_the_wire import A_NEWER_RELEASES_STATE, InventoryOnTheWire, _with_inventory_over_grpc
from .saga_kit import Clocked, _crash_at, _late_capture, _not_retried, command, events, place


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
    """An order whose PlaceOrder gave up on inventory, not retried, then reserved by the recovery loop (no card)
    while payments could not say whether a charge exists: left PENDING at CHARGE, nothing charged."""
    app = clocked.app()
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    await _not_retried(clocked.database, order_id)
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


async def test_a_retry_with_the_card_just_before_the_saga_deadline_asks_inventory_before_charging(
    clocked: Clocked, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    """A reservation's expiry is written by the clock of the inventory replica that made it: one behind orders'
    lapses it earlier than orders counts. Orders charged without asking until its own deadline had passed, the
    commit was refused, and the customer was charged and refunded (the clock audit's finding: failing so on the
    old code). Within the assumed clock skew of the deadline it asks inventory first."""
    app, order_id, reservation_id = await _reserved_by_recovery_while_payments_is_down(clocked, inventory, payments)
    clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds) - MAX_CLOCK_SKEW / 2
    inventory.reservations[reservation_id] = (order_id, (CartLine("prod_a", 2),), "EXPIRED")
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == "RESERVATION_EXPIRED"
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


async def test_giving_back_a_reservation_made_anew_renews_the_lease_after_the_reserve_call(
    clocked: Clocked, payments: FakePayments, settings: OrdersSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: the Reserve that finds the order's reservation made anew and the Release that gives the new
    hold back are two remote calls with no step saved between them, and no renewal either: two calls each within
    STEP_TIMEOUT_SECONDS outlast a lease that covers one (lease_needed_seconds), and another replica's recovery
    pass could take the order beside its driver. The lease is renewed before the Release, as compensation does
    before each of its calls."""
    async with _with_inventory_over_grpc(clocked) as (clocked, inventory):
        app, _, reservation_id = await _reserved_by_recovery_while_payments_is_down(
            clocked, clocked.inventory, payments
        )
        clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 10)
        del inventory.reservations[reservation_id]  # Its row is gone.
        timeline: list[str] = []
        saga, port = app._saga, clocked.inventory
        keep_lease, reserve, release = saga._keep_lease, port.reserve, port.release

        async def renewing(order_id: str, owner: str) -> None:
            timeline.append("renew")
            await keep_lease(order_id, owner)

        async def reserving(order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
            timeline.append("reserve")
            return await reserve(order_id, items, ttl_seconds)

        async def releasing(released_id: str) -> None:
            timeline.append(f"release {'own' if released_id == reservation_id else 'made anew'}")
            await release(released_id)

        monkeypatch.setattr(saga, "_keep_lease", renewing)
        monkeypatch.setattr(port, "reserve", reserving)
        monkeypatch.setattr(port, "release", releasing)
        with pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command())
        assert caught.value.reason == "RESERVATION_EXPIRED"
        given_back = timeline.index("release made anew")
        assert timeline[given_back - 2 : given_back + 1] == ["reserve", "renew", "release made anew"], timeline


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


async def test_a_charge_sent_after_a_slow_reservation_check_is_dated_when_sent_so_its_late_capture_is_refunded(
    clocked: Clocked,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the order's deadline the charge step first asks inventory whether the stock is still held, which can
    take a whole step timeout (inventory slow: its deadline passes, and the saga charges as without asking). The
    charge's mark must say when the charge was sent, not when the step began: the mark opens the window in which
    the charge may still land (2 x STEP_TIMEOUT_SECONDS), and a mark one step timeout early closes it when the
    charge's own deadline does. Compensation then finds no capture, leaves no recheck, and a capture landing
    just after its deadline stays on the card of an order told "cancelled, nothing was charged"."""
    step_timeout = timedelta(seconds=5)  # Clocked.app()'s
    app, order_id, _ = await _reserved_by_recovery_while_payments_is_down(clocked, inventory, payments)
    clocked.clock.ahead = timedelta(seconds=settings.reservation_ttl_seconds + 1)

    async def reserve_waits_out_its_deadline(order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        clocked.clock.ahead += step_timeout
        raise DependencyDown("inventory: deadline exceeded")

    async def charge_waits_out_its_deadline(order_id: str, amount: int, currency: str, card: Card, key: str) -> str:
        # Its commit on payments is still under way when the deadline passes: it lands later (below).
        payments.charge_calls += 1
        clocked.clock.ahead += step_timeout
        raise DependencyDown("payments: deadline exceeded", reason="PAYMENT_UNAVAILABLE")

    monkeypatch.setattr(inventory, "reserve", reserve_waits_out_its_deadline)
    monkeypatch.setattr(payments, "charge", charge_waits_out_its_deadline)
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command())
    assert caught.value.reason == CancelCode.PAYMENT_UNAVAILABLE.value
    order = await app.get_order(order_id)
    assert (order.state, payments.charge_calls) == (OrderState.CANCELLED, settings.step_attempts)
    assert order.charge_recheck_at is not None, "compensation asked while the last charge was in doubt"
    monkeypatch.undo()
    await _late_capture(payments, order_id)
    clocked.clock.ahead += timedelta(minutes=5)
    assert await app.recheck_charges() == 1
    assert (payments.captured(), len(payments.refunds)) == (0, 1)
