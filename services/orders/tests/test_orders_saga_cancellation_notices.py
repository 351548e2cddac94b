"""Which cancellations the customer was told of by PlaceOrder's own answer (OrderCancelled's
`answered_at_placement`, which notifications mails no e-mail for): a checkout refused while its PlaceOrder
waited (out of stock, a declined card) is; the customer's own cancellation, a checkout the recovery loop ended
and one whose PlaceOrder had stopped waiting are not, and are e-mailed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from shopmesh.orders.v1 import events_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.db import Database
from shopmesh_orders import placement
from shopmesh_orders import saga as saga_module
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.saga import ORDER_CANCELLED, PlacementCall

from .conftest import FakeInventory, FakePayments
from .saga_kit import DECLINED, GOOD, _not_retried, command, events, inbound_deadline, place


async def cancellations(database: Database) -> list[tuple[str, bool]]:
    """Each OrderCancelled in the outbox: its order's reason code and whether PlaceOrder answered with it."""
    cancelled = [events_pb2.OrderCancelled.FromString(p) for s, p in await events(database) if s == ORDER_CANCELLED]
    return [(str(event.reason.code), event.answered_at_placement) for event in cancelled]


async def test_checkouts_refused_while_placeorder_waited_are_cancellations_it_answered(
    app: OrdersApplication, database: Database
) -> None:
    """The audit's loop: declined cards and more than the stock, placed again and again, each told on screen."""
    for attempt in range(3):
        with pytest.raises(errors.FailedPrecondition) as declined:
            await place(app, command(DECLINED), key=f"declined-{attempt}")
        assert declined.value.reason == "CARD_DECLINED"
        with pytest.raises(errors.FailedPrecondition) as short:
            await place(app, command(GOOD, CartLine("prod_a", 100)), key=f"short-{attempt}")
        assert short.value.reason == "INSUFFICIENT_STOCK"
    answered = [answered for _code, answered in await cancellations(database)]
    assert answered == [True] * 6


async def test_a_customers_cancellation_of_a_confirmed_order_is_not_one_placeorder_answered(
    app: OrdersApplication, database: Database
) -> None:
    order_id = await place(app, command())
    await app.cancel_order(order_id, "changed my mind", "cancel-1", "f1")
    assert [answered for _code, answered in await cancellations(database)] == [False]


async def test_a_checkout_the_recovery_loop_ends_is_not_one_placeorder_answered(
    app: OrdersApplication, inventory: FakeInventory, database: Database
) -> None:
    inventory.down = True
    with pytest.raises(errors.Unavailable) as caught:
        await place(app, command())
    inventory.down = False
    await _not_retried(database, caught.value.metadata["order_id"])
    assert await app.resume_unfinished() == 1
    assert [answered for _code, answered in await cancellations(database)] == [False]


async def test_a_checkout_declined_after_placeorder_stopped_waiting_is_not_one_it_answered(
    app: OrdersApplication, payments: FakePayments, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PlaceOrder answered UNAVAILABLE naming the order (the saga goes on without it); the decline that comes
    after is news to the customer, to be e-mailed."""
    charge, answered = payments.charge, asyncio.Event()

    async def declined_once_the_caller_is_answered(
        order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str
    ) -> str:
        await answered.wait()
        return await charge(order_id, amount_minor, currency, card, idempotency_key)

    monkeypatch.setattr(payments, "charge", declined_once_the_caller_is_answered)
    # Room for the early answer however slow the machine is to price and record the order first.
    with inbound_deadline(3.0), pytest.raises(errors.Unavailable) as caught:
        await place(app, command(DECLINED))
    assert caught.value.metadata["order_id"]
    answered.set()
    await app.wait_running(10)
    assert [answered for _code, answered in await cancellations(database)] == [False]


def test_a_call_that_would_stop_waiting_once_the_cancellation_was_written_as_its_answer_waits_for_it() -> None:
    written_first, stopped_first = PlacementCall(), PlacementCall()
    assert written_first.answers_with_cancellation()
    assert not written_first.stop_waiting()
    assert stopped_first.stop_waiting()
    assert not stopped_first.answers_with_cancellation()


@dataclass(frozen=True)
class HeldCommit:
    """The saga's cancellation held between `answers_with_cancellation` and its commit (its outbox event not
    yet added), until `release`; `reached` is set once the call stopped waiting for the saga (its early answer)."""

    reached: asyncio.Event
    release: asyncio.Event


@pytest.fixture
def held_commit(monkeypatch: pytest.MonkeyPatch) -> HeldCommit:
    held = HeldCommit(asyncio.Event(), asyncio.Event())
    add_event: Callable[..., Awaitable[Any]] = saga_module.add_event
    stop_waiting = PlacementCall.stop_waiting

    async def held_if_cancelled(session: Any, *, subject: str, **kwargs: Any) -> Any:
        if subject == ORDER_CANCELLED:
            await held.release.wait()
        return await add_event(session, subject=subject, **kwargs)

    def reached(call: PlacementCall) -> bool:
        held.reached.set()
        return stop_waiting(call)

    monkeypatch.setattr(saga_module, "add_event", held_if_cancelled)
    monkeypatch.setattr(PlacementCall, "stop_waiting", reached)
    # The early answer two seconds before the deadline, so that the commit's wait has room on a slow machine.
    monkeypatch.setattr(placement, "_ANSWER_MARGIN_SECONDS", 2.0)
    return held


async def _finished_as_answered_at_placement(app: OrdersApplication, database: Database) -> None:
    """The held commit released, the saga finishes: its cancellation's event says PlaceOrder answered with it."""
    await app.wait_running(10)
    assert [answered for _code, answered in await cancellations(database)] == [True]


