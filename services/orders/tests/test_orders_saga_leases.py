"""The lease that keeps one driver per order: a held order cannot be taken, a driver whose lease another took
over reports that driver's outcome, and a driver renews its lease across slow remote calls (retrying a
reserve, compensating, rechecking a charge) so that the recovery loop does not drive the same order beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW
from shopmesh_chassis.db import Database
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.domain.validation import CartLine
from shopmesh_orders.lease import LeaseHeld
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import CARD_HOLDER_GRACE, OrderRepository
from shopmesh_orders.store.tables import orders

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import IN_DOUBT, CancelledInDoubt, Clocked, _crash_at, _late_capture, command, place


async def test_a_second_driver_cannot_take_a_held_order(
    app: OrdersApplication, saga: SagaDriver, inventory: FakeInventory
) -> None:
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    order_id = caught.value.metadata["order_id"]
    owner = saga.new_lease_owner()
    assert await saga._claim(order_id, owner, for_customer=True)
    with pytest.raises(LeaseHeld):
        await saga.drive(order_id, None)


async def test_a_driver_whose_lease_was_taken_over_reports_the_other_drivers_outcome(
    app: OrdersApplication,
    saga: SagaDriver,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    database: Database,
) -> None:
    # Another replica's recovery loop: this process's own leaves an order it drives with the card.
    other_replica = OrdersApplication(database, catalog, saga)
    original_reserve = inventory.reserve

    async def slow_reserve(order_id: str, items: object, ttl_seconds: float) -> str:
        # While this step is slow, the lease runs out and another replica's recovery loop drives the order itself.
        inventory.reserve = original_reserve  # type: ignore[method-assign]
        async with database.transaction() as session:
            await OrderRepository(session).release(order_id, "expired")
            from sqlalchemy import update

            from shopmesh_orders.store.tables import orders

            await session.execute(
                update(orders).where(orders.c.id == order_id).values(lease_until=None, lease_owner=None)
            )
        await other_replica.resume_unfinished()
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
class Deployed:
    """Orders' replicas as deployed (lease 10 s = 2 x the 5 s step timeout) on the test's fakes and database,
    sharing one clock that stands still until the test moves it."""

    database: Database
    catalog: FakeCatalog
    inventory: FakeInventory
    payments: FakePayments
    settings: OrdersSettings
    clock: HeldClock = field(default_factory=HeldClock)

    def __post_init__(self) -> None:
        self.settings = self.settings.model_copy(update={"saga_lease_seconds": 10.0, "step_timeout_seconds": 5.0})

    def replica(self) -> tuple[SagaDriver, OrdersApplication]:
        saga = SagaDriver(self.database, self.inventory, self.payments, self.settings, clock=self.clock)
        return saga, OrdersApplication(self.database, self.catalog, saga, clock=self.clock)


@pytest.fixture
def deployed(
    database: Database, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> Deployed:
    return Deployed(database, catalog, inventory, payments, settings)


def _claims_refused(saga: SagaDriver, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once `saga` is refused a claim for a customer (a PlaceOrder retry finding the order held)."""
    claim, refused = saga._claim, asyncio.Event()

    async def claiming(order_id: str, owner: str, *, for_customer: bool) -> bool:
        claimed = await claim(order_id, owner, for_customer=for_customer)
        if for_customer and not claimed:
            refused.set()
        return claimed

    monkeypatch.setattr(saga, "_claim", claiming)
    return refused


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
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
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


