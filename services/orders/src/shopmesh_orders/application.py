"""The orders use cases: place, get, list, cancel, and the recovery loop. Validation and state rules live in the
domain; the saga driver does the cross-service work; this layer sequences them and owns idempotency. Each group
of use cases has a module of its own (`placement`, `queries`, `recovery`); `OrdersApplication` combines them over
the state they share, and holds CancelOrder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from opentelemetry import trace

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database
from shopmesh_chassis.idempotency import key_reused, validate_key
from shopmesh_chassis.tasks import Detached
from shopmesh_orders.card_drives import CardDrives
from shopmesh_orders.domain.model import Order, SagaStep
from shopmesh_orders.domain.ports import Catalog
from shopmesh_orders.domain.validation import validate_cancel, validate_cancel_reason
from shopmesh_orders.placement import OrderPlacement
from shopmesh_orders.recovery import OrderRecovery
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.store.repository import OrderRepository

log = logging.getLogger("shopmesh.orders")


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


class OrdersApplication(OrderPlacement, OrderRecovery):
    """The use cases: PlaceOrder (`placement`), GetOrder and ListOrders (`queries`), CancelOrder (here) and the
    recovery loop (`recovery`), over the state they share."""

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
        self._on_recovery_error = on_recovery_error
        self._on_unreadable = on_unreadable
        self._on_waiting = on_waiting
        self._running = Detached()
        self._driving_with_card = CardDrives()
        self._tracer = trace.get_tracer("shopmesh.orders.recovery", tracer_provider=tracer_provider)

    # --- CancelOrder ------------------------------------------------------------------------------

    async def cancel_order(self, order_id: str, reason: str, key: str | None, fingerprint: str) -> Order:
        validate_cancel(order_id, reason)
        key = validate_key(key)
        async with self._db.transaction() as session:
            repository = OrderRepository(session)
            # Locked: a concurrent cancellation waits, then finds this one's key or its outcome, and answers
            # as the contract says (the order, IDEMPOTENCY_KEY_IN_USE or ORDER_NOT_CANCELLABLE).
            order = self._visible(await self._get(repository, order_id, for_update=True), order_id)
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
