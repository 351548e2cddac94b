"""The saga lease: one driver at a time works on an order, holding a lease on it in orders' database. How a
driver takes, renews and gives up the lease, and how it tells another driver (or transaction) having the order
from a failure of the order's own."""

from __future__ import annotations

from datetime import datetime, timedelta

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import Clock
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import as_domain_error, database_unavailable
from shopmesh_chassis.ids import new_id
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import OrderRepository


class LeaseHeld(Exception):
    """Another driver is working on this order right now."""


def lease_lost(error: Exception) -> bool:
    """Whether `error` is a save refused because another driver took the order's lease meanwhile."""
    return isinstance(error, errors.Aborted) and error.reason == "CONCURRENT_MODIFICATION"


def lost_race(error: Exception) -> errors.Aborted | None:
    """The ABORTED a concurrency race lost on orders' database (a PostgreSQL serialization failure or
    deadlock) stands for, or None for anything else. The recovery loop meets such a race raw (only the
    server maps it for callers); it is no bug but a transient conflict with another transaction, and the
    order stays due, so the next pass simply tries again: a warning, not an error with a traceback. Not put
    off like an order that waits or fails (`SagaDriver._retry_at`): the race is over once it is lost."""
    mapped = as_domain_error(error)
    return mapped if isinstance(mapped, errors.Aborted) and mapped.reason == "CONCURRENT_UPDATE" else None


def fails_again(error: Exception) -> bool:
    """Whether an order's failure is its own and likely met again on the next pass, so the order is put off,
    resumed (`_resume_at`) or rechecked (`_postpone_recheck`): not another driver holding it, not a race lost on
    orders' database (over once lost), not that database away (no fault of the order's own)."""
    return not isinstance(error, LeaseHeld) and lost_race(error) is None and not database_unavailable(error)


class SagaLeases:
    """The lease calls of a driver (`SagaDriver`, whose settings and clock they use)."""

    _db: Database
    _settings: OrdersSettings
    _clock: Clock

    @staticmethod
    def new_lease_owner() -> str:
        return new_id("saga-")

    def lease_until(self) -> datetime:
        return self._clock() + self._lease()

    def _lease(self) -> timedelta:
        return timedelta(seconds=self._settings.saga_lease_seconds)

    async def _claim(self, order_id: str, owner: str, *, for_customer: bool) -> bool:
        async with self._db.transaction() as session:
            return await OrderRepository(session).claim(
                order_id, owner, self._clock(), self.lease_until(), for_customer=for_customer
            )

    async def _keep_lease(self, order_id: str, owner: str, *, recheck: bool = False) -> None:
        """Renew the lease before a remote call that follows another with no step saved between them;
        LeaseHeld when another driver took the order over meanwhile. `recheck`: the lease is a finished
        order's, taken by `recheck_charge`."""
        async with self._db.transaction() as session:
            repository = OrderRepository(session)
            renew = repository.renew_recheck if recheck else repository.renew
            renewed = await renew(order_id, owner, self.lease_until())
        if not renewed:
            raise LeaseHeld(order_id)

    async def _release(
        self, order_id: str, owner: str, not_before: datetime | None = None, waiting: bool | None = None
    ) -> None:
        async with self._db.transaction() as session:
            await OrderRepository(session).release(order_id, owner, not_before, waiting=waiting)
