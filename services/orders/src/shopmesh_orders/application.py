"""The orders use cases: place, get, list, cancel. Validation and state rules live in the domain; the
saga driver does the cross-service work; this layer sequences them and owns idempotency."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from typing import NamedTuple

from opentelemetry import trace

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import Duplicate, database_unavailable
from shopmesh_chassis.idempotency import key_reused, validate_key
from shopmesh_chassis.pagination import encode_page_token
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_chassis.tasks import Detached
from shopmesh_chassis.tracing import stored_context, stored_trace_context
from shopmesh_orders.domain.model import CancelCode, Order, OrderLine, OrderState, SagaStep
from shopmesh_orders.domain.ports import Catalog
from shopmesh_orders.domain.validation import (
    Card,
    PlaceOrder,
    check_expected_total,
    invalid_prices,
    is_sellable_price,
    list_filters,
    matches_expected_total,
    validate_cancel,
    validate_cancel_reason,
    validate_list_orders,
    validate_order_id,
    validate_place_order,
    validate_totals,
)
from shopmesh_orders.saga import ORDER_ID_ATTRIBUTE, LeaseHeld, RecheckPostponed, SagaDriver, lost_race
from shopmesh_orders.store.repository import Due, IdempotentOrigin, OrderRepository, UnreadableOrder

log = logging.getLogger("shopmesh.orders")

# The INTERNAL span a recovery pass works on each order in, a child of the span of the PlaceOrder that
# recorded the order (its stored trace context): the order's event, its calls and its log lines stay in the
# checkout's trace however long after PlaceOrder the loop finishes it.
RECOVER_SPAN = "recover order"

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


def _pass_stops_at(exc: Exception, what: str, order_id: str, on_error: Callable[[], None]) -> bool:
    """Log what went wrong with one order of a recovery pass (`what`: "resuming order X", ...), and whether the
    pass stops there. Orders' own database going away (met raw, as `lost_race` says) is no bug, and the other
    orders due would fare no better: one warning, and the pass stops; they stay due for the next. A lost race
    is a warning too, the pass going on; anything else is an error with its traceback, also reported to
    `on_error` (counted: an order that fails on every pass is otherwise seen only in the logs)."""
    if database_unavailable(exc):
        log.warning(
            "%s %s: orders' database is unavailable; this pass stops, the next tries again",
            what,
            order_id,
            extra={"order_id": order_id},
        )
        return True
    if (race := lost_race(exc)) is None:
        log.exception("%s %s failed", what, order_id, extra={"order_id": order_id})
        on_error()
    else:
        log.warning(
            "%s %s: %s; the next pass tries it again", what, order_id, race.message, extra={"order_id": order_id}
        )
    return False


class _Unclaimed(enum.Enum):
    """A recovery pass's claim of an order due that it did not get (`_claim`)."""

    SKIP = "skip"  # on to the next order
    STOP = "stop"  # the pass stops here


async def _claim(
    claim: Callable[[str], Awaitable[str]],
    order_id: str,
    what: str,
    on_error: Callable[[], None],
    held: str | None = None,
) -> str | _Unclaimed:
    """A recovery pass's `claim` of one order due: its lease owner, or SKIP when another driver holds it (logged
    at INFO as "order X `held`: ..." when `held` is given) or it failed there (`_pass_stops_at`), STOP when the
    pass stops."""
    try:
        return await claim(order_id)
    except LeaseHeld as exc:
        if held is not None:
            log.info("order %s %s: %s", order_id, held, exc, extra={"order_id": order_id})
        return _Unclaimed.SKIP
    except Exception as exc:
        return _Unclaimed.STOP if _pass_stops_at(exc, what, order_id, on_error) else _Unclaimed.SKIP


def _failed_in_span(exc: Exception) -> None:
    """Mark the current RECOVER_SPAN failed with `exc`, which the pass handles (logs, counts) itself."""
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))


