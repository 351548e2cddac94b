"""The recovery loop: passes that drive the sagas no live driver holds (after a crash, or one that waited on a
dependency) and recheck the charges of cancelled orders that were in doubt, each order in its checkout's trace;
then the count of orders waiting for a dependency."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from functools import partial

from opentelemetry import trace

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import database_unavailable
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.tracing import stored_context
from shopmesh_orders.card_drives import CardDrives
from shopmesh_orders.domain.model import SagaStep
from shopmesh_orders.lease import LeaseHeld, lost_race
from shopmesh_orders.recheck import RecheckPostponed
from shopmesh_orders.saga import ORDER_ID_ATTRIBUTE, SagaDriver
from shopmesh_orders.store.repository import Due, OrderRepository

log = logging.getLogger("shopmesh.orders")

# The INTERNAL span a recovery pass works on each order in, a child of the span of the PlaceOrder that
# recorded the order (its stored trace context): the order's event, its calls and its log lines stay in the
# checkout's trace however long after PlaceOrder the loop finishes it.
RECOVER_SPAN = "recover order"


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


class OrderRecovery:
    """The recovery loop's passes, for the use cases `OrdersApplication` combines."""

    _db: Database
    _saga: SagaDriver
    _clock: Clock
    _tracer: trace.Tracer
    # The orders this process drives with the customer's card (`OrdersApplication`): a pass leaves them alone.
    _driving_with_card: CardDrives
    # Called with "resume" or "recheck" for each order a recovery pass failed on with an error, and for each
    # pass that failed so before reaching any order.
    _on_recovery_error: Callable[[str], None]
    # Called after each round of recovery passes with how many orders wait for a dependency, by step.
    _on_waiting: Callable[[Mapping[SagaStep, int]], None]

    async def resume_unfinished(self, limit: int = 50) -> int:
        """Drive every saga no live driver holds (after a crash, or one that waited on a dependency)."""
        async with self._db.read() as session:
            due = await OrderRepository(session).unfinished(self._clock(), limit)
        await self._recover(
            due, "resume", "resuming order", self._claim_to_resume, self._resume, held="not resumed yet"
        )
        return len(due)

    async def _claim_to_resume(self, order_id: str) -> str | None:
        """The resume pass's claim: None for an order this process drives with the card."""
        if order_id in self._driving_with_card:
            # Its lease lapsed while this process stood still, but the drive holding the card is alive here
            # and renews the lease with its next step: not claimed, so no span in its checkout's trace.
            log.info(
                "order %s not resumed: this process drives it with the card", order_id, extra={"order_id": order_id}
            )
            return None
        return await self._saga.claim_to_resume(order_id)

    async def _resume(self, order_id: str, owner: str) -> bool:
        """The resume pass's work on an order it claimed; an order that waits stops no pass."""
        try:
            # Not `drive`: an order that must wait is left alone for a while, not tried first next pass.
            order = await self._saga.resume(order_id, owner)
            why = f" ({order.cancel_code.value})" if order.cancel_code else ""
            log.info("resumed order %s: %s%s", order_id, order.state.value, why, extra={"order_id": order_id})
        except (LeaseHeld, errors.Unavailable) as exc:
            log.info("order %s not resumed yet: %s", order_id, exc, extra={"order_id": order_id})
        return False

    async def recheck_charges(self, limit: int = 50) -> int:
        """Ask payments again about the charges of cancelled orders that were in doubt when they were
        cancelled, now that they can no longer land, and refund any that did (saga.recheck_charge).

        Unlike `resume_unfinished`, it needs no check of the orders this process drives with the card: it takes
        only finished orders (step DONE), and a drive with the card stops at the transition that finishes one
        (giving up its lease), before any recheck of it is due (the charge's settle time, in the future then)."""
        async with self._db.read() as session:
            due = await OrderRepository(session).charges_to_recheck(self._clock(), limit)
        await self._recover(due, "recheck", "checking the charge of order", self._saga.claim_recheck, self._recheck)
        return len(due)

    async def _recheck(self, order_id: str, owner: str) -> bool:
        """The recheck pass's work on an order it claimed: True when payments or the database does not answer."""
        try:
            await self._saga.recheck_charge(order_id, owner)
        except LeaseHeld:
            pass
        except RecheckPostponed as exc:
            # About this order alone (payments answered; the saga put the recheck off): go on with the others.
            log.warning("%s; its charge is checked again later", exc, extra={"order_id": order_id})
        except errors.Unavailable as exc:
            # Payments (DependencyDown) or the database does not answer: the others would fare no better.
            # They stay due; the next pass asks.
            log.warning("order %s: its charge is not checked yet: %s", order_id, exc, extra={"order_id": order_id})
            return True
        return False

    async def _recover(
        self,
        due: Sequence[Due],
        recovery_pass: str,
        what: str,
        claim: Callable[[str], Awaitable[str | None]],
        work: Callable[[str, str], Awaitable[bool]],
        *,
        held: str | None = None,
    ) -> None:
        """A recovery pass (`recovery_pass`, "resume" or "recheck") over the orders `due`: each `claim`ed (its
        lease owner; None when the pass leaves it alone, said so itself), then worked on (`work`, True when
        the pass stops there) in its checkout's trace (`_recovering`). An order another driver holds is
        skipped, logged at INFO as "order X `held`: ..." when `held` is given; any other failure on an order,
        in its claim or its work (`what`: "resuming order", ...), is told by `_pass_stops_at`."""
        on_error = partial(self._on_recovery_error, recovery_pass)
        for order_due in due:
            order_id = order_due.order_id
            try:
                owner = await claim(order_id)
            except LeaseHeld as exc:
                # Another driver took it since the query: nothing was done, so nothing goes into its trace.
                if held is not None:
                    log.info("order %s %s: %s", order_id, held, exc, extra={"order_id": order_id})
                continue
            except Exception as exc:
                if _pass_stops_at(exc, what, order_id, on_error):
                    break
                continue
            if owner is None:
                continue
            # Only once claimed: an attempt that finds the order taken must not add a span to its checkout's
            # trace, which a busy order would otherwise grow by one a pass.
            with self._recovering(order_due, recovery_pass):
                try:
                    if await work(order_id, owner):
                        break
                except Exception as exc:
                    _failed_in_span(exc)
                    if _pass_stops_at(exc, what, order_id, on_error):
                        break

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
