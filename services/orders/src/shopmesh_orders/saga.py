"""The checkout saga's driver: runs the order's next step until the saga is done, persisting every step.

reserve stock → charge (the pivot) → commit the reservation → CONFIRMED.
A definitive failure before the pivot compensates (undo any charge, release the stock) → CANCELLED.
Past the pivot the saga only moves forward, except when the reservation can no longer be committed:
then it refunds, releases and cancels. Every step is idempotent on the other side (inventory keys by
order id, payments by `<order_id>:charge` / `<order_id>:refund`), so running a step again after a crash
is safe. Transitions into CONFIRMED / CANCELLED write their event to the outbox in the same transaction.

A driver resumed at the pivot has no card (cards are never stored): it asks payments what happened, but
only once a charge an earlier driver sent can no longer land (twice the step timeout after it was sent);
until then the order waits at CHARGE, neither confirmed nor compensated.

A PlaceOrder driver holds the card and answers promptly: once its charge calls all ended UNAVAILABLE it
compensates at once, although the last call's commit on payments (or the processor's) may still land. So a
compensation that asks payments while the charge is in doubt, and finds no capture, cancels the order with
a recheck due when the charge can no longer land (`charge_recheck_at`). The recovery loop then asks payments
again (`recheck_charge`, in recheck.py): a capture that landed late is refunded (logged at ERROR and counted), and the
order is marked checked (a recheck payments cannot answer for this order alone, as opposed to payments
being down, or one that fails with an error, is put off like an order the recovery loop could not move on).
It stays CANCELLED and emits no second event: the customer was told "cancelled, nothing was charged", which
the refund makes true again (payments publishes PaymentRefunded itself).

Only one driver works on an order at a time: it holds a lease in the database (lease.py; renewed with every saved
transition, before every retry of a step and before every remote call of compensation, a recheck or the
give-back of a reservation made anew that follows another with no step saved between them; a driver that finds
it lost stops); a driver that dies leaves the lease to run out, and a PlaceOrder retried with the card or the
recovery loop takes the order over (the loop a little later before the pivot: `OrderRepository.unfinished`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta

from opentelemetry import trace

from shopmesh_chassis import errors
from shopmesh_chassis.backoff import backoff_delay
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW, Clock, utc_now
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.outbox import add_event, new_event_id
from shopmesh_orders import codec
from shopmesh_orders.domain.charges import CaptureOfAnotherAmount, earlier_charge
from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.domain.ports import (
    DependencyDown,
    InsufficientStock,
    Inventory,
    LostRace,
    PaymentRefused,
    Payments,
    RefundRefused,
    ReservationExpired,
    cart_of,
)
from shopmesh_orders.domain.validation import Card
from shopmesh_orders.lease import LeaseHeld, fails_again, lease_lost
from shopmesh_orders.recheck import ChargeRecheck
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import CARD_HOLDER_GRACE, Lease, OrderRepository

log = logging.getLogger("shopmesh.orders.saga")

# The span attributes naming an order and why it was cancelled (its CancelCode, the metric's `reason`).
ORDER_ID_ATTRIBUTE = "shopmesh.order_id"
CANCEL_CODE_ATTRIBUTE = "shopmesh.cancel_code"

ORDER_CONFIRMED = "orders.v1.order_confirmed"
ORDER_CANCELLED = "orders.v1.order_cancelled"
# The saga's Unavailable reason while a charge sent by an earlier driver may still land on payments.
CHARGE_IN_DOUBT = "CHARGE_IN_DOUBT"
# The saga's Unavailable reason while inventory cannot say, for this order alone, whether the stock it reserved
# past the order's deadline is still held (`_still_reserved`).
RESERVATION_IN_DOUBT = "RESERVATION_IN_DOUBT"


# The steps at which an order has no charge known captured: the recovery loop, with no card, cancels it there.
_BEFORE_THE_PIVOT = (SagaStep.RESERVE, SagaStep.CHARGE)

# A charge mark younger than this was written by this driver just before (with the reservation).
_FRESH = timedelta(seconds=1)


def _charge_in_doubt(order: Order, remaining: timedelta) -> errors.Unavailable:
    """The saga waits at the pivot: an earlier charge attempt may still land for `remaining`."""
    return errors.Unavailable(
        f"order {order.id} is waiting for an earlier charge attempt to settle",
        reason=CHARGE_IN_DOUBT,
        retry_after_seconds=max(remaining.total_seconds(), 0.1),
        metadata={"order_id": order.id, "step": order.step.value},
    )


def _reservation_in_doubt(order: Order, cause: errors.Unavailable) -> errors.Unavailable:
    return errors.Unavailable(
        f"order {order.id} is waiting for inventory to say whether its stock is still held: {cause.message}",
        reason=RESERVATION_IN_DOUBT,
        retry_after_seconds=cause.retry_after_seconds or 1.0,
        metadata={"order_id": order.id, "step": order.step.value},
        # Inventory's answer for a state a newer release stored is final (the adapter's): so is the order's.
        final=cause.final,
    )


class PlacementCall:
    """The PlaceOrder call a drive answers, as much as the order's cancellation event needs of it: whether the
    call still waits for the drive, and so tells the customer of the cancellation itself (OrderCancelled's
    `answered_at_placement`: then no e-mail). The drive and the call settle it between them on the event loop,
    so that a call that stops waiting for the saga as the cancellation is written does not leave the customer
    untold: once the drive took the cancellation for the call's answer, the call waits on for its commit.

    One narrow gap is left, logged as a WARNING naming the order (placement's `_log_untold`): a call that goes
    away in that wait (its caller cancels, its deadline passes), or whose wait for the commit reaches its deadline
    (a hung database), ends without the cancellation, and the event already says "no e-mail". Closing it would
    need the flag set after the commit, and it is in the outbox event of the same transaction."""

    def __init__(self) -> None:
        self._waiting = True
        self._answered = False

    def answers_with_cancellation(self) -> bool:
        """The drive, about to write the order's cancellation: whether the call still waits for it (it then
        waits on until the drive ends: `stop_waiting` says so)."""
        self._answered = self._waiting
        return self._answered

    def stop_waiting(self) -> bool:
        """The call, about to answer without the drive's outcome (or gone): False when the drive has already
        written its cancellation as this call's answer, which is then a commit away: the call waits for it."""
        if self._answered:
            return False
        self._waiting = False
        return True