def _pass_failed(label: str, name: str, exc: Exception, on_error: Callable[[], None]) -> None:
    """Log a recovery pass that failed before reaching any order (its query of the orders due), the loop going
    on. Orders' own database being away is no bug, and the loop only waits for it: a warning without a
    traceback, once a pass. Anything else is one, and would otherwise fail every pass unseen: an error with
    its traceback, also reported to `on_error` (counted with the errors on its orders: a pass that never
    reaches one hides them all). Logged under its metric label (`recovery_pass`) beside its method's name, so
    that the line and the counter name the pass alike."""
    extra = {"recovery_pass": label}
    if database_unavailable(exc):
        log.warning(
            "recovery pass %s (%s) did not run: orders' database is unavailable; the next pass tries again",
            label,
            name,
            extra=extra,
        )
    else:
        log.exception("recovery pass %s (%s) failed", label, name, extra=extra)
        on_error()


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


def _cancellation_accepted(order_id: str, retry_after_seconds: float | None) -> errors.Unavailable:
    """CancelOrder's answer when the refund or the release waits for payments or inventory. The cancellation
    was saved before either was asked, so the recovery loop finishes it without the customer's retry: the
    answer says so, rather than name a saga step. Still UNAVAILABLE: the order is not cancelled yet (it shows
    CONFIRMED until it is), and a retry with the same key returns it once it is. Final for this call: a
    channel's own retry of the UNAVAILABLE would drive the cancellation again, or meet the driver holding it,
    only to answer the same, seconds later."""
    return errors.Unavailable(
        f"the cancellation of order {order_id} is accepted and completes on its own once payments and "
        "inventory answer; the order shows CONFIRMED until then",
        reason=errors.DEPENDENCY_UNAVAILABLE,
        retry_after_seconds=retry_after_seconds,
        metadata={"order_id": order_id},
        final=True,
    )


# The ErrorInfo reason of the UNAVAILABLE answered for an order this release cannot read.
ORDER_FROM_NEWER_RELEASE = "ORDER_FROM_NEWER_RELEASE"


def _from_newer_release(order_id: str, message: str) -> errors.Unavailable:
    """The answer about an order a newer release stored in a form or state this release cannot read: its row
    (UnreadableOrder), or a state it finished the order in (`_outcome`). Such an order exists while a newer
    release runs beside this one (a rolling update, a canary), or after a rollback from it. UNAVAILABLE, not
    FAILED_PRECONDITION: nothing the client can change about its request would help, and during a rollout a
    mesh balances each call over the replicas (docs/mesh.md), so a retry may reach one of the newer release
    that reads it (1 s); once the rollout is done every replica does. Not final: the retry is a read, nothing
    was changed for this call. One reason for both, so that a client tells this wait from a dependency's."""
    return errors.Unavailable(
        message, reason=ORDER_FROM_NEWER_RELEASE, retry_after_seconds=1.0, metadata={"order_id": order_id}
    )


class _Priced(NamedTuple):
    """An order's lines as priced, and whether at catalog's own prices (`confirmed`: asked of catalog itself,
    past the ones remembered) or at ones that may be remembered (CachedCatalog)."""

    lines: tuple[OrderLine, ...]
    confirmed: bool


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


