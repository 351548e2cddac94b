"""The recovery loop meeting faults of its own: a race lost on orders' database, or the database going away,
is one warning and the next pass resumes the order (PostgreSQL's own errors, raised through asyncpg); a bug
is an error with its traceback, each pass, counted on orders' metrics, and the loop goes on."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_chassis.testing import eventually
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import OrderState
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_orders.recovery import RECOVER_SPAN
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.store.repository import Due, OrderRepository

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import IN_DOUBT, CancelledInDoubt, _not_retried, command, place

_SERIALIZATION_FAILURE = text(
    "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent update'"
    " USING ERRCODE = 'serialization_failure'; END $$"
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(database: Database, catalog: FakeCatalog, saga: SagaDriver, registry: CollectorRegistry) -> OrdersApplication:
    """Orders' application counting the errors of its recovery passes, as the service wires it."""
    return OrdersApplication(database, catalog, saga, on_recovery_error=OrderMetrics(registry).recovery_error)


def _errors_counted(registry: CollectorRegistry) -> dict[str, float | None]:
    return {
        recovery_pass: registry.get_sample_value("shopmesh_orders_recovery_errors_total", {"pass": recovery_pass})
        for recovery_pass in ("resume", "recheck")
    }


_NONE_COUNTED = {"resume": 0, "recheck": 0}


async def _left_pending_while_inventory_was_down(
    app: OrdersApplication, inventory: FakeInventory, key: str = "key-1"
) -> str:
    """An order placed while inventory was down, and not retried: PENDING, due for the recovery loop. Its id."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command(), key=key)
    inventory.down = False
    order_id: str = caught.value.metadata["order_id"]
    await _not_retried(app._db, order_id)
    return order_id


def _first_call_meets(monkeypatch: pytest.MonkeyPatch, method: str, statement: Any) -> list[bool]:
    """Make OrderRepository.`method` run `statement` on its session before its first call (PostgreSQL's own
    error through asyncpg, as the database would raise it); the list it returns is non-empty once it did."""
    original, met = getattr(OrderRepository, method), []

    async def first_call_meets_it(self: OrderRepository, *args: Any, **kwargs: Any) -> bool:
        if not met:
            met.append(True)
            await self._session.execute(statement)
        result: bool = await original(self, *args, **kwargs)
        return result

    monkeypatch.setattr(OrderRepository, method, first_call_meets_it)
    return met


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_on_orders_database_while_resuming_is_a_warning_and_the_next_pass_resumes_the_order(
    app: OrdersApplication,
    inventory: FakeInventory,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    # PostgreSQL's own serialization_failure (SQLSTATE 40001), as a lost race raises it.
    raced = _first_call_meets(monkeypatch, "claim", _SERIALIZATION_FAILURE)
    assert await app.resume_unfinished() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # Still due: the next pass resumes it.
    assert (await app.get_order(order_id)).state is OrderState.PENDING
    assert await app.resume_unfinished() == 1
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED
    assert _errors_counted(registry) == _NONE_COUNTED, "a lost race was counted as an error"


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_on_orders_database_mid_saga_is_not_put_off_and_the_next_pass_resumes_the_order(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An order whose resumption fails is put off with a growing wait (it would likely fail alike on the next
    pass), but a race lost while saving a step is over once lost: the very next pass resumes the order."""
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    raced = _first_call_meets(monkeypatch, "save", _SERIALIZATION_FAILURE)
    assert await app.resume_unfinished() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert (await app.get_order(order_id)).state is OrderState.PENDING
    assert await app.resume_unfinished() == 1
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED


