"""PlaceOrder: the order priced and recorded under its idempotency key, and its saga driven for the caller.
The drive for a caller (CancelOrder's too) runs detached from the call, answers before the call's deadline
when the saga waits longer, and waits a while for another driver that holds the order."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import NamedTuple

from opentelemetry import trace

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.db_errors import Duplicate
from shopmesh_chassis.idempotency import key_reused, validate_key
from shopmesh_chassis.ids import new_id
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_chassis.tasks import Detached
from shopmesh_chassis.tracing import stored_trace_context
from shopmesh_orders.card_drives import CardDrives
from shopmesh_orders.domain.model import CancelCode, Order, OrderLine, OrderState
from shopmesh_orders.domain.ports import Catalog
from shopmesh_orders.domain.validation import (
    Card,
    PlaceOrder,
    check_expected_total,
    invalid_prices,
    is_sellable_price,
    matches_expected_total,
    validate_place_order,
    validate_totals,
)
from shopmesh_orders.lease import LeaseHeld
from shopmesh_orders.queries import OrderQueries, from_newer_release
from shopmesh_orders.saga import ORDER_ID_ATTRIBUTE, PlacementCall, SagaDriver
from shopmesh_orders.store.repository import IdempotentOrigin, OrderRepository, UnreadableOrder

log = logging.getLogger("shopmesh.orders")

# How long a retried PlaceOrder waits for another driver to finish the same order before saying so.
_WAIT_FOR_OTHER_DRIVER_SECONDS = 5.0
# The RetryInfo of the IDEMPOTENCY_KEY_IN_USE it then answers (a second; why: at the raise).
_IN_USE_RETRY_AFTER_SECONDS = 1.0

# How long before the inbound call's deadline PlaceOrder and CancelOrder stop waiting for the saga and answer
# that it goes on without them (`_answer_in_time`). The saga may wait longer for a step (STEP_ATTEMPTS x
# STEP_TIMEOUT_SECONDS and the backoff, 18 s by default: 3 x 5 s + 1 s + 2 s) than its caller waits for
# orders (the gateway's ORDERS_TIMEOUT_SECONDS, 15 s, for PlaceOrder; ORDERS_CANCEL_TIMEOUT_SECONDS, 5 s, for
# CancelOrder): waiting to the deadline, orders' answer naming the order came too late, and
# the caller answered its own UNAVAILABLE, which the contract reads as "maybe nothing was recorded". Three
# skew tolerances: the server's deadline runs up to one later than its caller's (the chassis' rule, where it
# is defined), and the answer then needs a read of the order (the step it waits at) and its trip back through
# the same loaded I/O threads and sidecars, each bounded alike. 0.3 s of a 15 s wait.
_ANSWER_MARGIN_SECONDS = 3 * DEADLINE_SKEW_TOLERANCE_SECONDS
# The least wait that the early answer may leave the saga: with less (a short but legal deadline, the gateway
# lets 0.35 s through), the call waits to its deadline as it did before the early answer. A saga whose
# dependencies answer ends in tens of milliseconds; answering UNAVAILABLE (a server error) after a few of them
# failed checkouts that succeed, and let any client spend the availability budget at will. A second is far
# beyond a healthy saga, and the saga's own wait when a dependency names none (the answer's RetryInfo): a
# saga still driving then is waiting for a dependency indeed. Not the step timeout: it is the settings' (5 s
# by default) and would keep the answer from every caller with less than 5.3 s, the gateway's 15 s aside.
_EARLY_ANSWER_MIN_WAIT_SECONDS = 1.0
# How long before the inbound deadline a PlaceOrder stops waiting for the commit of a cancellation the saga
# wrote as its answer (`_answer_in_time`): that wait starts at the early answer, `_ANSWER_MARGIN_SECONDS`
# before the deadline, and must leave the answer that follows a hung commit what it needs of that margin: the
# caller's deadline, up to one skew tolerance earlier than the server's, and the read of the order and its trip
# back, one more.
_COMMIT_WAIT_MARGIN_SECONDS = 2 * DEADLINE_SKEW_TOLERANCE_SECONDS


def _answer_at(*, least_wait: float | None) -> float | None:
    """When (the event loop's time) a call stops waiting for the saga its order is in and answers that it goes on
    without it: `_ANSWER_MARGIN_SECONDS` before the inbound deadline; None without one (the call waits to the
    deadline, which ends it, as before the early answer). Reckoned once per call: reckoned again later, what is
    left may be under the least wait, and a drive started then (a retry taking over a lapsed lease mid-wait) would
    wait to the deadline and name no order.

    `least_wait`: the least wait the early answer may leave the saga; with less, None (the call waits to its
    deadline). A call driving the saga itself (PlaceOrder, CancelOrder) passes `_EARLY_ANSWER_MIN_WAIT_SECONDS`,
    which keeps the early answer from a healthy saga's first call, ending in milliseconds. A call that found its
    order held by another driver (`_wait_for_other_driver`) passes None, no least wait: it answers at the margin
    however short, at once when that is past, for it has met a driver that already outlasted a healthy saga's
    call (or died), and waited to its deadline it would end naming no order."""
    remaining = call_context.inbound_time_remaining()
    if remaining is None:
        return None
    left = remaining - _ANSWER_MARGIN_SECONDS
    if least_wait is not None and left < least_wait:
        return None
    return asyncio.get_running_loop().time() + max(left, 0.0)


def _answered(order: Order, placement: bool) -> bool:
    """Whether the call has its answer in `order` as read: a finished order; for PlaceOrder also a CONFIRMED
    one, a cancellation pending on it or not (`_settle` answers it as it is, the cancellation being not the
    placement's to wait for)."""
    return order.is_terminal or (placement and order.state is OrderState.CONFIRMED)


def _commit_wait() -> float | None:
    """How long a PlaceOrder may still wait for the commit of the cancellation its saga wrote as its answer:
    until `_COMMIT_WAIT_MARGIN_SECONDS` before the inbound deadline (None without one)."""
    remaining = call_context.inbound_time_remaining()
    return None if remaining is None else max(remaining - _COMMIT_WAIT_MARGIN_SECONDS, 0.0)


def _log_untold(order_id: str) -> None:
    """The narrow gap `PlacementCall` leaves: its saga wrote the order's cancellation as this call's answer (its
    event says "no e-mail"), and the call ends without carrying it: gone (its caller cancelled, or its deadline
    passed) or answering before the commit landed. The flag is in the outbox event of the cancellation's own
    transaction, so it cannot be taken back once the call knows; the customer learns of the cancellation only
    by reading the order. Logged so that an operator can tell them."""
    log.warning(
        "order %s: its cancellation was written as the answer to a PlaceOrder that ended without it; the "
        "customer is neither answered with it nor e-mailed (OrderCancelled.answered_at_placement)",
        order_id,
        extra={"order_id": order_id},
    )


def _log_detached_end(order_id: str, task: asyncio.Task[Order]) -> None:
    """How a saga that its caller stopped waiting for (`_answer_in_time`) ended, when it did not finish the
    order: the saga logs the outcomes it reaches itself. A wait (the recovery loop goes on with it) or another
    driver taking over is no error; anything else is, and its caller never saw it."""
    if task.cancelled():
        return
    error = task.exception()
    extra = {"order_id": order_id}
    if isinstance(error, errors.Unavailable | LeaseHeld):
        log.info(
            "order %s, driven after its caller stopped waiting, is not finished yet: %s", order_id, error, extra=extra
        )
    elif error is not None:
        log.error("order %s, driven after its caller stopped waiting, failed", order_id, exc_info=error, extra=extra)


class _Priced(NamedTuple):
    """An order's lines as priced, and whether at catalog's own prices (`confirmed`: asked of catalog itself,
    past the ones remembered) or at ones that may be remembered (CachedCatalog)."""

    lines: tuple[OrderLine, ...]
    confirmed: bool


def new_order_id() -> str:
    return new_id("ord_")


class OrderPlacement(OrderQueries):
    """PlaceOrder and the drive of a saga for a caller, for the use cases `OrdersApplication` combines."""

    _catalog: Catalog
    _saga: SagaDriver
    _clock: Clock
    # The sagas driven for callers, which shutdown waits for (`OrdersApplication.wait_running`).
    _running: Detached
    # The orders this process drives with the customer's card (`OrdersApplication`).
    _driving_with_card: CardDrives

    async def place_order(self, command: PlaceOrder, key: str | None, scope: str, fingerprint: str) -> Order:
        # The request's rules wait for the idempotency lookup: a retry of a request accepted before gets that
        # call's outcome, though the card has expired since or a later release's rules (an address line, an
        # e-mail address) would refuse it now; the fingerprint covers the whole request as sent, so only the
        # same request finds it. A request not seen before meets every rule at once, the card's expiry with
        # the others, and is kept as the rules leave it (address lines composed and trimmed).
        call_context.check_acting_for(command.user_id)
        key = validate_key(key)
        origin = IdempotentOrigin(scope, key, fingerprint)
        existing = await self._by_origin(origin)
        if existing is not None:
            return await self._settle(existing.id, command.card, None)
        command = validate_place_order(command, self._clock().date())
        lines, confirmed = await self._price(command)
        if not matches_expected_total(lines, command.expected_total):
            if not confirmed:
                # The prices may be ones remembered from catalog a little while ago (CachedCatalog), and the
                # customer may have seen catalog's newer ones: only catalog's own answer can refuse the order.
                # With catalog away (a restart), the remembered prices refuse it: nothing is stored yet, and the
                # total they name is one the order can then be placed at, as checkouts go on while catalog
                # restarts. Not asked again when pricing asked already (an unsellable price remembered): the
                # answer would be the one just given, one more call on the checkout path.
                catalogs = await self._confirmed_prices(command)
                if catalogs is not None:
                    lines = catalogs
            check_expected_total(lines, command.expected_total)
        now = self._clock()
        order = Order(
            id=new_order_id(),
            user_id=command.user_id,
            email=command.email,
            currency=command.currency,
            lines=lines,
            address=command.address,
            created_at=now,
            updated_at=now,
            # The reserve call follows at once; marking it now saves a transaction.
            reserve_attempted=True,
        )
        owner = self._saga.new_lease_owner()
        try:
            async with self._db.transaction() as session:
                # The checkout's trace, for the recovery loop should it be the one to finish the order.
                await OrderRepository(session).add(
                    order, origin, owner, self._saga.lease_until(), trace_context=stored_trace_context()
                )
        except Duplicate:
            # The same key arrived twice at once; the other request recorded the order first.
            existing = await self._by_origin(origin)
            if existing is None:
                raise
            return await self._settle(existing.id, command.card, None)
        # INFO is for outcomes (the saga logs CONFIRMED / CANCELLED): a line per step cost a tenth of a
        # millisecond each on the checkout path.
        log.debug("order %s recorded", order.id, extra={"order_id": order.id})
        return await self._settle(order.id, command.card, owner, order)

    async def _by_origin(self, origin: IdempotentOrigin) -> Order | None:
        try:
            async with self._db.read() as session:
                found = await OrderRepository(session).get_by_origin(origin.scope, origin.key)
        except UnreadableOrder as unreadable:
            # Its request is still known: another body under the key is refused as for any order.
            if unreadable.request_hash != origin.request_hash:
                raise key_reused({"order_id": unreadable.id}) from None
            raise self._unreadable(unreadable) from unreadable
        if found is None:
            return None
        order, request_hash = found
        if request_hash != origin.request_hash:
            raise key_reused({"order_id": order.id})
        return order

    async def _confirmed_prices(self, command: PlaceOrder) -> tuple[OrderLine, ...] | None:
        """Catalog's own prices for the command, asked when the remembered ones would refuse it; None while
        catalog is away, and the remembered ones then decide (nothing is stored yet)."""
        try:
            return (await self._price(command, fresh=True)).lines
        except errors.Unavailable:
            log.info("catalog cannot confirm the prices: PlaceOrder is refused on the remembered ones")
            return None

    async def _price(self, command: PlaceOrder, *, fresh: bool = False) -> _Priced:
        priced = await self._catalog.price([item.product_id for item in command.items], fresh=fresh)
        # Before the currencies are compared: a currency that is no code at all is catalog's fault, not a
        # mismatch the customer's request could fix.
        unsellable = [
            priced[item.product_id]
            for item in command.items
            if not is_sellable_price(priced[item.product_id].price_minor, priced[item.product_id].currency)
        ]
        if unsellable and not fresh:
            # Remembered prices (CachedCatalog, up to its TTL): one catalog has corrected since would refuse the
            # product until it is forgotten. Only catalog's own answer refuses it, or the remembered one while
            # catalog is away (nothing is stored yet), as for PRICE_CHANGED in place_order.
            confirmed = await self._confirmed_prices(command)
            if confirmed is not None:
                return _Priced(confirmed, confirmed=True)
        if unsellable:
            # Our data, not the customer's request: a warning naming each product and its price, for whoever
            # corrects the catalog. The answer, FAILED_PRECONDITION, is no server error to any alert.
            log.warning(
                "catalog priced products at no sellable price, PlaceOrder refused: %s",
                ", ".join(f"{p.product_id} at {p.price_minor} {p.currency!r}" for p in unsellable),
                extra={"product_ids": [p.product_id for p in unsellable]},
            )
            raise invalid_prices([p.product_id for p in unsellable])
        mismatched = [p for p in priced.values() if p.currency != command.currency]
        if mismatched:
            raise errors.InvalidArgument(
                f"products are not priced in {command.currency}",
                [
                    errors.FieldViolation(
                        f"items[{index}].product_id",
                        f"priced in {priced[item.product_id].currency}",
                        "CURRENCY_MISMATCH",
                    )
                    for index, item in enumerate(command.items)
                    if priced[item.product_id].currency != command.currency
                ],
                reason="CURRENCY_MISMATCH",
            )
        lines = tuple(
            OrderLine(item.product_id, priced[item.product_id].name, item.quantity, priced[item.product_id].price_minor)
            for item in command.items
        )
        return _Priced(validate_totals(lines), confirmed=fresh)

    async def _settle(
        self, order_id: str, card: Card | None, owner: str | None, recorded: Order | None = None
    ) -> Order:
        """Drive the order's saga to its end and answer with its outcome.

        The saga runs in its own task, detached from the caller's deadline: a caller that gives up
        must not leave an order half-done. The task is shielded, so it goes on after the RPC ends.
        """
        # On PlaceOrder's server span: from an order id to its trace without going through the logs.
        trace.get_current_span().set_attribute(ORDER_ID_ATTRIBUTE, order_id)
        order = recorded or await self._load(order_id)
        # CONFIRMED and unfinished: the customer's cancellation runs (the only way back from DONE). The
        # placement this call retries is over; driving the refund here would answer a PlaceOrder with the
        # cancellation's waits, and have a channel's retries of them call payments again and again.
        if not order.is_terminal and order.state is not OrderState.CONFIRMED:
            order = await self._drive_detached(order_id, card, owner, recorded, placement=True)
        return _outcome(order)

    async def _drive_detached(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None = None,
        recorded: Order | None = None,
        *,
        placement: bool,
    ) -> Order:
        """Drive the saga in a task of its own, which shutdown waits for (`wait_running`), and answer with
        where it ended (or with the outcome of another driver that holds the order). `placement`: for
        PlaceOrder, which a CONFIRMED order answers (`_answered`)."""
        answer_at = _answer_at(least_wait=_EARLY_ANSWER_MIN_WAIT_SECONDS)
        try:
            return await self._drive_for_caller(
                order_id, card, owner, recorded, placement=placement, answer_at=answer_at
            )
        except LeaseHeld:
            return await self._wait_for_other_driver(order_id, card, placement=placement)

    async def _drive_for_caller(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None = None,
        recorded: Order | None = None,
        *,
        placement: bool,
        answer_at: float | None,
    ) -> Order:
        """The saga driven detached from the call (`_start_drive`), and the call's answer in time
        (`_answer_in_time`); for PlaceOrder (`placement`), with the PlacementCall the saga tells a cancellation
        the call answers by."""
        caller = PlacementCall() if placement else None
        task = self._start_drive(order_id, card, owner, recorded, caller=caller)
        return await self._answer_in_time(order_id, task, caller, placement=placement, answer_at=answer_at)

    def _start_drive(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None = None,
        recorded: Order | None = None,
        *,
        caller: PlacementCall | None,
    ) -> asyncio.Task[Order]:
        """The saga's drive as a task detached from the call (`_answer_in_time` says when the call stops waiting
        for it); with the card, counted in `_driving_with_card` for as long as the task runs, not the caller's
        wait: the drive outlives a caller gone."""
        task = self._running.start(
            self._saga.drive(order_id, card, owner, recorded, caller=caller),
            context=call_context.detached_context(),
            name=order_id,
        )
        if card is not None:
            self._driving_with_card.held_while(order_id, task)
        return task

    async def _answer_in_time(
        self,
        order_id: str,
        task: asyncio.Task[Order],
        caller: PlacementCall | None,
        *,
        placement: bool,
        answer_at: float | None,
    ) -> Order:
        """Where the saga `task` ended, or, when it is still driving at `answer_at` (as the inbound call's deadline
        nears: `_answer_at`), UNAVAILABLE DEPENDENCY_UNAVAILABLE naming the order and its step, as the
        saga's own give-up does: the caller learns the order was recorded and goes on, and can read it. The
        task is not cancelled (nor by the caller's cancellation: `asyncio.wait` leaves it running), so the
        saga finishes detached, as it does for a caller gone. `caller`, PlaceOrder's: a cancellation the saga
        writes from then on is no longer this call's answer (it is e-mailed), unless it was written already:
        then the call waits for its commit, until shortly before its deadline (`_commit_wait`)."""
        written = False
        try:
            timeout = None if answer_at is None else max(answer_at - asyncio.get_running_loop().time(), 0.0)
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if task not in done and caller is not None and not caller.stop_waiting():
                # The saga is committing the cancellation as this call's answer (its event says "no e-mail"): it
                # is a transaction away, and the answer must carry it. Not past the deadline though: a hung
                # commit would have the caller's channel answer DEADLINE_EXCEEDED naming no order.
                written = True
                done, _ = await asyncio.wait({task}, timeout=_commit_wait())
        except asyncio.CancelledError:
            if caller is not None and not caller.stop_waiting():
                _log_untold(order_id)
            # The caller gave up: nobody awaits the task any more either.
            task.add_done_callback(partial(_log_detached_end, order_id))
            raise
        if task in done:
            return task.result()
        # Nobody awaits it any more: its end is logged here, not as asyncio's "exception never retrieved".
        task.add_done_callback(partial(_log_detached_end, order_id))
        try:
            return await self._answer_still_driven(order_id, placement)
        except BaseException:
            # Any answer but the order read finished, a database that did not answer in time included.
            if written:
                _log_untold(order_id)
            raise

    async def _answer_still_driven(self, order_id: str, placement: bool) -> Order:
        """The early answer (`_answer_at`) for an order still driven: the order as re-read when that
        answers the call (`_answered`: finished since, or CONFIRMED for PlaceOrder), else UNAVAILABLE
        DEPENDENCY_UNAVAILABLE naming it and its step."""
        order = await self._load(order_id)
        if _answered(order, placement):
            return order
        raise errors.Unavailable(
            f"order {order_id} is waiting for a dependency at step {order.step.value}; it goes on without this "
            "call, which could wait no longer",
            reason=errors.DEPENDENCY_UNAVAILABLE,
            # The saga's own answer when a dependency names no wait: the outcome is seconds away at most.
            retry_after_seconds=1.0,
            metadata={"order_id": order_id, "step": order.step.value},
        )

    async def _wait_for_other_driver(self, order_id: str, card: Card | None, *, placement: bool) -> Order:
        """Wait a while for the driver holding the order to finish it. A caller with the card (a PlaceOrder
        retry) also tries to take the order on each poll: the holder may be a driver that died (its pod killed
        mid-checkout), and when its lease lapses the recovery loop, which has no card, would otherwise take
        the order, find no charge and cancel it as CHECKOUT_INTERRUPTED under this very retry. Taking it is
        safe: the charge is keyed by the order, its mark is written before it is sent, and one sent by the
        dead driver is handled as any charge in doubt. An order already CONFIRMED is only read: what runs on
        it is the customer's cancellation, not this placement's to drive (`_settle`). The wait ends before the
        inbound deadline too, however short (`_answer_at` with no least wait), answered as a saga still driving is:
        past it, the caller would give up before the poll's end and name no order. A drive taken over
        mid-wait answers by that same point.

        A caller with the card counts as driving the order (`_driving_with_card`) for the whole wait, between its
        polls too: the driver it waits for may release the order with no owner (a drive giving up on a
        dependency) just before this process's recovery pass, which would otherwise take it first and, the
        dependency back, cancel it CHECKOUT_INTERRUPTED under this retry. Another replica's pass does not see
        this count: a drive with the card that gives up on a dependency keeps the order from every replica's
        loop for a while (`SagaDriver._kept_for_the_card`)."""
        if card is None:
            return await self._poll_other_driver(order_id, None, placement=placement)
        with self._driving_with_card.held(order_id):
            return await self._poll_other_driver(order_id, card, placement=placement)

    async def _poll_other_driver(self, order_id: str, card: Card | None, *, placement: bool) -> Order:
        """`_wait_for_other_driver`'s polls."""
        loop = asyncio.get_running_loop()
        answer_at = _answer_at(least_wait=None)
        ends, answer_early = loop.time() + _WAIT_FOR_OTHER_DRIVER_SECONDS, False
        if answer_at is not None and answer_at < ends:
            ends, answer_early = answer_at, True
        while True:
            order = await self._load(order_id)
            if _answered(order, placement):
                return order
            if card is not None and order.state is not OrderState.CONFIRMED:
                try:
                    return await self._drive_for_caller(order_id, card, placement=placement, answer_at=answer_at)
                except LeaseHeld:
                    pass  # still held: its driver is alive, or its lease has not lapsed yet
            left = ends - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(0.1, left))
        if answer_early:
            return await self._answer_still_driven(order_id, placement)
        raise errors.Aborted(
            "this order is still being processed; retry with the same idempotency key",
            reason="IDEMPOTENCY_KEY_IN_USE",
            metadata={"order_id": order_id},
            # The other driver has already outlasted this call's wait: it is in a slow step (a charge in doubt,
            # a dependency's retries), so a retry sooner than a second would most likely find it still there.
            retry_after_seconds=_IN_USE_RETRY_AFTER_SECONDS,
        )


def _outcome(order: Order) -> Order:
    """PlaceOrder's answer: the order if it was placed; its cancellation as an error otherwise."""
    if order.state is OrderState.CONFIRMED or order.cancel_code is CancelCode.CUSTOMER_REQUESTED:
        return order
    if order.state is OrderState.CANCELLED and order.cancel_code is not None:
        metadata = {"order_id": order.id}
        if order.short_count is not None:
            # What inventory said: a retry answers from the stored order as the first call did.
            metadata |= {"product_ids": ",".join(order.short_product_ids), "short_count": str(order.short_count)}
        raise errors.FailedPrecondition(order.cancel_message, reason=order.cancel_code.value, metadata=metadata)
    # Only a finished order gets here (the saga and a wait for another driver end at DONE or raise), so its
    # state is one a newer release stored: not "still being processed", and none of the saga's waits (a
    # step's backoff, the order's deadline, the recovery loop's next pass) says when it can be answered, as
    # the loop never takes a finished order again. A replica of that newer release answers the retry, and
    # during a rollout a mesh balances each call over the replicas (docs/mesh.md), so the next may reach one
    # (`from_newer_release`). The retry is a read that replays the order, so a final answer spares nothing.
    raise from_newer_release(
        order.id,
        f"order {order.id} was finished by a newer release of orders, in a state this one cannot name; retry "
        "with the same idempotency key",
    )