def _untold(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.order_id for r in caplog.records if "ended without it" in r.getMessage() and r.levelno == logging.WARNING]


async def test_a_placeorder_whose_early_answer_meets_its_cancellation_being_committed_answers_with_it(
    app: OrdersApplication, database: Database, held_commit: HeldCommit
) -> None:
    async def committed_a_while_after_the_call_stops_waiting() -> None:
        await held_commit.reached.wait()
        # Long enough for a call that did not wait for the commit to have read its order still PENDING (and
        # answered UNAVAILABLE), well within the commit's wait (1.8 s) for one that does.
        await asyncio.sleep(0.3)
        held_commit.release.set()

    committing = asyncio.create_task(committed_a_while_after_the_call_stops_waiting())
    # Room for the early answer however slow the machine is to price and record the order first; bounded all
    # the same (the call waits no longer than the commit's wait).
    with inbound_deadline(6.0), pytest.raises(errors.FailedPrecondition) as caught:
        async with asyncio.timeout(10):
            await place(app, command(DECLINED))
    await committing
    assert caught.value.reason == "CARD_DECLINED"
    await _finished_as_answered_at_placement(app, database)


async def test_a_placeorder_whose_cancellation_commit_hangs_answers_naming_the_order_before_its_deadline(
    app: OrdersApplication,
    database: Database,
    held_commit: HeldCommit,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung commit of the cancellation written as the call's answer: the call answers UNAVAILABLE naming the
    order by its deadline, not DEADLINE_EXCEEDED naming none, and the customer left untold is logged."""
    caplog.set_level(logging.WARNING, logger="shopmesh.orders")
    # A second for the answer's read of the order after the commit's wait, on a loaded machine (under the
    # chassis' database bound): the margin's size is not what this proves; that the wait ends, naming the
    # order, is.
    monkeypatch.setattr(placement, "_COMMIT_WAIT_MARGIN_SECONDS", 1.0)
    try:
        # As in the test above. Before the bound, the call waited for the commit for ever.
        with inbound_deadline(6.0), pytest.raises(errors.Unavailable) as caught:
            async with asyncio.timeout(10):
                await place(app, command(DECLINED))
    finally:
        held_commit.release.set()
    assert held_commit.reached.is_set()
    assert _untold(caplog) == [caught.value.metadata["order_id"]]
    await _finished_as_answered_at_placement(app, database)


async def test_a_placeorder_gone_while_its_cancellation_is_committed_logs_the_customer_untold(
    app: OrdersApplication,
    database: Database,
    held_commit: HeldCommit,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="shopmesh.orders")
    cancelling = asyncio.Event()
    add_event = saga_module.add_event

    async def cancelling_is_held(session: Any, *, subject: str, **kwargs: Any) -> Any:
        cancelling.set()
        return await add_event(session, subject=subject, **kwargs)

    monkeypatch.setattr(saga_module, "add_event", cancelling_is_held)
    call = asyncio.create_task(place(app, command(DECLINED)))
    await cancelling.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    held_commit.release.set()
    await app.wait_running(10)
    (order_id,) = _untold(caplog)
    assert [getattr(r, "order_id", None) for r in caplog.records if r.levelno == logging.WARNING] == [order_id]
    assert [answered for _code, answered in await cancellations(database)] == [True]