_TOO_MANY_CONNECTIONS = text(
    "DO $$ BEGIN RAISE EXCEPTION 'sorry, too many clients already' USING ERRCODE = 'too_many_connections'; END $$"
)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_orders_database_going_away_while_resuming_stops_the_pass_with_one_warning_and_the_next_resumes(
    app: OrdersApplication,
    inventory: FakeInventory,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other orders due would fare no better: one warning, no traceback per order, and all stay due."""
    order_ids = [await _left_pending_while_inventory_was_down(app, inventory, key) for key in ("away-1", "away-2")]
    # PostgreSQL's own refusal (SQLSTATE 53300), as a database out of connections answers.
    _first_call_meets(monkeypatch, "claim", _TOO_MANY_CONNECTIONS)
    assert await app.resume_unfinished() == 2
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and "database is unavailable" in r.getMessage()]
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert [(await app.get_order(i)).state for i in order_ids] == [OrderState.PENDING] * 2, "the pass stopped"
    assert await app.resume_unfinished() == 2
    assert [(await app.get_order(i)).state for i in order_ids] == [OrderState.CANCELLED] * 2
    assert _errors_counted(registry) == _NONE_COUNTED, "the database away was counted as an error"


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_orders_database_away_when_a_recovery_pass_starts_is_one_warning_under_its_label_and_the_loop_goes_on(
    app: OrdersApplication,
    inventory: FakeInventory,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The query of the orders due fails before any order is reached: it was swallowed unseen."""
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    away = _first_call_meets(monkeypatch, "unfinished", _TOO_MANY_CONNECTIONS)
    recovery = app.recovery_loop(0.01)
    recovery.start()
    try:

        async def cancelled() -> bool:
            return (await app.get_order(order_id)).state is OrderState.CANCELLED

        # Resumed by a later pass: the loop outlived the failed one.
        await eventually(cancelled, f"{order_id} resumed after the database came back")
        assert recovery.running
    finally:
        await recovery.stop(timeout=0)
    assert away
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and "database is unavailable" in r.getMessage()]
    assert "resume_unfinished" in warned.getMessage()
    assert getattr(warned, "recovery_pass", None) == "resume", "the line names the pass otherwise than its counter"
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert _errors_counted(registry) == _NONE_COUNTED, "the database away was counted as an error"


async def test_a_bug_when_a_recovery_pass_starts_is_an_error_with_traceback_under_its_label_counted_the_loop_going_on(
    app: OrdersApplication,
    inventory: FakeInventory,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pass whose query of the orders due fails on every pass reaches no order: logged only, it hid every
    order it would have failed on from the errors counter too. Counted by pass, as the orders' errors are."""
    order_id = await _left_pending_while_inventory_was_down(app, inventory)
    calls: list[bool] = []

    async def query_has_a_bug(self: OrderRepository, *args: Any) -> list[Due]:
        calls.append(True)
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "charges_to_recheck", query_has_a_bug)
    recovery = app.recovery_loop(0.01)
    recovery.start()
    try:
        # Each pass meets it again after its resumptions: the loop keeps going past the failure.
        await eventually(lambda: len(calls) >= 3, "three passes reaching the charge recheck")
        assert recovery.running
    finally:
        await recovery.stop(timeout=0)
    assert (await app.get_order(order_id)).state is OrderState.CANCELLED
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(failed) >= 2
    assert all("recheck_charges" in r.getMessage() and r.exc_info is not None for r in failed)
    assert [getattr(r, "recovery_pass", None) for r in failed] == ["recheck"] * len(failed), (
        "the line names the pass otherwise than its counter"
    )
    assert all(isinstance(r.exc_info[1], RuntimeError) for r in failed if r.exc_info)
    # Counted as logged (the loop stopped after the last one's log, and before another pass's).
    assert _errors_counted(registry) == {"resume": 0, "recheck": len(failed)}


