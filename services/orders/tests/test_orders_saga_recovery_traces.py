"""An order the recovery loop finishes stays in its checkout's trace (docs/chassis.md "Traces": one checkout is
one trace from PlaceOrder to the e-mail): PlaceOrder stores its trace context with the order, and the loop
works on the order in a "recover order" span under it, so the order's event, its calls to inventory and
payments and its log lines carry the checkout's trace id. An order recorded before orders stored one is
recovered in a trace of its own, still with a trace id in its log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, update

from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_chassis.logs import TraceContextFilter
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.tracing import current_trace_id
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, OrderState
from shopmesh_orders.recovery import RECOVER_SPAN
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.store.repository import OrderRepository
from shopmesh_orders.store.tables import orders

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import IN_DOUBT, PROCESSOR_DOWN, Clocked, _late_capture, _not_retried, command, place


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider recording every span in memory (the process-wide one is whichever a test set first)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def trace_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """orders' log lines, each with the trace id the services' log handler writes (TraceContextFilter)."""
    caplog.handler.addFilter(TraceContextFilter("orders"))
    with caplog.at_level(logging.INFO, logger="shopmesh.orders"):
        yield caplog


def _trace_ids(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {record.trace_id for record in caplog.records if record.name.startswith("shopmesh.orders")}


def _trace_id_of(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent else None


async def _event_trace_ids(database: Database) -> list[str | None]:
    async with database.read() as session:
        rows = (await session.execute(select(outbox_events.c.headers).order_by(outbox_events.c.seq))).all()
    return [_trace_id_of(json.loads(row.headers).get("traceparent")) for row in rows]


def _traced_calls(inventory: FakeInventory, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each call to inventory with the trace id current when it was made: what its gRPC client sends on."""
    calls: list[tuple[str, str]] = []
    check = inventory._check

    def traced(call: str) -> None:
        calls.append((call, current_trace_id()))
        check(call)

    monkeypatch.setattr(inventory, "_check", traced)
    return calls


async def _placed_while_inventory_is_down(app: OrdersApplication, inventory: FakeInventory, key: str = "key-1") -> str:
    """An order placed while inventory was down, and not retried: due for the recovery loop. Its id."""
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command(), key)
    inventory.down = False
    order_id = str(caught.value.metadata["order_id"])
    await _not_retried(app._db, order_id)
    return order_id


def _spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_an_order_the_recovery_loop_finishes_is_in_its_checkouts_trace(
    database: Database,
    catalog: FakeCatalog,
    saga: SagaDriver,
    inventory: FakeInventory,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    trace_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracer_provider, exporter = provider
    app = OrdersApplication(database, catalog, saga, tracer_provider=tracer_provider)
    with tracer_provider.get_tracer("test").start_as_current_span("PlaceOrder") as checkout:
        order_id = await _placed_while_inventory_is_down(app, inventory)
    checkout_trace = format(checkout.get_span_context().trace_id, "032x")
    calls = _traced_calls(inventory, monkeypatch)
    trace_logs.clear()

    # Outside any span, as the loop runs: PlaceOrder's span ended long ago.
    assert await app.resume_unfinished() == 1

    order = await app.get_order(order_id)
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CHECKOUT_INTERRUPTED)
    # The OrderCancelled event carries the checkout's trace to its consumers (and so to the e-mail).
    assert await _event_trace_ids(database) == [checkout_trace]
    # Inventory's reservation, replayed then released, asked in the checkout's trace.
    assert calls
    assert {trace_id for _call, trace_id in calls} == {checkout_trace}
    # The recovery's log lines ("resumed order ...", the saga's) carry it too.
    assert trace_logs.records
    assert _trace_ids(trace_logs) == {checkout_trace}
    [recovered] = _spans_named(exporter, RECOVER_SPAN)
    assert recovered.kind is trace.SpanKind.INTERNAL
    assert recovered.parent is not None
    assert recovered.parent.span_id == checkout.get_span_context().span_id
    assert recovered.attributes is not None
    assert (recovered.attributes["shopmesh.order_id"], recovered.attributes["shopmesh.recovery_pass"]) == (
        order_id,
        "resume",
    )