def _clock_ahead(seconds: float) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.mark.parametrize("ahead", [14.0, 16.0, 19.0])
async def test_a_replica_whose_clock_is_ahead_does_not_take_over_a_live_checkout(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
    ahead: float,
) -> None:
    """The lease's end is written by its driver's clock and judged by the recovering replica's. With the
    defaults (10 s lease, 5 s grace before the charge), one whose clock was more than 15 s ahead (an NTP step, a
    VM resumed) took a checkout whose lease had 10 s left and cancelled it CHECKOUT_INTERRUPTED under the
    customer's PlaceOrder: the clock audit's finding, failing so on the old code at 16 and 19 s. Within the
    assumed skew (5 s) more, the order is left to its driver."""
    defaults = settings.model_copy(
        update={
            "saga_lease_seconds": 10.0,
            "step_timeout_seconds": 5.0,
            "step_attempts": 3,
            "step_backoff_seconds": 0.2,
        }
    )
    placing = OrdersApplication(
        database, catalog, SagaDriver(database, inventory, payments, defaults), clock=_clock_ahead(0)
    )
    recovering = OrdersApplication(
        database,
        catalog,
        SagaDriver(database, inventory, payments, defaults, clock=_clock_ahead(ahead)),
        clock=_clock_ahead(ahead),
    )
    reserve, resumed = inventory.reserve, []

    async def reserve_while_the_other_replica_recovers(order_id: str, items: Any, ttl_seconds: float) -> str:
        # The placing driver renewed its lease just now, and its Reserve is in flight.
        inventory.reserve = reserve  # type: ignore[method-assign]
        resumed.append(await recovering.resume_unfinished())
        return await reserve(order_id, items, ttl_seconds)

    inventory.reserve = reserve_while_the_other_replica_recovers  # type: ignore[method-assign]
    order = await placing.get_order(await place(placing, command()))
    assert resumed == [0]
    assert (order.state, payments.captured()) == (OrderState.CONFIRMED, 1)


async def _left_by_a_dead_driver(
    app: OrdersApplication,
    inventory: FakeInventory,
    database: Database,
    clock: HeldClock,
    lease: timedelta,
    key: str = "key-1",
) -> str:
    """An order whose PlaceOrder driver was killed (a rollout, an OOM) just after reserving its stock and marking
    its charge, its lease still running: as the pod left it, with the customer's client about to retry."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command(), key)
    order_id: str = caught.value.metadata["order_id"]
    inventory.down = False
    reservation_id = await inventory.reserve(order_id, (CartLine("prod_a", 2),), 120)
    await _crash_at(database, order_id, SagaStep.CHARGE, reservation_id=reservation_id, charge_attempted_at=clock.now)
    async with database.transaction() as session:
        await session.execute(
            update(orders).where(orders.c.id == order_id).values(lease_owner="saga-dead", lease_until=clock.now + lease)
        )
    return order_id


async def test_a_place_order_retry_waiting_on_a_dead_drivers_lease_takes_the_order_when_it_lapses(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit finding: a retry that found the lease held only read the order until another driver finished it.
    When the dead driver's lease lapsed, the recovery loop (no card) took the order and, the charge's window
    over with it (as deployed: lease 10 s = 2 x the 5 s step timeout), found no payment and cancelled it as
    CHECKOUT_INTERRUPTED, which the waiting retry then answered: a customer whose client retried with the card,
    as the contract says, was told the order could not be completed because an orders pod died."""
    settings = settings.model_copy(update={"saga_lease_seconds": 10.0, "step_timeout_seconds": 5.0})
    clock = HeldClock()
    saga = SagaDriver(database, inventory, payments, settings, clock=clock)
    app = OrdersApplication(database, catalog, saga, clock=clock)
    order_id = await _left_by_a_dead_driver(app, inventory, database, clock, timedelta(seconds=10))
    refused = _claims_refused(saga, monkeypatch)
    retrying = asyncio.create_task(place(app, command()))
    await asyncio.wait_for(refused.wait(), 30)
    # The retry is waiting on the dead driver's lease, which now lapses.
    clock.now += timedelta(seconds=11)
    assert await asyncio.wait_for(retrying, 30) == order_id
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CONFIRMED, None)
    assert payments.captured() == 1
    assert inventory.reservations[order.reservation_id][2] == "COMMITTED"