# The PlaceOrder call the drive running in this task answers, if any: set by `drive` in the task's own context
# (placement starts each drive in a copy of its own), read where the cancellation is written, steps below.
_PLACEMENT_CALL: ContextVar[PlacementCall | None] = ContextVar("placement_call", default=None)


def charge_key(order_id: str) -> str:
    return f"{order_id}:charge"


def refund_key(order_id: str) -> str:
    return f"{order_id}:refund"


class SagaDriver(ChargeRecheck):
    def __init__(
        self,
        database: Database,
        inventory: Inventory,
        payments: Payments,
        settings: OrdersSettings,
        *,
        on_event: Callable[[], None] = lambda: None,
        on_finished: Callable[[Order], None] = lambda order: None,
        on_late_refund: Callable[[Order], None] = lambda order: None,
        clock: Clock = utc_now,
    ) -> None:
        self._db = database
        self._inventory = inventory
        self._payments = payments
        self._settings = settings
        self._on_event = on_event
        # Called once the terminal transition has committed (e.g. to count how orders end).
        self._on_finished = on_finished
        # Called when a capture that landed after the order was cancelled has been refunded.
        self._on_late_refund = on_late_refund
        self._clock = clock

    async def drive(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None = None,
        order: Order | None = None,
        *,
        caller: PlacementCall | None = None,
    ) -> Order:
        """Run the saga of `order_id` until it is done or a dependency stays unavailable.

        `card` is known only to the PlaceOrder call that carries it; a resumed saga has none (cards are
        never stored) and settles the charge step by asking payments what happened.
        `owner` and `order` come from the PlaceOrder that just recorded the order with its lease held:
        then there is nothing to claim or load.
        Raises `errors.Unavailable` when the saga must wait; the order stays PENDING with its lease
        released, and the recovery loop (or a retried PlaceOrder) continues it: with the card before the
        pivot, the loop only after a while the retry has to itself (`_kept_for_the_card`).
        `caller`: the PlaceOrder call waiting for this drive, when it is one (CancelOrder's is not): a
        cancellation it ends in while that call waits is the call's answer, and its event says so.
        """
        _PLACEMENT_CALL.set(caller)
        return await self._drive(order_id, card, owner, order, resumed=False)

    async def claim_to_resume(self, order_id: str) -> str:
        """Take the saga lease of an order no live driver holds, for `resume`: its lease owner. Raises LeaseHeld
        when another driver holds it (or it is no longer drivable). Apart from `resume` so that the recovery
        loop starts its work on the order (its span in the checkout's trace) only once it has the order."""
        owner = self.new_lease_owner()
        if not await self._claim(order_id, owner, for_customer=False):
            raise LeaseHeld(order_id)
        return owner

    async def resume(self, order_id: str, owner: str) -> Order:
        """`drive` for the recovery loop: an order it claimed (`claim_to_resume`, `owner`), without the card.
        When the order must wait (`errors.Unavailable`) or fails with any other error, the loop leaves it alone
        for a while (`_retry_at`), so that orders which wait or fail for long, or for good, do not lead every
        pass and keep it from the others. The lease is given up however it ends."""
        return await self._drive(order_id, None, owner, None, resumed=True)

    async def _drive(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None,
        order: Order | None,
        *,
        resumed: bool,
    ) -> Order:
        not_before: datetime | None = None
        # Whether the drive gave up on a dependency (`OrderRepository.waiting_for_dependency`); None: it did not
        # end on an exception of its own (cut off), and the mark stays as the last drive left it.
        waiting: bool | None = None
        # An owner comes with the lease held: PlaceOrder's, which recorded the order (and brings it), or the
        # recovery loop's, which claimed it (`claim_to_resume`).
        if owner is None:
            owner = self.new_lease_owner()
            # Only `drive` comes here without an owner: a PlaceOrder with the card, or a CancelOrder (no card).
            if not await self._claim(order_id, owner, for_customer=True):
                raise LeaseHeld(order_id)
            order = None
        try:
            if order is None:
                order = await self._load(order_id)
            while not order.is_terminal:
                order = await self._attempt(order, card, owner)
            return order
        except Exception as exc:
            if lease_lost(exc):
                # Our lease ran out during a slow step and another driver took the order over: it finishes it.
                raise LeaseHeld(order_id) from exc
            # A final Unavailable is the adapter's answer for a state a newer release of inventory or payments
            # stored (clients._state_unknown, _refused_for_unknown_state): the order waits for a newer release of
            # orders to drive it, not for a dependency to come back, which both answer. Counted, a rollback with
            # such orders left would fire ShopmeshCheckoutsWaiting (critical) with every dependency healthy.
            waiting = isinstance(exc, errors.Unavailable) and not exc.final
            if resumed and fails_again(exc):
                # Not only an order that waits (`errors.Unavailable`): one that fails with anything else (an
                # answer the adapter does not expect, a bug) likely fails alike on every pass, and released with
                # no wait it would be due first, so enough of them would take every pass's batch and no other
                # order would be resumed.
                not_before = await self._resume_at(order_id, exc)
            elif card is not None and isinstance(exc, errors.Unavailable) and order is not None:
                # Its caller was answered UNAVAILABLE and retries with the card: it, not the loop, gets the order.
                not_before = self._kept_for_the_card(order, exc)
            raise
        finally:
            # The terminal transition gave the lease up in its own transaction.
            if order is None or not order.is_terminal:
                await self._release(order_id, owner, not_before, waiting)

    async def _resume_at(self, order_id: str, failure: Exception) -> datetime:
        """When the recovery loop tries again a resumed order that failed (`_retry_at`). Reloaded: a step saved
        before the failure is progress, and restarts the backoff. An order that cannot be loaded (the failure
        may have been its loading: a row a newer release wrote) waits one recovery interval: put off all the
        same, or it would stay first due and lead every pass."""
        try:
            order = await self._load(order_id)
        except Exception:
            return self._one_interval_on()
        return self._retry_at(order, failure)

    def _kept_for_the_card(self, order: Order, waits: errors.Unavailable) -> datetime | None:
        """Until when the recovery loop leaves an order that a drive with the card released to wait at `order`'s
        step (`waits`: it gave up on a dependency). Its caller was answered UNAVAILABLE, or is polling for it (a
        retry), and comes back with the card after the wait the answer asked for; released with no wait, the
        order was any replica's recovery pass's at once, and that pass, which has no card, cancels it
        CHECKOUT_INTERRUPTED once the dependency is back. As for a lease that lapsed before the pivot
        (`OrderRepository.unfinished`): CARD_HOLDER_GRACE past that wait, and the clock skew the project assumes,
        as another replica's clock reads this time. A retry claims the order at once all the same
        (`OrderRepository.release`). None (no wait) past the pivot: the card is of no more use there, and the
        loop finishes the order as the retry would."""
        if order.step not in _BEFORE_THE_PIVOT:
            return None
        asked = timedelta(seconds=waits.retry_after_seconds or 0.0)
        return self._clock() + asked + CARD_HOLDER_GRACE + MAX_CLOCK_SKEW

    def _one_interval_on(self) -> datetime:
        """One recovery interval from now: how long an order that cannot be loaded is put off, with no
        `updated_at` for `_retry_at` to grow the wait from."""
        return self._clock() + timedelta(seconds=self._settings.recovery_interval_seconds)

    def _retry_at(self, order: Order, failure: Exception) -> datetime:
        """When the recovery loop tries again an order it could not move on (it waits, or it failed): after
        half as long as the order has gone without changing (so the wait grows by half each time), at least one
        recovery interval and the wait a dependency asked for, at most RECOVERY_BACKOFF_MAX_SECONDS. No attempt
        count is stored: `updated_at` moves only with progress."""
        now = self._clock()
        interval = self._settings.recovery_interval_seconds
        longest = self._settings.recovery_backoff_max_seconds
        asked = (failure.retry_after_seconds if isinstance(failure, errors.Unavailable) else None) or 0.0
        waited = max((now - order.updated_at).total_seconds(), 0.0)
        delay = min(max(waited / 2, interval, asked), max(longest, interval))
        return now + timedelta(seconds=delay)

    async def _attempt(self, order: Order, card: Card | None, owner: str) -> Order:
        """One step, retried a few times while its dependency is unavailable, unless its answer is final."""
        attempts = self._settings.step_attempts
        for attempt in range(1, attempts + 1):
            # Only a saved transition renews the lease, and none is saved between attempts of a step: a
            # driver retrying a slow dependency would outlive its lease, and the recovery loop, which has no
            # card, would take the order over and cancel it. (The first attempt follows the claim or the
            # transition that set the lease.)
            if attempt > 1:
                await self._keep_lease(order.id, owner)
            try:
                return await self._step(order, card, owner)
            except errors.Unavailable as exc:
                if exc.reason == RESERVATION_IN_DOUBT:
                    # Inventory's answer about this order will not change within these retries, and giving up
                    # past the deadline would cancel the order as PAYMENT_UNAVAILABLE: the order waits as is.
                    raise
                # The step may have persisted a write-ahead mark before failing: continue from the database.
                order = await self._load(order.id)
                # A charge in doubt settles in seconds, not within these retries' backoff; a final answer (the
                # adapter's for a state only a newer release knows) is the same until the wait it asks for has
                # passed: stop asking, and pass that wait and final on. A dependency's "do not retry" is not
                # final here: it says only that its wait did not fit this attempt's deadline, the next has a new one.
                if attempt == attempts or exc.reason == CHARGE_IN_DOUBT or exc.final:
                    return await self._gave_up(order, card, owner, exc)
                await asyncio.sleep(self._step_backoff(attempt))
        raise AssertionError("unreachable")

    def _step_backoff(self, attempt: int) -> float:
        """The wait after a step's `attempt`-th try (1-based): exponential from step_backoff_seconds."""
        return backoff_delay(self._settings.step_backoff_seconds, attempt - 1)

    async def _gave_up(self, order: Order, card: Card | None, owner: str, last: errors.Unavailable) -> Order:
        """A dependency stayed unavailable for all attempts of this step, or answered what these attempts cannot
        change (a charge in doubt; a final answer); `last` is what its last attempt met."""
        now = self._clock()
        if order.step is SagaStep.CHARGE and order.charge_attempted_at is not None:
            settled_at = self._charge_settled_at(order.charge_attempted_at)
            if card is None and now < settled_at:
                # Resumed without the card: the charge was sent by a driver that is gone, and it may still
                # be committing on payments. Compensating now would find no payment, cancel, and leave a
                # capture that lands afterwards on a cancelled order with nothing to refund it. Stay at the
                # pivot; the recovery loop settles the charge once its window has passed.
                raise _charge_in_doubt(order, settled_at - now)
            # Payments stayed unavailable: cancel before the pivot. COMPENSATE asks payments whether
            # a charge got through anyway and refunds it before the stock is released. A driver with the
            # card answers PlaceOrder now rather than wait: its last call ended, but that call's commit on
            # payments may not have, so compensation leaves a recheck for the recovery loop.
            return await self._transition(owner, order.failed_before_pivot(CancelCode.PAYMENT_UNAVAILABLE, now))
        if order.step in (SagaStep.RESERVE, SagaStep.CHARGE) and self._expired(order):
            code = CancelCode.RESERVATION_EXPIRED if order.step is SagaStep.RESERVE else CancelCode.PAYMENT_UNAVAILABLE
            return await self._transition(owner, order.failed_before_pivot(code, now))
        raise errors.Unavailable(
            f"order {order.id} is waiting for a dependency at step {order.step.value}",
            reason=errors.DEPENDENCY_UNAVAILABLE,
            # The dependency's own wait (a rate-limiting or draining inventory's 20 s): PlaceOrder's caller,
            # CancelOrder's and the recovery loop (`_retry_at`) come back then, not a second later.
            retry_after_seconds=last.retry_after_seconds or 1.0,
            metadata={"order_id": order.id, "step": order.step.value},
            # Final when the last answer was (a state only a newer release knows): a channel's own retry would
            # drive the step again to meet the same answer.
            final=last.final,
        )

    def _expired(self, order: Order, *, early: timedelta = timedelta()) -> bool:
        return self._clock() > order.created_at + timedelta(seconds=self._settings.reservation_ttl_seconds) - early

    async def _reserve(self, order: Order) -> str:
        """Inventory's Reserve for the order's lines, keyed by the order: a repeat replays its reservation."""
        return await self._inventory.reserve(order.id, cart_of(order.lines), self._settings.reservation_ttl_seconds)

    async def _still_reserved(self, order: Order, owner: str) -> bool:
        """Whether inventory still holds the order's stock. Asked only past the order's deadline (or within the
        assumed clock skew of it), when the reservation may have lapsed (it may also outlive that deadline: the
        recovery loop can reserve long after the order was placed). Reserve is keyed by the order: it replays the
        reservation as inventory sees it now, an overdue one EXPIRED. Short of stock means inventory holds none
        for the order either.

        Inventory answering for this order alone that it cannot say (a state a newer release stored; a race
        lost on every one of STEP_ATTEMPTS tries) raises `errors.Unavailable` with RESERVATION_IN_DOUBT:
        nothing may be charged against it, and the order waits at the charge step (`_attempt`). Only until the
        recovery loop comes by: without the card it gives the order up (CHECKOUT_INTERRUPTED), and compensation
        waits for an inventory that can release the reservation (a state it cannot name may hold stock), the
        order PENDING until then."""
        try:
            reservation_id = await self._reserve_past_races(order, owner)
        except (ReservationExpired, InsufficientStock):
            return False
        except DependencyDown:
            # Inventory is down: no reason to cancel. Retried and given up, the step would be cancelled as
            # PAYMENT_UNAVAILABLE, blaming payments. Charge as without asking; the commit still refuses a
            # lapsed reservation, and the charge is then refunded.
            return True
        except errors.Unavailable as exc:
            raise _reservation_in_doubt(order, exc) from exc
        if reservation_id != order.reservation_id:
            # Inventory no longer had the order's reservation (its row was removed: a restore, a manual
            # clean-up) and made a new one: the commit of the order's own would fail, so that hold would only
            # linger until it expires. Give it back now.
            log.warning(
                "order %s: inventory reserved anew (%s) instead of replaying %s; released, the order is not charged",
                order.id,
                reservation_id,
                order.reservation_id,
                extra={"order_id": order.id},
            )
            # A second remote call with no step saved since the Reserve: renew first (as compensation does), or
            # two slow calls outlast the lease and another driver takes the order beside this one. Outside the
            # try: a lease lost (LeaseHeld) or orders' database away is not inventory's answer to tidying up.
            await self._keep_lease(order.id, owner)
            try:
                await self._inventory.release(reservation_id)
            except errors.Unavailable as exc:
                # Only tidying up: the order's own stock is gone whatever this answers. Raised, the step would be
                # retried and given up, and the order cancelled as PAYMENT_UNAVAILABLE, blaming payments; and
                # compensation would not know this hold either. It lapses at its TTL.
                log.warning(
                    "order %s: reservation %s made anew is not released (%s); it lapses at its TTL",
                    order.id,
                    reservation_id,
                    exc,
                    extra={"order_id": order.id},
                )
            return False
        return True

    async def _reserve_past_races(self, order: Order, owner: str) -> str:
        """`_reserve`, asked again while inventory answers that its write lost a race (`LostRace`, ABORTED),
        which its next try likely wins; the last of STEP_ATTEMPTS tries answers whatever it answers. Retried
        here, not by `_attempt`: `_attempt` leaves an order in doubt to wait, and the recovery loop, which has
        no card, would then cancel it with its stock still held."""
        for attempt in range(1, self._settings.step_attempts):
            try:
                return await self._reserve(order)
            except LostRace:
                await asyncio.sleep(self._step_backoff(attempt))
                # Remote calls with no step saved between them: renew the lease before the next (as `_attempt`).
                await self._keep_lease(order.id, owner)
        return await self._reserve(order)

    def _charge_settled_at(self, charge_attempted_at: datetime) -> datetime:
        """When a charge sent at `charge_attempted_at` can no longer land: its call's deadline bounds it. The
        mark is the sending replica's clock and the judge any replica's: one whose clock is ahead would see the
        window over while the charge may still commit, find no capture, and leave it unrefunded for good. So
        the window also counts the clock skew the project assumes (docs/architecture.md, "Clocks")."""
        return charge_attempted_at + timedelta(seconds=self._settings.step_timeout_seconds * 2) + MAX_CLOCK_SKEW

    async def _step(self, order: Order, card: Card | None, owner: str) -> Order:
        # Each mark and transition reads the clock when it is written, not when the step began: a remote call
        # in between (up to a step timeout) would date it that much early. For the charge's mark that is the
        # in-doubt window closing when the charge's own deadline does (`_charge_settled_at`).
        match order.step:
            case SagaStep.RESERVE:
                if not order.reserve_attempted:
                    order = await self._transition(owner, order.reserving(self._clock()))
                try:
                    reservation_id = await self._reserve(order)
                except InsufficientStock as short:
                    failed = order.failed_before_pivot(CancelCode.INSUFFICIENT_STOCK, self._clock())
                    # Inventory records nothing when it refuses: there is no stock to release.
                    return await self._transition(owner, failed.nothing_reserved(short.product_ids, short.short_count))
                except ReservationExpired:
                    # An earlier Reserve for this order went through, and its reservation lapsed before this
                    # driver came by: the stock is gone, so cancel before the pivot instead of charging a card
                    # for an order the commit would refuse.
                    expired = order.failed_before_pivot(CancelCode.RESERVATION_EXPIRED, self._clock())
                    return await self._transition(owner, expired)
                reserved = order.reserved(reservation_id, self._clock())
                if card is not None:
                    # The charge follows at once: mark it attempted in the same transaction.
                    reserved = reserved.charging(self._clock())
                return await self._transition(owner, reserved)

            case SagaStep.CHARGE:
                if card is None:
                    return await self._settle_charge_without_card(order, owner)
                # Also just before the deadline: the reservation's expiry is by the clock of the inventory
                # replica that made it, which may be behind orders' by the skew the project assumes.
                if self._expired(order, early=MAX_CLOCK_SKEW) and not await self._still_reserved(order, owner):
                    # The stock is gone and the commit would refuse it: charging now would only take the
                    # customer's money to refund it. Compensation still refunds an earlier attempt's capture.
                    expired = order.failed_before_pivot(CancelCode.RESERVATION_EXPIRED, self._clock())
                    return await self._transition(owner, expired)
                # After the reservation check, which may have waited out inventory's deadline.
                sent = self._clock()
                if order.charge_attempted_at is None or sent - order.charge_attempted_at > _FRESH:
                    order = await self._transition(owner, order.charging(sent))
                try:
                    payment_id = await self._payments.charge(
                        order.id, order.total_minor, order.currency, card, charge_key(order.id)
                    )
                except PaymentRefused as refused:
                    return await self._charge_refused(order, owner, refused)
                return await self._transition(owner, order.charged(payment_id, self._clock()))

            case SagaStep.COMMIT:
                try:
                    await self._inventory.commit(order.reservation_id)
                except ReservationExpired:
                    expired = order.failed_after_pivot(CancelCode.RESERVATION_EXPIRED, self._clock())
                    return await self._transition(owner, expired)
                return await self._finish(owner, order.committed(self._clock()))

            case SagaStep.COMPENSATE | SagaStep.REFUND:
                return await self._compensate(order, owner)

            case SagaStep.DONE:
                return order
        raise AssertionError(order.step)

    async def _settle_charge_without_card(self, order: Order, owner: str) -> Order:
        """Resumed at the pivot without the card: find out from payments whether the charge happened."""
        if order.charge_attempted_at is not None:
            # A charge call may still be running on payments; its deadline bounds it.
            settled_at = self._charge_settled_at(order.charge_attempted_at)
            now = self._clock()
            if now < settled_at:
                raise _charge_in_doubt(order, settled_at - now)
        found = earlier_charge(await self._payments.payments_for(order.id), order.total_minor, order.currency)
        if found.charge_id is not None:
            return await self._transition(owner, order.charged(found.charge_id, self._clock()))
        if found.refusal is not None:
            return await self._charge_refused(order, owner, found.refusal)
        # Never charged, and nobody can charge it now: give the stock back. What is known is that the driver
        # with the card is gone without an answer of its own (one that saw payments fail cancelled the order
        # itself, PAYMENT_UNAVAILABLE): the checkout was interrupted. The charge mark says nothing more: it is
        # written with the reservation, before the charge call, so orders dying between the two leaves it too.
        return await self._transition(owner, order.failed_before_pivot(CancelCode.CHECKOUT_INTERRUPTED, self._clock()))

    async def _charge_refused(self, order: Order, owner: str, refused: PaymentRefused) -> Order:
        """Cancel the order at the charge step for payments' refusal; compensation refunds a capture it names."""
        if isinstance(refused, CaptureOfAnotherAmount):
            # Not the customer's doing: a release that prices the order otherwise. Whoever is on call hears of it.
            log.error(
                "payments holds capture %s of order %s for %d %s, not the order's %d %s: it is refunded and the "
                "order cancelled %s",
                refused.payment_id,
                order.id,
                refused.capture.amount_minor,
                refused.capture.currency,
                refused.amount_minor,
                refused.currency,
                refused.code.value,
                extra={"order_id": order.id, "payment_id": refused.payment_id},
            )
        return await self._transition(owner, order.failed_before_pivot(refused.code, self._clock(), refused.payment_id))

    async def _compensate(self, order: Order, owner: str) -> Order:
        """Undo what went through: refund, then give the stock back. Up to four remote calls with no step
        saved between them, so the lease is renewed before each (`_keep_lease`): a lease run out mid-way
        would let the recovery loop compensate the same order at once (harmless, the calls are idempotent,
        but work done twice)."""
        recheck_at: datetime | None = None
        if not order.refunded:
            to_refund: list[str] = []
            refunded_before = False
            if order.step is SagaStep.REFUND and order.payment_id:
                to_refund = [order.payment_id]
            elif order.charge_attempted_at is not None:
                # The charge's outcome may be unknown (payments unavailable): ask, and undo what went through.
                asked_at = self._clock()
                await self._keep_lease(order.id, owner)
                to_refund, refunded_before = await self._captures(order)
                settled_at = self._charge_settled_at(order.charge_attempted_at)
                if not to_refund and not refunded_before and asked_at < settled_at:
                    # Asked while the charge was in doubt (a PlaceOrder driver that gave up on its calls
                    # answers at once): a capture may still land. The recovery loop asks again then.
                    # (Payments captures an order at most once: a refunded capture leaves nothing to check.)
                    recheck_at = settled_at
            for payment_id in to_refund:
                await self._keep_lease(order.id, owner)
                await self._refund(order, payment_id)
            if to_refund or refunded_before:
                # Also when the refund was already done: by an earlier attempt whose answer was lost (a
                # deadline), or a driver that died before saving this. The customer was charged and refunded.
                order = await self._transition(owner, order.refund_done(self._clock()))
        if order.reservation_id:
            await self._keep_lease(order.id, owner)
            await self._inventory.release(order.reservation_id)
        elif order.reserve_attempted:
            # Reserve's outcome is unknown: it is keyed by order id, so asking again names the reservation
            # (or makes one), and releasing it leaves the stock as it was.
            await self._keep_lease(order.id, owner)
            try:
                reservation_id = await self._reserve(order)
            except (InsufficientStock, ReservationExpired):
                # Nothing reserved, or a reservation that lapsed: either way no stock is held to release.
                reservation_id = ""
            if reservation_id:
                await self._keep_lease(order.id, owner)
                await self._inventory.release(reservation_id)
        return await self._finish(owner, order.compensated(self._clock(), recheck_at))

    async def _captures(self, order: Order) -> tuple[list[str], bool]:
        """The order's payments still captured, and whether payments lists one of them refunded already (only
        orders refunds, with the order's own key: an earlier refund of this order whose save or answer was lost)."""
        records = await self._payments.payments_for(order.id)
        return [r.payment_id for r in records if r.captured], any(r.refunded for r in records)

    async def _refund(self, order: Order, payment_id: str) -> None:
        try:
            await self._payments.refund(payment_id, order.refund_reason, refund_key(order.id))
        except RefundRefused:
            # An orders release before `refund_reason` asked with the cancellation's message, which payments
            # applied under the key and whose answer was lost: asked now with the code, the key's fingerprint
            # differs (or that release's message breaks payments' newer rule) on every try. The payment says
            # whether that refund went through; if not, the refusal stands.
            records = await self._payments.payments_for(order.id)
            if not any(r.payment_id == payment_id and r.refunded for r in records):
                raise
            log.info(
                "order %s: payment %s was refunded under the order's refund key by an earlier request",
                order.id,
                payment_id,
                extra={"order_id": order.id, "payment_id": payment_id},
            )

    async def _finish(self, owner: str, after: Order) -> Order:
        """The terminal transition and its event, in one transaction."""
        now = self._clock()
        event_id = new_event_id()
        async with self._db.transaction() as session:
            after = await OrderRepository(session).save(after, Lease(owner, None))
            if after.state is OrderState.CONFIRMED:
                event = codec.confirmed_event(after, event_id, now)
                await add_event(session, subject=ORDER_CONFIRMED, message=event, event_id=event_id)
            else:
                caller = _PLACEMENT_CALL.get()
                answered = caller is not None and caller.answers_with_cancellation()
                cancelled = codec.cancelled_event(after, event_id, now, answered_at_placement=answered)
                await add_event(session, subject=ORDER_CANCELLED, message=cancelled, event_id=event_id)
        self._on_event()
        self._on_finished(after)
        extra = {"order_id": after.id, "event_id": event_id}
        if after.cancel_code is None:
            log.info("order %s %s", after.id, after.state.value.lower(), extra=extra)
        else:
            # Why, beside which order: the metric's `reason` alone names no order. On the span the saga runs in
            # (PlaceOrder's server span, the recovery loop's `recover order`), unless a caller gone ended it.
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute(CANCEL_CODE_ATTRIBUTE, after.cancel_code.value)
            extra["cancel_code"] = after.cancel_code.value
            log.info("order %s %s: %s", after.id, after.state.value.lower(), after.cancel_code.value, extra=extra)
        await self._maybe_pause(after)
        return after

    async def _transition(self, owner: str, after: Order) -> Order:
        async with self._db.transaction() as session:
            after = await self._save(session, after, owner)
        await self._maybe_pause(after)
        return after

    async def _save(self, session: DbConnection, order: Order, owner: str) -> Order:
        return await OrderRepository(session).save(order, Lease(owner, self.lease_until()))

    async def _maybe_pause(self, order: Order) -> None:
        fault = self._settings.fault_pause_after_step
        if fault and fault.upper() == self._fault_point(order):
            log.warning("fault injection: pausing after %s (FAULT_PAUSE_AFTER_STEP)", fault)
            await asyncio.Event().wait()

    @staticmethod
    def _fault_point(order: Order) -> str:
        # Named after what has just been done: "RESERVED" (next: CHARGE), "CHARGED" (next: COMMIT).
        return {SagaStep.CHARGE: "RESERVED", SagaStep.COMMIT: "CHARGED"}.get(order.step, "")

    async def _load(self, order_id: str) -> Order:
        async with self._db.read() as session:
            order = await OrderRepository(session).get(order_id)
        if order is None:
            raise errors.NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")
        return order
