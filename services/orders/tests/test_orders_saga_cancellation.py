"""CancelOrder: the customer's cancellation refunds and restocks, once, with the reason as given; a second one,
under another key or at the same moment, is refused as the contract says; its key replays it and is refused
for another order; one the recovery loop or another driver finishes is answered as accepted; and shutdown
waits for one whose caller went away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shopmesh.orders.v1 import events_pb2
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_key_of
from shopmesh_chassis.db import Database
from shopmesh_chassis.idempotency import key_reused
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import PaymentsClient
from shopmesh_orders.domain.model import CancelCode, Order, OrderState, SagaStep
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import OrderRepository

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import Clocked, _hold_refunds, command, events, place


async def test_customer_cancellation_refunds_and_restocks(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    order_id = await place(app, command())
    cancelled = await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_code) == (OrderState.CANCELLED, CancelCode.CUSTOMER_REQUESTED)
    assert cancelled.cancel_message == "changed my mind"
    assert payments.captured() == 0
    assert inventory.on_hand["prod_a"] == 5
    # The same key replays; another key finds the order no longer cancellable.
    assert (await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")).id == order_id
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "again", "cancel-2", "f2")
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"


async def test_a_cancellation_an_earlier_release_accepted_with_control_characters_is_refunded_with_its_code(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payments refuses a Refund reason that is not one line of text (INVALID_ARGUMENT, on every try), and an
    orders release before the one-line rule stored such cancellation messages: the refund of one asks with the
    cancellation's code instead (the same on every try, as the refund's key needs), and the order keeps its
    message."""
    order_id = await place(app, command())
    # As a release before the rule accepted it.
    monkeypatch.setattr("shopmesh_orders.application.validate_cancel_reason", lambda _reason: None)
    cancelled = await app.cancel_order(order_id, "changed\nmy mind\x1b[0m", "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_message) == (OrderState.CANCELLED, "changed\nmy mind\x1b[0m")
    assert (payments.captured(), payments.refund_reasons) == (0, ["CUSTOMER_REQUESTED"])


PAYMENTS_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
# A cancellation message an orders release before the one-line rule accepted, and sent as the refund's reason.
MULTI_LINE = "changed\nmy mind\x1b[0m"


class PaymentsKeyingRefunds(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments over a real socket, keying a Refund as payments does: the first request under a key is applied,
    another request under the same key is IDEMPOTENCY_KEY_REUSED. Every charge captures."""

    def __init__(self) -> None:
        self.payments: dict[str, payments_pb2.Payment] = {}
        self.refund_requests: dict[str, str] = {}  # idempotency key → the reason its first request had

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        payment = payments_pb2.Payment(
            id=f"pay_{request.order_id}", order_id=request.order_id, state=payments_pb2.PAYMENT_STATE_CAPTURED
        )
        self.payments[payment.id] = payment
        return payments_pb2.ChargeResponse(payment=payment)

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Any
    ) -> payments_pb2.ListPaymentsResponse:
        listed = [p for p in self.payments.values() if p.order_id == request.order_id]
        return payments_pb2.ListPaymentsResponse(payments=listed)

    async def Refund(self, request: payments_pb2.RefundRequest, context: Any) -> payments_pb2.RefundResponse:
        if self.refund_requests.setdefault(idempotency_key_of(context) or "", request.reason) != request.reason:
            raise key_reused()
        payment = self.payments[request.payment_id]
        payment.state = payments_pb2.PAYMENT_STATE_REFUNDED
        return payments_pb2.RefundResponse(payment=payment)

    def asked_before(self, order_id: str, reason: str, *, applied: bool) -> None:
        """A Refund of the order's payment an orders release before `refund_reason` sent, with `reason`, under the
        order's refund key, whose answer orders never saw; `applied`: whether it refunded (else its outcome was a
        refusal payments keeps under the key)."""
        self.refund_requests[f"{order_id}:refund"] = reason
        if applied:
            self.payments[f"pay_{order_id}"].state = payments_pb2.PAYMENT_STATE_REFUNDED


CancelledAgainstKeyedRefunds = tuple[OrdersApplication, PaymentsKeyingRefunds, str, Exception | None]


@pytest.fixture
def cancel_against_keyed_refunds(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    settings: OrdersSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[bool], Awaitable[CancelledAgainstKeyedRefunds]]:
    """An order placed, then cancelled with `MULTI_LINE` (as a release before the one-line rule accepted it),
    whose refund that release asked with the message (`PaymentsKeyingRefunds.asked_before`, `applied` or not):
    the cancellation is driven by this release, which asks with the code. Gives what the cancellation raised,
    if anything."""
    monkeypatch.setattr("shopmesh_orders.application.validate_cancel_reason", lambda _reason: None)

    async def cancel(applied: bool) -> CancelledAgainstKeyedRefunds:
        servicer = PaymentsKeyingRefunds()
        binding = ServiceBinding(PAYMENTS_SERVICE, servicer, payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
        options = ClientOptions(breaker=None, caller="orders")
        async with (
            serve_in_process(settings, [binding]) as server,
            ResilientChannel(server.address, [PAYMENTS_SERVICE], options) as channel,
        ):
            payments = PaymentsClient(channel.channel, timeout=5, unknown_state_wait=settings.recovery_interval_seconds)
            app = OrdersApplication(database, catalog, SagaDriver(database, inventory, payments, settings))
            order_id = await place(app, command())
            servicer.asked_before(order_id, MULTI_LINE, applied=applied)
            try:
                await app.cancel_order(order_id, MULTI_LINE, "cancel-1", "f1")
            except Exception as exc:
                return app, servicer, order_id, exc
        return app, servicer, order_id, None

    return cancel


async def test_a_refund_an_earlier_release_made_with_another_reason_is_recorded_not_refused_for_ever(
    cancel_against_keyed_refunds: Callable[[bool], Awaitable[CancelledAgainstKeyedRefunds]],
    inventory: FakeInventory,
    database: Database,
) -> None:
    """Payments refunded the order under its refund key with the old release's message and the answer was lost:
    this release asks with the cancellation's code, IDEMPOTENCY_KEY_REUSED on every try. Payments lists the
    payment refunded, so the refund is the order's, and the cancellation completes (it stayed at the refund step
    for good, an INTERNAL to each try)."""
    app, servicer, order_id, refused = await cancel_against_keyed_refunds(True)
    assert refused is None
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.refunded) == (OrderState.CANCELLED, SagaStep.DONE, True)
    assert servicer.refund_requests == {f"{order_id}:refund": MULTI_LINE}
    assert inventory.on_hand["prod_a"] == 5
    [*_, (subject, payload)] = await events(database)
    assert (subject, events_pb2.OrderCancelled.FromString(payload).refunded) == ("orders.v1.order_cancelled", True)


async def test_a_refund_refused_under_a_used_key_for_a_payment_still_captured_stays_refused(
    cancel_against_keyed_refunds: Callable[[bool], Awaitable[CancelledAgainstKeyedRefunds]], inventory: FakeInventory
) -> None:
    """The refusal is taken as the refund done only when payments lists the payment refunded: one still captured
    leaves the order at the refund step, the refusal answered as before (an answer the contract does not
    promise: INTERNAL), and the stock held."""
    app, _, order_id, refused = await cancel_against_keyed_refunds(False)
    assert isinstance(refused, RuntimeError)
    assert "used with a different request" in str(refused)
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.refunded) == (OrderState.CONFIRMED, SagaStep.REFUND, False)
    assert inventory.on_hand["prod_a"] == 3


async def test_a_customers_cancellation_reason_is_the_refunds_reason(
    app: OrdersApplication, payments: FakePayments
) -> None:
    order_id = await place(app, command())
    await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert payments.refund_reasons == ["changed my mind"]


async def test_a_refused_cancellation_is_not_its_keys_outcome_a_retry_is_judged_on_the_current_state(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    """orders.proto CancelOrder: the key stores an accepted cancellation only. ORDER_NOT_CANCELLABLE is about the
    order's state (PENDING here), so the same request under the same key, once the order is CONFIRMED, is judged
    again and cancels it, rather than replaying the refusal."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as placing:
        await place(app, command())
    order_id: str = placing.value.metadata["order_id"]
    with pytest.raises(errors.FailedPrecondition) as refused:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (refused.value.reason, refused.value.metadata["state"]) == ("ORDER_NOT_CANCELLABLE", "ORDER_STATE_PENDING")
    inventory.down = False
    # PlaceOrder's retry under its key resumes the order, which is CONFIRMED now.
    assert await place(app, command()) == order_id
    assert (await app.get_order(order_id)).state is OrderState.CONFIRMED
    cancelled = await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_code) == (OrderState.CANCELLED, CancelCode.CUSTOMER_REQUESTED)
    assert (payments.captured(), len(payments.refunds)) == (0, 1)