async def test_the_recovery_loop_leaves_a_dead_drivers_order_before_its_charge_to_a_card_holder_for_a_grace(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
) -> None:
    """A retry with the card that arrives just after the dead driver's lease lapsed (or polls just then) gets
    the order, not another replica's recovery pass, which would cancel it as CHECKOUT_INTERRUPTED; the loop
    takes an order nobody retries once the grace is over."""
    settings = settings.model_copy(update={"saga_lease_seconds": 10.0, "step_timeout_seconds": 5.0})
    clock = HeldClock()

    def replica() -> OrdersApplication:
        return OrdersApplication(
            database, catalog, SagaDriver(database, inventory, payments, settings, clock=clock), clock=clock
        )

    placing, other = replica(), replica()
    retried = await _left_by_a_dead_driver(placing, inventory, database, clock, timedelta(seconds=10))
    clock.now += timedelta(seconds=10.5)
    await other.resume_unfinished()
    assert await place(placing, command()) == retried
    order = await placing.get_order(retried)
    assert (order.state, order.cancel_code, payments.captured()) == (OrderState.CONFIRMED, None, 1)

    abandoned = await _left_by_a_dead_driver(placing, inventory, database, clock, timedelta(seconds=10), "key-2")
    clock.now += timedelta(seconds=10.5)
    await other.resume_unfinished()
    assert (await other.get_order(abandoned)).state is OrderState.PENDING
    # The lapse by the dead driver's clock, judged by another's: the clock skew the project assumes later.
    clock.now += CARD_HOLDER_GRACE + MAX_CLOCK_SKEW
    await other.resume_unfinished()
    order = await other.get_order(abandoned)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)


