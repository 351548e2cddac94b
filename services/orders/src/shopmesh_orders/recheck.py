"""The recheck of a cancelled order's charge: compensation that found no capture while the charge was in doubt
left the order a recheck due once the charge can no longer land (`charge_recheck_at`); the recovery loop then
asks payments again, and a capture that landed late is refunded."""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from shopmesh_chassis import errors
from shopmesh_orders.domain.model import Order
from shopmesh_orders.domain.ports import DependencyDown
from shopmesh_orders.lease import LeaseHeld, SagaLeases, fails_again, lease_lost
from shopmesh_orders.store.repository import Lease, OrderRepository

log = logging.getLogger("shopmesh.orders.saga")

_T = TypeVar("_T")


class RecheckPostponed(Exception):
    """Payments answered about a cancelled order's charge, but nothing can be done with the answer yet (a
    payment in a state only a newer release of payments knows): the order's recheck was put off. Unlike
    payments being down (`DependencyDown`), this says nothing about the other orders' rechecks."""

    def __init__(self, order_id: str, cause: errors.Unavailable) -> None:
        super().__init__(f"order {order_id}: {cause.message}")
        self.order_id = order_id


class _OrderWaits(Exception):
    """Internal to the recheck: an `errors.Unavailable` of a payments call about this order alone."""

    def __init__(self, cause: errors.Unavailable) -> None:
        super().__init__(cause.message)
        self.cause = cause


async def _for_this_order(call: Awaitable[_T]) -> _T:
    """Await a payments call, telling an answer about this order alone (any `errors.Unavailable` the port
    raises that is not `DependencyDown`, by its contract) from payments being down."""
    try:
        return await call
    except DependencyDown:
        raise
    except errors.Unavailable as exc:
        raise _OrderWaits(exc) from exc


class ChargeRecheck(SagaLeases, abc.ABC):
    """The charge recheck of a driver (`SagaDriver`), which lends it the calls it shares with the saga's steps."""

    # Called when a capture that landed after the order was cancelled has been refunded.
    _on_late_refund: Callable[[Order], None]

    async def claim_recheck(self, order_id: str) -> str:
        """Take the lease of a cancelled order due its charge recheck, for `recheck_charge`: its lease owner.
        Raises LeaseHeld when another driver is checking it (or it is not due)."""
        owner = self.new_lease_owner()
        async with self._db.transaction() as session:
            if not await OrderRepository(session).claim_recheck(order_id, owner, self._clock(), self.lease_until()):
                raise LeaseHeld(order_id)
        return owner

    async def recheck_charge(self, order_id: str, owner: str) -> Order:
        """Ask payments again about a cancelled order's charge, now that it can no longer land, and refund
        a capture that landed after compensation asked. Marks the order checked. `owner`: the lease
        `claim_recheck` took, given up however it ends.

        Raises LeaseHeld when another driver took the order over meanwhile; RecheckPostponed when payments
        answered but cannot be acted on for this order alone (its recheck is put off: `_postpone_recheck`);
        `errors.Unavailable` while payments (`DependencyDown`) or the database cannot answer at all: the order
        stays due, and the recovery loop comes back to it. Any other error is raised as it is, the recheck put
        off too.
        """
        released = False
        loaded: Order | None = None
        try:
            order = loaded = await self._load(order_id)
            to_refund, refunded_before = await _for_this_order(self._captures(order))
            for payment_id in to_refund:
                # Two remote calls outlast the lease taken for one: renew, or another replica's recovery pass
                # takes the order over and refunds and reports the same late capture again.
                await self._keep_lease(order_id, owner, recheck=True)
                await _for_this_order(self._refund(order, payment_id))
            if to_refund:
                # Said now, not after the save: a retry after a failed save finds nothing captured to report.
                self._late_capture_refunded(order, to_refund)
            async with self._db.transaction() as session:
                # A retry after a failed save finds the capture refunded, not captured: still refunded.
                after = order.charge_rechecked(bool(to_refund) or refunded_before, self._clock())
                order = await OrderRepository(session).save(after, Lease(owner, None))
            released = True
        except _OrderWaits as waits:
            # (Raised only once the order was loaded.) It would stay first due and be asked about on every
            # pass, ahead of the others (a pass stops only when payments is down): put it off, as the
            # recovery loop does orders that wait.
            released = await self._postpone_recheck(order, owner, waits.cause)
            if not released:
                raise LeaseHeld(order_id) from waits.cause
            raise RecheckPostponed(order_id, waits.cause) from waits.cause
        except Exception as exc:
            if lease_lost(exc):
                raise LeaseHeld(order_id) from exc
            if not isinstance(exc, errors.Unavailable) and fails_again(exc):
                # An error of this order's own (an answer the adapter does not expect, a bug) likely fails alike
                # on every pass: left due, it would lead each one, and enough of them would keep every other
                # order's late capture from being refunded. Put off as an order that waits is; one that could
                # not even be loaded (a row a newer release wrote) all the same, as `_resume_at` does.
                if loaded is None:
                    released = await self._postpone_unloaded_recheck(order_id, owner)
                else:
                    released = await self._postpone_recheck(loaded, owner, exc)
            raise
        finally:
            if not released:
                await self._release(order_id, owner)
        return order

    async def _postpone_recheck(self, order: Order, owner: str, failure: Exception) -> bool:
        """Put the order's charge recheck off (`_retry_at`: it waits or failed), giving the lease up; False when
        the lease was lost meanwhile (another driver has the order: it is its to check)."""
        postponed = order.charge_recheck_postponed(self._retry_at(order, failure))
        try:
            async with self._db.transaction() as session:
                await OrderRepository(session).save(postponed, Lease(owner, None))
        except errors.Aborted as exc:
            if not lease_lost(exc):
                raise
            return False
        log.info(
            "order %s: its charge is checked again at %s",
            order.id,
            postponed.charge_recheck_at,
            extra={"order_id": order.id},
        )
        return True

    async def _postpone_unloaded_recheck(self, order_id: str, owner: str) -> bool:
        """Put off, by one recovery interval, the charge recheck of an order that could not be loaded, giving
        the lease up: with no order there is no `updated_at` for `_retry_at` to grow the wait from. False when
        the lease was lost meanwhile."""
        until = self._one_interval_on()
        async with self._db.transaction() as session:
            postponed = await OrderRepository(session).postpone_recheck(order_id, owner, until)
        if postponed:
            log.info(
                "order %s could not be loaded: its charge is checked again at %s",
                order_id,
                until,
                extra={"order_id": order_id},
            )
        return postponed

    def _late_capture_refunded(self, order: Order, payment_ids: list[str]) -> None:
        # The customer was told the order was cancelled and nothing charged, and was charged after all.
        refunded = ",".join(payment_ids)
        log.error(
            "order %s: a charge captured after the order was cancelled was refunded (%s)",
            order.id,
            refunded,
            extra={"order_id": order.id, "payment_ids": refunded},
        )
        self._on_late_refund(order)

    # Defined by `SagaDriver` beside the saga's steps, which call them too.

    @abc.abstractmethod
    async def _load(self, order_id: str) -> Order: ...

    @abc.abstractmethod
    async def _captures(self, order: Order) -> tuple[list[str], bool]: ...

    @abc.abstractmethod
    async def _refund(self, order: Order, payment_id: str) -> None: ...

    @abc.abstractmethod
    def _retry_at(self, order: Order, failure: Exception) -> datetime: ...

    @abc.abstractmethod
    def _one_interval_on(self) -> datetime: ...