async def test_a_cancellation_while_another_runs_is_refused_as_already_being_cancelled(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await place(app, command())
    refunding, release = _hold_refunds(payments, monkeypatch)
    first = asyncio.create_task(app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"))
    await refunding.wait()
    with pytest.raises(errors.FailedPrecondition) as caught:
        await app.cancel_order(order_id, "me too", "cancel-2", "f2")
    assert (caught.value.reason, caught.value.metadata["state"]) == ("ORDER_NOT_CANCELLABLE", "ORDER_STATE_CONFIRMED")
    assert "already being cancelled" in str(caught.value)
    release.set()
    assert (await first).state is OrderState.CANCELLED
    assert len(payments.refunds) == 1


async def test_a_cancellation_whose_release_meets_inventory_down_is_finished_by_the_recovery_loop_refunded_once(
    clocked: Clocked, database: Database
) -> None:
    """The refund went through, inventory was down for the release: the cancellation stands, and the recovery
    loop finishes it once inventory answers, with no retry of CancelOrder, nothing refunded twice, one event."""
    app, inventory, payments = clocked.app(), clocked.inventory, clocked.payments
    order_id = await place(app, command())
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    # Answered as the contract says: not cancelled yet, but accepted, and finished without a retry.
    assert (caught.value.reason, caught.value.metadata) == (errors.DEPENDENCY_UNAVAILABLE, {"order_id": order_id})
    assert "accepted" in caught.value.message
    order = await app.get_order(order_id)
    assert (order.state, order.step, order.refunded) == (OrderState.CONFIRMED, SagaStep.REFUND, True)
    # A pass while inventory is still down refunds nothing again; the order then waits its backoff.
    assert await app.resume_unfinished() == 1
    assert (payments.refund_calls, inventory.reserved("prod_a"), inventory.on_hand["prod_a"]) == (1, 0, 3)
    inventory.down = False
    clocked.clock.ahead = timedelta(seconds=120)
    recovery = app.recovery_loop(0.01)
    recovery.start()
    try:

        async def cancelled() -> bool:
            return (await app.get_order(order_id)).state is OrderState.CANCELLED

        await eventually(cancelled, f"{order_id} cancelled by the recovery loop")
    finally:
        await recovery.stop(timeout=0)
    order = await app.get_order(order_id)
    assert (order.cancel_code, order.cancel_message, order.refunded) == (
        CancelCode.CUSTOMER_REQUESTED,
        "changed my mind",
        True,
    )
    assert (payments.refund_calls, payments.captured()) == (1, 0)
    assert (inventory.on_hand["prod_a"], inventory.reserved("prod_a")) == (5, 0)
    assert [subject for subject, _payload in await events(database)] == [
        "orders.v1.order_confirmed",
        "orders.v1.order_cancelled",
    ]
    # The customer's retry with the same key now answers with the cancelled order.
    assert (await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")).state is OrderState.CANCELLED


async def test_a_cancellation_whose_order_another_driver_holds_is_accepted_not_aborted(
    app: OrdersApplication, saga: SagaDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery loop (or the request's first attempt, which the caller's channel retried on its
    UNAVAILABLE) holds the order being cancelled: the cancellation is recorded under the key and that driver
    completes it, so CancelOrder answers it is accepted, not ABORTED "retry with the same key"."""
    monkeypatch.setattr("shopmesh_orders.placement._WAIT_FOR_OTHER_DRIVER_SECONDS", 0.2)
    order_id = await place(app, command())
    original = saga.drive

    async def recovery_took_it_first(order_id: str, *args: Any, **kwargs: Any) -> Order:
        assert await saga._claim(order_id, saga.new_lease_owner(), for_customer=False)
        return await original(order_id, *args, **kwargs)

    monkeypatch.setattr(saga, "drive", recovery_took_it_first)
    with pytest.raises(errors.Unavailable) as caught:
        await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert (caught.value.reason, caught.value.metadata) == (errors.DEPENDENCY_UNAVAILABLE, {"order_id": order_id})
    assert "accepted" in caught.value.message
    # The wait the other accepted answer carries when its dependency names none; it had no RetryInfo at all.
    assert (caught.value.retry_after_seconds, caught.value.final) == (1.0, True)
    assert (await app.get_order(order_id)).cancellation_pending


def _meet_after_reading_the_cancel_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CancelOrder transactions both read the order before either saves it, where the database lets them
    (PostgreSQL; SQLite's writers never overlap, so each goes on alone after a short wait)."""
    read, arrived, both = OrderRepository.cancel_origin, [0], asyncio.Event()

    async def meeting(self: OrderRepository, order_id: str) -> tuple[str | None, str | None]:
        origin = await read(self, order_id)
        arrived[0] += 1
        if arrived[0] == 2:
            both.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both.wait(), 0.5)
        return origin

    monkeypatch.setattr(OrderRepository, "cancel_origin", meeting)


async def _cancelled_twice_at_once(
    app: OrdersApplication, monkeypatch: pytest.MonkeyPatch, second: tuple[str, str, str]
) -> list[Order | BaseException]:
    """A placed order cancelled ("changed my mind", key cancel-1) and, at the same moment, as `second` says
    (reason, key, fingerprint): both calls read the order before either saves."""
    order_id = await place(app, command())
    _meet_after_reading_the_cancel_origin(monkeypatch)
    return await asyncio.gather(
        app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"),
        app.cancel_order(order_id, *second),
        return_exceptions=True,
    )


async def test_two_cancellations_at_once_with_other_keys_cancel_once_and_refuse_the_other_as_not_cancellable(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = await _cancelled_twice_at_once(app, monkeypatch, ("me too", "cancel-2", "f2"))
    cancelled = [o for o in outcomes if isinstance(o, Order)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert [o.state for o in cancelled] == [OrderState.CANCELLED]
    # The contract: FAILED_PRECONDITION ORDER_NOT_CANCELLABLE for a cancellation under another key.
    assert [(type(e), getattr(e, "reason", None)) for e in refused] == [
        (errors.FailedPrecondition, "ORDER_NOT_CANCELLABLE")
    ]
    assert len(payments.refunds) == 1


async def test_a_cancellation_retried_with_its_key_while_the_first_runs_returns_the_order_or_key_in_use(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = await _cancelled_twice_at_once(app, monkeypatch, ("changed my mind", "cancel-1", "f1"))
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            # The contract: a retry racing the original is ABORTED, reason IDEMPOTENCY_KEY_IN_USE.
            assert (type(outcome), getattr(outcome, "reason", None)) == (errors.Aborted, "IDEMPOTENCY_KEY_IN_USE")
        else:
            assert outcome.state is OrderState.CANCELLED
    assert len(payments.refunds) == 1


async def test_a_cancellation_key_sent_again_for_another_order_is_refused_as_reused(
    app: OrdersApplication, payments: FakePayments
) -> None:
    # Keys are scoped to the method and the caller (common/v1): the stored cancellation was per order, so
    # the key of one cancellation, sent for a second order, cancelled that order too.
    first, second = await place(app, command()), await place(app, command(), key="place-2")
    await app.cancel_order(first, "changed my mind", "cancel-1", "f1")
    with pytest.raises(errors.InvalidArgument) as refused:
        await app.cancel_order(second, "changed my mind", "cancel-1", "f2")
    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert (await app.get_order(second)).state is OrderState.CONFIRMED
    assert len(payments.refunds) == 1


async def test_shutdown_waits_for_a_cancellation_whose_caller_went_away(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = await place(app, command())
    refunding, go_on = asyncio.Event(), asyncio.Event()
    refund = payments.refund

    async def slow_refund(payment_id: str, reason: str, idempotency_key: str) -> None:
        refunding.set()
        await go_on.wait()
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "refund", slow_refund)
    caller = asyncio.create_task(app.cancel_order(order_id, "changed my mind", "cancel-1", "f1"))
    await refunding.wait()
    caller.cancel()
    # Shutdown begins while the saga refunds: it must wait for it, as for a PlaceOrder's saga.
    asyncio.get_running_loop().call_later(0.2, go_on.set)
    await app.wait_running(timeout=5)
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED
    assert payments.refunds != []


async def test_one_cancellation_key_sent_for_two_orders_at_once_cancels_only_one(
    app: OrdersApplication, payments: FakePayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is the caller's for the method: two orders cancelled at once under one key must not both be
    # cancelled (neither transaction sees the other's uncommitted cancel_key on PostgreSQL).
    first, second = await place(app, command()), await place(app, command(), key="place-2")
    _meet_after_reading_the_cancel_origin(monkeypatch)
    outcomes = await asyncio.gather(
        app.cancel_order(first, "changed my mind", "cancel-1", "f1"),
        app.cancel_order(second, "changed my mind", "cancel-1", "f2"),
        return_exceptions=True,
    )
    cancelled = [o for o in outcomes if isinstance(o, Order)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert [(type(e), getattr(e, "reason", None)) for e in refused] == [
        (errors.InvalidArgument, "IDEMPOTENCY_KEY_REUSED")
    ]
    assert len(cancelled) == 1
    assert len(payments.refunds) == 1


async def test_a_customers_cancel_reason_is_kept_as_given_when_the_payment_is_refunded(
    app: OrdersApplication, payments: FakePayments
) -> None:
    # The customer's reason (up to 500 characters) is the cancelled order's message: the refund rewrites
    # one ending "; nothing was charged." as if it were orders' own reason, and at 500 characters the
    # rewritten text (506) no longer fits cancel_message's VARCHAR(500) on PostgreSQL.
    order_id = await place(app, command())
    reason = "x" * (500 - len("; nothing was charged.")) + "; nothing was charged."
    cancelled = await app.cancel_order(order_id, reason, "cancel-1", "f1")
    assert (cancelled.state, cancelled.cancel_message) == (OrderState.CANCELLED, reason)
    assert len(payments.refunds) == 1


async def test_a_customers_cancellation_of_a_confirmed_order_is_not_counted_as_a_second_finished_checkout(
    database: Database, catalog: FakeCatalog, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    """Audit finding: the cancellation's terminal transition was counted on shopmesh_orders_finished_total beside
    the confirmation, so each checkout a customer cancelled counted twice, inflating the denominator of
    ShopmeshCheckoutsCancelledByOutages ("over 5 % of finished checkouts"). It is counted on its own."""
    registry = CollectorRegistry()
    metrics = OrderMetrics(registry)
    saga = SagaDriver(database, inventory, payments, settings, on_finished=metrics.finished)
    app = OrdersApplication(database, catalog, saga)
    order_id = await place(app, command())
    await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    finished = {
        (sample.labels["state"], sample.labels["reason"]): sample.value
        for family in registry.collect()
        if family.name == "shopmesh_orders_finished"
        for sample in family.samples
        if sample.name == "shopmesh_orders_finished_total" and sample.value
    }
    assert finished == {("CONFIRMED", ""): 1.0}
    assert registry.get_sample_value("shopmesh_orders_cancelled_after_confirmation_total") == 1.0