async def test_the_recovery_loop_leaves_an_order_its_own_process_still_drives_with_the_card_past_its_lease(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit finding: the orders process paused (a GC pause, CPU throttling, a VM freeze) while its PlaceOrder
    drive was inside the charge call, for longer than the lease and the card holder's grace. On waking, its own
    recovery pass found the lease lapsed, took the order without the card, found no capture and cancelled it
    CHECKOUT_INTERRUPTED under the very PlaceOrder still charging the card. The process knows it drives that
    order with the card: its recovery leaves it to that drive."""
    settings = settings.model_copy(update={"saga_lease_seconds": 10.0, "step_timeout_seconds": 5.0})
    clock = HeldClock()
    saga = SagaDriver(database, inventory, payments, settings, clock=clock)
    app = OrdersApplication(database, catalog, saga, clock=clock)
    charge, in_charge, let_it_end = payments.charge, asyncio.Event(), asyncio.Event()
    charged_orders: list[str] = []

    async def held_charge(order_id: str, amount_minor: int, currency: str, card: Any, idempotency_key: str) -> str:
        charged_orders.append(order_id)
        in_charge.set()
        await let_it_end.wait()
        return await charge(order_id, amount_minor, currency, card, idempotency_key)

    monkeypatch.setattr(payments, "charge", held_charge)
    placing = asyncio.create_task(place(app, command()))
    waiting = asyncio.create_task(in_charge.wait())
    await asyncio.wait([placing, waiting], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert in_charge.is_set(), f"the PlaceOrder never sent the charge: {placing}"
    (order_id,) = charged_orders

    async def lease_owner() -> str | None:
        async with database.read() as session:
            owner: str | None = (
                await session.execute(
                    orders.select().with_only_columns(orders.c.lease_owner).where(orders.c.id == order_id)
                )
            ).scalar_one()
        return owner

    driving_owner = await lease_owner()
    assert driving_owner is not None
    # The process stood still past the lease and the grace: by the database alone, the order is the loop's.
    lapsed = timedelta(seconds=settings.saga_lease_seconds) + CARD_HOLDER_GRACE + MAX_CLOCK_SKEW
    clock.now += lapsed + timedelta(seconds=1)
    async with database.read() as session:
        assert order_id in [due.order_id for due in await OrderRepository(session).unfinished(clock.now, 50)]
    await app.resume_unfinished()
    assert await lease_owner() == driving_owner
    left = await app.get_order(order_id)
    assert (left.state, left.step) == (OrderState.PENDING, SagaStep.CHARGE)
    let_it_end.set()
    assert await asyncio.wait_for(placing, 30) == order_id
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CONFIRMED, None)
    assert payments.captured() == 1


async def test_the_recovery_loop_leaves_an_order_its_own_process_has_a_card_holder_waiting_for(
    deployed: Deployed, inventory: FakeInventory, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (crash chaos, inventory killed): a PlaceOrder retried with the card polled for the order
    its first call's drive held at RESERVE; that drive gave up on inventory and released the order, and the
    process's own recovery pass, which counted only drives as holding the card, took it before the retry's
    next poll and, inventory back, cancelled it CHECKOUT_INTERRUPTED under the retry. A retry waiting with the
    card keeps the order from its process's recovery loop as a drive does, however long it waits (the process
    here stands still past any grace the order was released with, between two of the retry's polls)."""
    saga, app = deployed.replica()
    reserve, load = inventory.reserve, app._load
    in_reserve, let_reserve_fail, pass_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_reserve(order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        if not in_reserve.is_set():
            in_reserve.set()
            await let_reserve_fail.wait()
        return await reserve(order_id, items, ttl_seconds)

    async def loading(order_id: str, owner_check: bool = False) -> Order:
        if retry_refused.is_set():
            # The retry's next poll (it reads the order first) comes only after the recovery pass below.
            await pass_done.wait()
        return await load(order_id, owner_check)

    retry_refused = _claims_refused(saga, monkeypatch)
    monkeypatch.setattr(inventory, "reserve", held_reserve)
    monkeypatch.setattr(app, "_load", loading)
    inventory.down = True
    placing = asyncio.create_task(place(app, command()))
    await asyncio.wait_for(in_reserve.wait(), 30)
    retrying = asyncio.create_task(place(app, command()))
    await asyncio.wait_for(retry_refused.wait(), 30)
    let_reserve_fail.set()
    with pytest.raises(errors.Unavailable) as caught:
        await asyncio.wait_for(placing, 30)
    order_id = caught.value.metadata["order_id"]
    # The first drive gave the order up; inventory is back, and a recovery pass runs before the retry's next poll.
    inventory.down = False
    deployed.clock.now += CARD_HOLDER_GRACE + MAX_CLOCK_SKEW + timedelta(seconds=deployed.settings.saga_lease_seconds)
    await app.resume_unfinished()  # the order is due (its count), and left to the retry
    pass_done.set()
    assert await asyncio.wait_for(retrying, 30) == order_id
    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code, payments.captured()) == (OrderState.CONFIRMED, None, 1)
    assert inventory.reservations[order.reservation_id][2] == "COMMITTED"


async def test_another_replicas_recovery_loop_leaves_an_order_a_card_drive_released_on_a_dependency_for_a_grace(
    deployed: Deployed, inventory: FakeInventory, payments: FakePayments
) -> None:
    """Audit finding (crash chaos, inventory killed): a PlaceOrder drive with the card gave up on inventory and
    released the order with no wait, its caller told to come back in a second. Inventory back, a recovery pass
    (another replica's, which cannot know of the retry) took the order before the retry with the card and
    cancelled it CHECKOUT_INTERRUPTED. The retry gets it, however its replica was chosen: the loop leaves it the
    wait the answer asked for and the card holder's grace, judged by a clock up to the assumed skew ahead; an
    order nobody retries is taken after that."""
    clock = deployed.clock
    (_, placing), (_, other) = deployed.replica(), deployed.replica()

    async def placed_while_inventory_is_down(key: str) -> tuple[str, timedelta]:
        inventory.down = True
        with pytest.raises(errors.Unavailable) as caught:
            await place(placing, command(), key)
        inventory.down = False
        assert caught.value.retry_after_seconds is not None
        return caught.value.metadata["order_id"], timedelta(seconds=caught.value.retry_after_seconds)

    retried, asked = await placed_while_inventory_is_down("key-1")
    # The retry arrives when it was told to, plus the grace (a slow network), and the other replica's clock is
    # ahead by the skew: its pass runs at the last instant the order is kept (the loop takes a lease_until past).
    clock.now += asked + CARD_HOLDER_GRACE + MAX_CLOCK_SKEW
    assert await other.resume_unfinished() == 0
    assert await place(placing, command()) == retried
    order = await placing.get_order(retried)
    assert (order.state, order.cancel_code, payments.captured()) == (OrderState.CONFIRMED, None, 1)

    abandoned, asked = await placed_while_inventory_is_down("key-2")
    clock.now += asked + CARD_HOLDER_GRACE + MAX_CLOCK_SKEW + timedelta(seconds=0.5)
    assert await other.resume_unfinished() == 1
    order = await other.get_order(abandoned)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