async def test_a_fault_that_is_no_race_while_resuming_is_still_an_error_with_its_traceback(
    app: OrdersApplication, inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = await _left_pending_while_inventory_was_down(app, inventory)

    async def claim_has_a_bug(self: OrderRepository, *args: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "claim", claim_has_a_bug)
    assert await app.resume_unfinished() == 1
    [failed] = [r for r in caplog.records if r.levelname == "ERROR" and order_id in r.getMessage()]
    assert failed.exc_info is not None


async def test_orders_a_recovery_pass_fails_on_with_an_error_are_counted_by_pass(
    app: OrdersApplication,
    saga: SagaDriver,
    inventory: FakeInventory,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An order that fails on every pass (put off each time, failing again) would be seen only in the logs:
    each failure is counted on orders' metrics, by pass, for a dashboard or an alert."""
    order_id = await _left_pending_while_inventory_was_down(app, inventory)

    async def has_a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "claim", has_a_bug)
    assert await app.resume_unfinished() == 1

    async def due_for_a_recheck(self: OrderRepository, now: datetime, limit: int) -> list[Due]:
        return [Due(order_id, {})]

    monkeypatch.setattr(OrderRepository, "charges_to_recheck", due_for_a_recheck)
    monkeypatch.setattr(saga, "claim_recheck", has_a_bug)
    assert await app.recheck_charges() == 1
    assert await app.recheck_charges() == 1
    assert _errors_counted(registry) == {"resume": 1, "recheck": 2}


async def test_an_error_rechecking_a_claimed_charge_is_counted_and_marks_its_recover_span_failed(
    database: Database,
    catalog: FakeCatalog,
    saga: SagaDriver,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim taken, a bug inside `recheck_charge` (in the order's RECOVER_SPAN, not at the claim before it)
    is counted on the recheck pass and leaves the span an error, so the checkout's trace shows the failure."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = OrdersApplication(
        database,
        catalog,
        saga,
        on_recovery_error=OrderMetrics(registry).recovery_error,
        tracer_provider=tracer_provider,
    )

    async def due_for_a_recheck(self: OrderRepository, now: datetime, limit: int) -> list[Due]:
        return [Due("order-1", {})]

    async def claimed(order_id: str) -> str:
        return "owner-1"

    async def has_a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OrderRepository, "charges_to_recheck", due_for_a_recheck)
    monkeypatch.setattr(saga, "claim_recheck", claimed)
    monkeypatch.setattr(saga, "recheck_charge", has_a_bug)
    try:
        assert await app.recheck_charges() == 1
    finally:
        tracer_provider.shutdown()
    assert _errors_counted(registry) == {"resume": 0, "recheck": 1}
    [recovered] = [span for span in exporter.get_finished_spans() if span.name == RECOVER_SPAN]
    assert recovered.status.status_code is StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in recovered.events if event.attributes] == ["RuntimeError"]


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_on_orders_database_while_rechecking_a_charge_is_a_warning_and_the_next_pass_checks_it(
    cancelled_in_doubt: CancelledInDoubt,
    payments: FakePayments,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
    raced = _first_call_meets(monkeypatch, "claim_recheck", _SERIALIZATION_FAILURE)
    assert await app.recheck_charges() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert warned.exc_info is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert await app.recheck_charges() == 1
    assert (await app.get_order(order_id)).charge_recheck_at is None


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_race_lost_saving_a_checked_charge_does_not_put_the_recheck_off_and_the_next_pass_checks_it(
    cancelled_in_doubt: CancelledInDoubt, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A recheck that fails on an error of the order's own is put off (it would likely fail alike on every
    pass), but a race lost on orders' database once the order was loaded (here: saving it checked) is over
    once lost: the order stays due, and the very next pass checks it, the clock not moved."""
    app, clock, order_id = cancelled_in_doubt.app, cancelled_in_doubt.clock, cancelled_in_doubt.order_id
    clock.ahead = IN_DOUBT + timedelta(seconds=1)
    raced = _first_call_meets(monkeypatch, "save", _SERIALIZATION_FAILURE)
    assert await app.recheck_charges() == 1
    assert raced
    [warned] = [r for r in caplog.records if r.levelname == "WARNING" and order_id in r.getMessage()]
    assert "concurrent update" in warned.getMessage()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert await app.recheck_charges() == 1, "the recheck was put off"
    assert (await app.get_order(order_id)).charge_recheck_at is None