async def test_an_order_another_driver_took_before_the_loop_claimed_it_adds_no_span_to_its_checkouts_trace(
    database: Database,
    catalog: FakeCatalog,
    saga: SagaDriver,
    inventory: FakeInventory,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt that does not act on the order (another driver holds it: "not resumed yet") opens no span:
    an order passed over on every pass would otherwise grow its checkout's trace by one span a pass."""
    tracer_provider, exporter = provider
    app = OrdersApplication(database, catalog, saga, tracer_provider=tracer_provider)
    with tracer_provider.get_tracer("test").start_as_current_span("PlaceOrder"):
        placed = {await _placed_while_inventory_is_down(app, inventory, key) for key in ("key-1", "key-2")}
    reserve, taken = inventory.reserve, []

    async def another_driver_takes_the_other_order(order_id: str, items: Any, ttl_seconds: float) -> str:
        # While the pass works on its first order, another replica's driver takes the second one (listed
        # in the same pass), its lease live.
        if not taken:
            [other] = placed - {order_id}
            async with database.transaction() as session:
                now = datetime.now(UTC)
                assert await OrderRepository(session).claim(
                    other, "saga-other", now, now + timedelta(minutes=1), for_customer=True
                )
            taken.append(other)
        return await reserve(order_id, items, ttl_seconds)

    monkeypatch.setattr(inventory, "reserve", another_driver_takes_the_other_order)

    assert await app.resume_unfinished() == 2

    assert len(taken) == 1
    recovered = _spans_named(exporter, RECOVER_SPAN)
    assert [span.attributes["shopmesh.order_id"] for span in recovered if span.attributes] == [
        order_id for order_id in placed if order_id not in taken
    ]
    [order_taken] = taken
    assert (await app.get_order(order_taken)).state is OrderState.PENDING


async def test_an_order_recorded_without_a_trace_context_is_recovered_in_a_trace_of_its_own(
    database: Database,
    catalog: FakeCatalog,
    saga: SagaDriver,
    inventory: FakeInventory,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    trace_logs: pytest.LogCaptureFixture,
) -> None:
    tracer_provider, exporter = provider
    app = OrdersApplication(database, catalog, saga, tracer_provider=tracer_provider)
    with tracer_provider.get_tracer("test").start_as_current_span("PlaceOrder") as checkout:
        order_id = await _placed_while_inventory_is_down(app, inventory)
    # As the release before this one recorded it (or this one outside any span): no stored context.
    async with database.transaction() as session:
        await session.execute(update(orders).where(orders.c.id == order_id).values(trace_context=None))
    trace_logs.clear()

    assert await app.resume_unfinished() == 1

    [recovered] = _spans_named(exporter, RECOVER_SPAN)
    assert recovered.parent is None
    assert recovered.context is not None
    own_trace = format(recovered.context.trace_id, "032x")
    assert own_trace != format(checkout.get_span_context().trace_id, "032x")
    assert await _event_trace_ids(database) == [own_trace]
    assert _trace_ids(trace_logs) == {own_trace}


async def test_a_late_capture_the_recovery_refunds_is_reported_in_its_checkouts_trace(
    clocked: Clocked,
    payments: FakePayments,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    trace_logs: pytest.LogCaptureFixture,
) -> None:
    """The charge recheck is a recovery pass too: its ERROR line about a refunded late capture, the one the
    runbook starts from, names the checkout's trace."""
    tracer_provider, _exporter = provider
    app = clocked.app()
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("PlaceOrder") as checkout, pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(PROCESSOR_DOWN))
    order_id = caught.value.metadata["order_id"]
    await _late_capture(payments, order_id)
    clocked.clock.ahead = IN_DOUBT + timedelta(seconds=1)
    trace_logs.clear()

    assert await app.recheck_charges() == 1

    assert payments.refunds
    [refunded] = [r for r in trace_logs.records if r.levelname == "ERROR" and order_id in r.getMessage()]
    assert refunded.trace_id == format(checkout.get_span_context().trace_id, "032x")


@pytest.fixture
def traced_app(
    database: Database, catalog: FakeCatalog, saga: SagaDriver, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> OrdersApplication:
    """Orders' application, its recovery spans recorded by `provider`."""
    return OrdersApplication(database, catalog, saga, tracer_provider=provider[0])


async def test_an_order_the_recovery_loop_cancels_names_its_cancel_code_in_its_log_lines_and_its_span(
    traced_app: OrdersApplication,
    inventory: FakeInventory,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    trace_logs: pytest.LogCaptureFixture,
) -> None:
    """On-call goes from an order id to why it was cancelled by its log lines or its trace, not only by the
    metric's `reason` label, which names no order."""
    tracer_provider, exporter = provider
    app = traced_app
    with tracer_provider.get_tracer("test").start_as_current_span("PlaceOrder"):
        order_id = await _placed_while_inventory_is_down(app, inventory)
    trace_logs.clear()

    assert await app.resume_unfinished() == 1

    cancelled = [record for record in trace_logs.records if getattr(record, "cancel_code", None) is not None]
    assert [(record.getMessage(), record.cancel_code) for record in cancelled] == [
        (f"order {order_id} cancelled: CHECKOUT_INTERRUPTED", "CHECKOUT_INTERRUPTED")
    ]
    assert f"resumed order {order_id}: CANCELLED (CHECKOUT_INTERRUPTED)" in trace_logs.messages
    [recovered] = _spans_named(exporter, RECOVER_SPAN)
    assert recovered.attributes is not None
    assert recovered.attributes["shopmesh.cancel_code"] == "CHECKOUT_INTERRUPTED"


async def test_a_checkout_names_its_order_id_on_the_placeorder_span_and_a_confirmed_one_no_cancel_code(
    traced_app: OrdersApplication,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    trace_logs: pytest.LogCaptureFixture,
) -> None:
    """From an order id to its trace without going through the logs: the span PlaceOrder runs in (its server
    span) names the order once it is recorded, a retry's too."""
    app = traced_app
    tracer = provider[0].get_tracer("test")
    with tracer.start_as_current_span("PlaceOrder") as checkout:
        order_id = await place(app, command())
    with tracer.start_as_current_span("PlaceOrder") as retried:
        assert await place(app, command()) == order_id

    for span in (checkout, retried):
        assert isinstance(span, ReadableSpan)
        assert span.attributes is not None
        assert span.attributes["shopmesh.order_id"] == order_id
    assert "shopmesh.cancel_code" not in (checkout.attributes or {})
    assert f"order {order_id} confirmed" in trace_logs.messages