class OrdersApplication:
    def __init__(
        self,
        database: Database,
        catalog: Catalog,
        saga: SagaDriver,
        *,
        clock: Clock = utc_now,
        on_recovery_error: Callable[[str], None] = lambda recovery_pass: None,
        on_unreadable: Callable[[], None] = lambda: None,
        on_waiting: Callable[[Mapping[SagaStep, int]], None] = lambda waiting: None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._db = database
        self._catalog = catalog
        self._saga = saga
        self._clock = clock
        # Called with "resume" or "recheck" for each order a recovery pass failed on with an error, and for each
        # pass that failed so before reaching any order.
        self._on_recovery_error = on_recovery_error
        # Called for each order a call met that this release cannot read (UnreadableOrder).
        self._on_unreadable = on_unreadable
        # Called after each round of recovery passes with how many orders wait for a dependency, by step.
        self._on_waiting = on_waiting
        self._running = Detached()
        # The orders this process drives with the customer's card (PlaceOrder), or has a retry with the card
        # waiting for (`_wait_for_other_driver`), as a count per order: a retry's drive may start while the one
        # it retries is still unwinding. The recovery pass leaves them alone even when their lease looks lapsed
        # or they were released with no owner: the process was paused (a GC pause, CPU throttling, a VM freeze)
        # longer than lease and grace, its drive is still in the charge call, or a retry is between two polls;
        # the pass, which has no card, would find no capture and cancel the order CHECKOUT_INTERRUPTED under the
        # customer's PlaceOrder.
        self._driving_with_card: dict[str, int] = {}
        self._tracer = trace.get_tracer("shopmesh.orders.recovery", tracer_provider=tracer_provider)

    # --- PlaceOrder -------------------------------------------------------------------------------

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
        try:
            return await self._drive_shielded(
                order_id,
                card,
                owner,
                recorded,
                placement=placement,
                answer_at=_answer_at(least_wait=_EARLY_ANSWER_MIN_WAIT_SECONDS),
            )
        except LeaseHeld:
            return await self._wait_for_other_driver(order_id, card, placement=placement)

    async def _drive_shielded(
        self,
        order_id: str,
        card: Card | None,
        owner: str | None = None,
        recorded: Order | None = None,
        *,
        placement: bool,
        answer_at: float | None,
    ) -> Order:
        task = self._running.start(
            self._saga.drive(order_id, card, owner, recorded), context=call_context.detached_context(), name=order_id
        )
        if card is not None:
            # Counted for as long as the task runs, not the caller's wait: the drive outlives a caller gone.
            self._card_held(order_id)
            task.add_done_callback(lambda _: self._card_released(order_id))
        return await self._answer_in_time(order_id, task, placement=placement, answer_at=answer_at)

    async def _answer_in_time(
        self, order_id: str, task: asyncio.Task[Order], *, placement: bool, answer_at: float | None
    ) -> Order:
        """Where the saga `task` ended, or, when it is still driving at `answer_at` (as the inbound call's deadline
        nears: `_answer_at`), UNAVAILABLE DEPENDENCY_UNAVAILABLE naming the order and its step, as the
        saga's own give-up does: the caller learns the order was recorded and goes on, and can read it. The
        task is not cancelled (nor by the caller's cancellation: `asyncio.wait` leaves it running), so the
        saga finishes detached, as it does for a caller gone."""
        try:
            timeout = None if answer_at is None else max(answer_at - asyncio.get_running_loop().time(), 0.0)
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            # The caller gave up: nobody awaits the task any more either.
            task.add_done_callback(partial(_log_detached_end, order_id))
            raise
        if task in done:
            return task.result()
        # Nobody awaits it any more: its end is logged here, not as asyncio's "exception never retrieved".
        task.add_done_callback(partial(_log_detached_end, order_id))
        return await self._answer_still_driven(order_id, placement)

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

    def _card_held(self, order_id: str) -> None:
        self._driving_with_card[order_id] = self._driving_with_card.get(order_id, 0) + 1

    def _card_released(self, order_id: str) -> None:
        left = self._driving_with_card[order_id] - 1
        if left:
            self._driving_with_card[order_id] = left
        else:
            del self._driving_with_card[order_id]

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
        self._card_held(order_id)
        try:
            return await self._poll_other_driver(order_id, card, placement=placement)
        finally:
            self._card_released(order_id)

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
                    return await self._drive_shielded(order_id, card, placement=placement, answer_at=answer_at)
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

    # --- reads ------------------------------------------------------------------------------------

    async def get_order(self, order_id: str) -> Order:
        return await self._load(validate_order_id(order_id), owner_check=True)

    async def list_orders(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Order], str]:
        query = validate_list_orders(user_id, page_size, page_token)
        call_context.check_acting_for(user_id)
        async with self._db.read() as session:
            rows = await OrderRepository(session).list_for_user(user_id, query.limit + 1, query.after)
        token = ""
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            # From the last row, read or not: the next page starts after it either way.
            last = rows[-1]
            token = encode_page_token([last.created_at.isoformat(), last.id], list_filters(user_id))
        page: list[Order] = []
        for row in rows:
            if isinstance(row, UnreadableOrder):
                # Left out, not failing the page: the user's other orders stay listed. A release that reads
                # it lists it again; GetOrder of it answers UNAVAILABLE (orders.proto, ListOrders).
                log.warning("%s: left out of a ListOrders page", row, extra={"order_id": row.id})
                self._on_unreadable()
            else:
                page.append(row)
        return page, token

    # --- CancelOrder ------------------------------------------------------------------------------

    async def cancel_order(self, order_id: str, reason: str, key: str | None, fingerprint: str) -> Order:
        validate_cancel(order_id, reason)
        key = validate_key(key)
        async with self._db.transaction() as session:
            repository = OrderRepository(session)
            # Locked: a concurrent cancellation waits, then finds this one's key or its outcome, and answers
            # as the contract says (the order, IDEMPOTENCY_KEY_IN_USE or ORDER_NOT_CANCELLABLE).
            order = await self._visible(await self._get(repository, order_id, for_update=True), order_id)
            cancel_key, cancel_hash = await repository.cancel_origin(order_id)
            if cancel_key == key:
                if cancel_hash != fingerprint:
                    raise key_reused()
            else:
                validate_cancel_reason(reason)
                # A key is the caller's for the method (common/v1 "idempotency-key"), not the order's: the key of
                # one cancellation sent again for another order is a client mix-up, refused, not a cancellation.
                if await repository.cancel_key_used_elsewhere(order.user_id, key, order_id):
                    raise key_reused()
                await repository.save(order.cancellation_requested(reason, self._clock()))
                await repository.set_cancel_origin(order_id, key, fingerprint)
        order = await self._load(order_id)
        if not order.is_terminal:
            try:
                order = await self._drive_detached(order_id, None, placement=False)
            except errors.Unavailable as exc:
                raise _cancellation_accepted(order_id, exc.retry_after_seconds) from exc
            except errors.Aborted as exc:
                # Another driver holds the order: the recovery loop, or an earlier attempt of this request
                # still under way (a client that sent it again at once). The cancellation is recorded under this key and
                # that driver completes it: accepted, not "retry", which a retry would meet again. That driver's
                # own wait is not known here: the 1 s the saga asks when a dependency names none, as the other
                # accepted answer would, so a client reading the order back polls no sooner.
                raise _cancellation_accepted(order_id, 1.0) from exc
        return order

    # --- recovery ---------------------------------------------------------------------------------

    async def resume_unfinished(self, limit: int = 50) -> int:
        """Drive every saga no live driver holds (after a crash, or one that waited on a dependency)."""
        async with self._db.read() as session:
            due = await OrderRepository(session).unfinished(self._clock(), limit)
        for order_due in due:
            order_id = order_due.order_id
            if order_id in self._driving_with_card:
                # Its lease lapsed while this process stood still, but the drive holding the card is alive here
                # and renews the lease with its next step: not claimed, so no span in its checkout's trace.
                log.info(
                    "order %s not resumed: this process drives it with the card", order_id, extra={"order_id": order_id}
                )
                continue
            on_error = partial(self._on_recovery_error, "resume")
            # Another driver took it since the query: nothing was done, so nothing goes into its trace.
            owner = await _claim(self._saga.claim_to_resume, order_id, "resuming order", on_error, "not resumed yet")
            if owner is _Unclaimed.STOP:
                break
            if owner is _Unclaimed.SKIP:
                continue
            # Only once claimed: an attempt that finds the order taken must not add a span to its checkout's
            # trace, which a busy order would otherwise grow by one a pass.
            with self._recovering(order_due, "resume"):
                try:
                    # Not `drive`: an order that must wait is left alone for a while, not tried first next pass.
                    order = await self._saga.resume(order_id, owner)
                    why = f" ({order.cancel_code.value})" if order.cancel_code else ""
                    log.info("resumed order %s: %s%s", order_id, order.state.value, why, extra={"order_id": order_id})
                except (LeaseHeld, errors.Unavailable) as exc:
                    log.info("order %s not resumed yet: %s", order_id, exc, extra={"order_id": order_id})
                except Exception as exc:
                    _failed_in_span(exc)
                    if _pass_stops_at(exc, "resuming order", order_id, on_error):
                        break
        return len(due)

    async def recheck_charges(self, limit: int = 50) -> int:
        """Ask payments again about the charges of cancelled orders that were in doubt when they were
        cancelled, now that they can no longer land, and refund any that did (saga.recheck_charge).

        Unlike `resume_unfinished`, it needs no check of the orders this process drives with the card: it takes
        only finished orders (step DONE), and a drive with the card stops at the transition that finishes one
        (giving up its lease), before any recheck of it is due (the charge's settle time, in the future then)."""
        async with self._db.read() as session:
            due = await OrderRepository(session).charges_to_recheck(self._clock(), limit)
        for order_due in due:
            order_id = order_due.order_id
            on_error = partial(self._on_recovery_error, "recheck")
            owner = await _claim(self._saga.claim_recheck, order_id, "checking the charge of order", on_error)
            if owner is _Unclaimed.STOP:
                break
            if owner is _Unclaimed.SKIP:
                continue
            with self._recovering(order_due, "recheck"):
                try:
                    await self._saga.recheck_charge(order_id, owner)
                except LeaseHeld:
                    continue
                except RecheckPostponed as exc:
                    # About this order alone (payments answered; the saga put the recheck off): go on with the others.
                    log.warning("%s; its charge is checked again later", exc, extra={"order_id": order_id})
                except errors.Unavailable as exc:
                    # Payments (DependencyDown) or the database does not answer: the others would fare no better.
                    # They stay due; the next pass asks.
                    log.warning(
                        "order %s: its charge is not checked yet: %s", order_id, exc, extra={"order_id": order_id}
                    )
                    break
                except Exception as exc:
                    _failed_in_span(exc)
                    if _pass_stops_at(exc, "checking the charge of order", order_id, on_error):
                        break
        return len(due)

    @contextlib.contextmanager
    def _recovering(self, due: Due, recovery_pass: str) -> Iterator[None]:
        """A recovery pass's work on one order it claimed, in a RECOVER_SPAN under the trace context its
        PlaceOrder stored (a trace of its own for an order recorded before orders kept one): what the saga does
        meanwhile, its event written to the outbox, its calls to inventory and payments, its log lines, is in
        that trace."""
        attributes = {ORDER_ID_ATTRIBUTE: due.order_id, "shopmesh.recovery_pass": recovery_pass}
        with self._tracer.start_as_current_span(
            RECOVER_SPAN, context=stored_context(due.trace_context), kind=trace.SpanKind.INTERNAL, attributes=attributes
        ):
            yield

    def recovery_loop(self, interval: float) -> Periodic:
        """The recovery loop, started by its caller: a round of passes (`recovery_round`) every `interval`.

        Stopped with `stop(timeout=0)`: a pass drives sagas, each call up to a step's timeout, and a stop waiting
        for the round would hold shutdown that long; cut off, an order's lease hands it to the next pass."""
        return Periodic("order-recovery", interval, self.recovery_round)

    async def recovery_round(self) -> None:
        """Both recovery passes, each whatever the other raised, then the count of waiting orders."""
        # Looked up on each round, not bound once: the loop must outlive whatever one pass raises.
        for label, recovery_pass in (("resume", self.resume_unfinished), ("recheck", self.recheck_charges)):
            try:
                await recovery_pass()
            except Exception as exc:
                _pass_failed(label, recovery_pass.__name__, exc, partial(self._on_recovery_error, label))
        await self._count_waiting()

    async def count_waiting(self) -> dict[SagaStep, int]:
        """How many orders wait for a dependency, by the step they wait at (`OrderRepository.waiting_for_dependency`):
        every replica counts them all, whichever replica's driver gave up on them."""
        async with self._db.read() as session:
            return await OrderRepository(session).waiting_for_dependency()

    async def _count_waiting(self) -> None:
        """`count_waiting` for `on_waiting`, once a round of passes. Counted from the database, not from what the
        passes met: a pass meets a waiting order only when its backoff is over (up to RECOVERY_BACKOFF_MAX_SECONDS)
        and in whichever replica claims it, so its own tally would flicker between passes and differ by replica.
        With the database away the last count stays (the passes said so already)."""
        try:
            waiting = await self.count_waiting()
        except Exception as exc:
            if not database_unavailable(exc):
                log.exception("counting the orders that wait for a dependency failed")
            return
        self._on_waiting(waiting)

    async def wait_running(self, timeout: float) -> None:
        """On shutdown: give sagas driven for callers a moment to finish (leases cover the rest), and name those
        left (their tasks are named by order id): nothing else says which orders the stop left half-way."""
        left = sorted({task.get_name() for task in await self._running.wait(timeout)})
        if left:
            log.warning(
                "stopping after a %gs wait with %d orders still driven: %s; their leases hand them to the recovery "
                "loop (this service's after a restart, or another replica's)",
                timeout,
                len(left),
                ", ".join(left),
                extra={"order_ids": left},
            )

    # --- helpers ----------------------------------------------------------------------------------

    async def _load(self, order_id: str, owner_check: bool = False) -> Order:
        async with self._db.read() as session:
            order = await self._get(OrderRepository(session), order_id, owner_check=owner_check)
        return await self._visible(order, order_id) if owner_check else _require(order, order_id)

    async def _get(
        self, repository: OrderRepository, order_id: str, *, for_update: bool = False, owner_check: bool = True
    ) -> Order | None:
        """`repository.get`, an order this release cannot read answered UNAVAILABLE (`_from_newer_release`); to its
        owner only, with `owner_check`: to anyone else it is reported as missing, as any order is."""
        try:
            return await repository.get(order_id, for_update=for_update)
        except UnreadableOrder as unreadable:
            if owner_check:
                _check_visible(unreadable.user_id, order_id)
            raise self._unreadable(unreadable) from unreadable

    def _unreadable(self, unreadable: UnreadableOrder) -> errors.Unavailable:
        log.warning("%s: answered UNAVAILABLE", unreadable, extra={"order_id": unreadable.id})
        self._on_unreadable()
        return _from_newer_release(
            unreadable.id,
            f"order {unreadable.id} was stored by a newer release of orders, in a form this one cannot read; retry",
        )

    async def _visible(self, order: Order | None, order_id: str) -> Order:
        """Another user's order is reported exactly like a missing one."""
        if order is None:
            raise _not_found(order_id)
        _check_visible(order.user_id, order_id)
        return order


def _not_found(order_id: str) -> errors.NotFound:
    return errors.NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND", metadata={"order_id": order_id})


def _check_visible(user_id: str, order_id: str) -> None:
    # Another user's order is answered as no order at all: its existence is not theirs to learn.
    caller = call_context.acting_for()
    if caller is not None and user_id != caller:
        raise _not_found(order_id)


def _require(order: Order | None, order_id: str) -> Order:
    if order is None:
        raise _not_found(order_id)
    return order


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
    # (`_from_newer_release`). The retry is a read that replays the order, so a final answer spares nothing.
    raise _from_newer_release(
        order.id,
        f"order {order.id} was finished by a newer release of orders, in a state this one cannot name; retry "
        "with the same idempotency key",
    )
