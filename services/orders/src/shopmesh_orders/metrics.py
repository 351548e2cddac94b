"""Orders' own metrics, beside the chassis' gRPC and event ones on the same endpoint: how checkouts end.

A rise in one cancel reason is what an on-call engineer looks for first (PAYMENT_UNAVAILABLE: payments or its
processor is down; RESERVATION_EXPIRED: steps are too slow; CHECKOUT_INTERRUPTED: checkouts gave up before
charging, mostly on inventory; CARD_DECLINED: customers, or a fraud rule upstream; PAYMENT_REQUEST_REJECTED:
payments refused the charge request orders sent, a bug on our side that should stay at zero, each one logged at
ERROR with payments' reason). A customer's cancellation
of a confirmed order is no ending of its checkout (that was counted, confirmed): it has a counter of its own.
Any late capture refunded is a customer charged for an order they were told was cancelled (refunded by the
recovery loop once the charge could no longer land): it should stay at zero. So should the orders a recovery
pass fails on with an error (a bug, or an answer orders does not expect: logged at ERROR with its traceback);
such an order is tried again with a growing wait, and keeps failing until someone looks. Orders this release
cannot read (rows a newer release wrote) are met only during a rollout or after a rollback from it.
A dependency's outage shows first as orders waiting for it (the gauge by step), not as cancellations: those
are counted only once the dependency answers again and the order ends.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep

# The steps an order can wait for a dependency at: every step but the end.
_WAITING_STEPS = tuple(step for step in SagaStep if step not in (SagaStep.DONE, SagaStep.UNSPECIFIED))


class OrderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._finished = Counter(
            "shopmesh_orders_finished",
            "Orders whose saga reached a terminal state, by state and cancel reason (empty when confirmed).",
            ("state", "reason"),
            registry=registry,
        )
        # Each ending's series from the start, at 0: created by its first order, a series starts at 1 and
        # increase() over it reads 0, so the first cancellation of a reason in a pod would count for nothing.
        self._finished.labels(OrderState.CONFIRMED.value, "")
        for code in CancelCode:
            if code not in (CancelCode.UNSPECIFIED, CancelCode.CUSTOMER_REQUESTED):
                self._finished.labels(OrderState.CANCELLED.value, code.value)
        self._cancelled_after_confirmation = Counter(
            "shopmesh_orders_cancelled_after_confirmation",
            "Confirmed orders their customers cancelled (CancelOrder), refunded and restocked: not counted again "
            "in shopmesh_orders_finished_total, where the checkout was counted once, confirmed.",
            registry=registry,
        )
        self._late_refunds = Counter(
            "shopmesh_orders_late_captures_refunded",
            "Charges captured after their order was cancelled, found and refunded by the recovery loop.",
            registry=registry,
        )
        self._recovery_errors = Counter(
            "shopmesh_orders_recovery_errors",
            "Orders a recovery pass failed on with an error, and passes that failed so before reaching any, by "
            "pass: resume (unfinished sagas), recheck (charges of cancelled orders).",
            ("pass",),
            registry=registry,
        )
        for recovery_pass in ("resume", "recheck"):
            self._recovery_errors.labels(recovery_pass)
        self._unreadable = Counter(
            "shopmesh_orders_unreadable_orders",
            "Orders a call met whose rows this release cannot read (a newer release wrote them): left out of a "
            "ListOrders page, or answered UNAVAILABLE (ORDER_FROM_NEWER_RELEASE).",
            registry=registry,
        )
        self._waiting = Gauge(
            "shopmesh_orders_waiting_for_dependency",
            "Unfinished orders whose saga gave up on a dependency (inventory, payments) at this step and waits for "
            "it, counted from the database after each round of recovery passes: every replica reports them all "
            "(max over replicas, not sum).",
            ("step",),
            registry=registry,
        )
        # Each step's series from the start, at 0: none waiting is a 0 on the dashboard, not a panel without data.
        for step in _WAITING_STEPS:
            self._waiting.labels(step.value)

    def waiting_for_dependency(self, waiting: Mapping[SagaStep, int]) -> None:
        for step in _WAITING_STEPS:
            self._waiting.labels(step.value).set(waiting.get(step, 0))

    def finished(self, order: Order) -> None:
        if order.cancel_code is CancelCode.CUSTOMER_REQUESTED:
            # Only a CONFIRMED order can be cancelled by its customer (`Order.cancellation_requested`): its
            # checkout finished already, counted CONFIRMED. Counted there again, every cancelled purchase would
            # add a second finished checkout to the share ShopmeshCheckoutsCancelledByOutages divides by.
            self._cancelled_after_confirmation.inc()
            return
        reason = order.cancel_code.value if order.cancel_code is not None else ""
        self._finished.labels(order.state.value, reason).inc()

    def late_capture_refunded(self, order: Order) -> None:
        self._late_refunds.inc()

    def recovery_error(self, recovery_pass: str) -> None:
        self._recovery_errors.labels(recovery_pass).inc()

    def unreadable_order(self) -> None:
        self._unreadable.inc()
