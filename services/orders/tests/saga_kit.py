"""What the checkout saga's tests share: the test cards, a PlaceOrder command and how a test places it (under
an inbound deadline, `inbound_deadline`), the
outbox's events, a clock the test moves (`Clock`, `Clocked`: orders' application built on it), and the
states a test leaves an order in (as a killed driver left it, a late capture, refunds held in payments).

The fixtures built from them (`saga`, `app`, `clocked`, `cancelled_in_doubt`) are in conftest.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select, update

from shopmesh_chassis import call_context
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW
from shopmesh_chassis.db import Database
from shopmesh_chassis.tables import outbox_events
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import Address, Order, OrderState, SagaStep
from shopmesh_orders.domain.validation import Card, CartLine, PlaceOrder
from shopmesh_orders.saga import SagaDriver, charge_key
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.repository import OrderRepository
from shopmesh_orders.store.tables import orders

if TYPE_CHECKING:
    # Annotations only: conftest.py builds its fixtures from this module.
    from .conftest import FakeCatalog, FakeInventory, FakePayments


GOOD = Card("4242424242424242", 12, 2030, "123")
DECLINED = Card("4000000000000002", 12, 2030, "123")
PROCESSOR_DOWN = Card("4000000000000119", 12, 2030, "123")


def command(card: Card = GOOD, *items: CartLine) -> PlaceOrder:
    return PlaceOrder(
        user_id="usr_1",
        items=items or (CartLine("prod_a", 2),),
        currency="USD",
        address=Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB"),
        email="ada@example.com",
        card=card,
    )


async def place(app: OrdersApplication, cmd: PlaceOrder, key: str = "key-1") -> str:
    fingerprint = hashlib.sha256(repr(cmd).encode()).hexdigest()
    return (await app.place_order(cmd, key, scope="usr_1|PlaceOrder", fingerprint=fingerprint)).id


@contextmanager
def inbound_deadline(seconds: float) -> Iterator[None]:
    """As the chassis' server interceptor enters each call: the inbound call's deadline `seconds` away."""
    token = call_context.enter(seconds, None)
    try:
        yield
    finally:
        call_context.leave(token)


async def events(database: Database) -> list[tuple[str, bytes]]:
    async with database.transaction() as session:
        rows = (
            await session.execute(
                select(outbox_events.c.subject, outbox_events.c.payload).order_by(outbox_events.c.seq)
            )
        ).all()
    return [(row.subject, row.payload) for row in rows]


async def _crash_at(database: Database, order_id: str, step: SagaStep, **fields: object) -> None:
    """Make the order look as a killed driver left it: at `step`, lease run out."""
    async with database.transaction() as session:
        repo = OrderRepository(session)
        order = await repo.get(order_id)
        assert order is not None
        await repo.save(replace(order, step=step, state=OrderState.PENDING, **fields))  # type: ignore[arg-type]
        # Free and due at once, whatever wait the drive that placed it released it with.
        await session.execute(update(orders).where(orders.c.id == order_id).values(lease_owner=None, lease_until=None))


async def _not_retried(database: Database, *order_ids: str) -> None:
    """Make orders a PlaceOrder drive with the card released to wait due for the recovery loop now, as once the
    grace it kept them for the card holder's retry is over with no retry (`SagaDriver._kept_for_the_card`)."""
    async with database.transaction() as session:
        await session.execute(
            update(orders).where(orders.c.id.in_(order_ids), orders.c.lease_owner.is_(None)).values(lease_until=None)
        )


async def _stored_by_a_newer_release(database: Database, order_ids: list[str]) -> None:
    """Make the orders' rows ones this release cannot load: an address without a field this release needs (a
    newer release that keeps the street as lines of its own). A field a newer release added alone does not do:
    this release reads the address without it."""
    async with database.transaction() as session:
        for order_id in order_ids:
            address = json.loads(await session.scalar(select(orders.c.address).where(orders.c.id == order_id)))
            address["address_lines"] = [address.pop("street")]
            await session.execute(update(orders).where(orders.c.id == order_id).values(address=json.dumps(address)))


# How long after it was sent a charge is in doubt with `Clocked`'s step timeout: two of them (10 s), and the
# clock skew the project assumes (a replica's clock ahead of the sender's must not see it over early).
IN_DOUBT = timedelta(seconds=10) + MAX_CLOCK_SKEW


class Clock:
    """The saga's and recovery's clock, moved forward by the test."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class Clocked:
    """Builds orders' application on the test's fakes and database, with a clock the test moves.

    The step timeout is 5 s, so a charge is in doubt for 10 s after it was sent, and the clock skew the project
    assumes more (`IN_DOUBT`)."""

    database: Database
    catalog: FakeCatalog
    inventory: FakeInventory
    payments: FakePayments
    settings: OrdersSettings
    clock: Clock

    def app(self, on_late_refund: Callable[[Order], None] = lambda order: None) -> OrdersApplication:
        settings = self.settings.model_copy(update={"step_timeout_seconds": 5.0})
        saga = SagaDriver(
            self.database, self.inventory, self.payments, settings, on_late_refund=on_late_refund, clock=self.clock
        )
        return OrdersApplication(self.database, self.catalog, saga, clock=self.clock)


@dataclass
class CancelledInDoubt:
    """An order PlaceOrder cancelled at once because each of its charge calls ended UNAVAILABLE."""

    app: OrdersApplication
    clock: Clock
    order_id: str
    late_refunds: list[str]


def _hold_refunds(payments: FakePayments, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Refunds wait in payments: the first event is set when one arrives, the second lets them through."""
    refund, refunding, release = payments.refund, asyncio.Event(), asyncio.Event()

    async def slow_refund(payment_id: str, reason: str, idempotency_key: str) -> None:
        refunding.set()
        await release.wait()
        await refund(payment_id, reason, idempotency_key)

    monkeypatch.setattr(payments, "refund", slow_refund)
    return refunding, release


async def _late_capture(payments: FakePayments, order_id: str) -> str:
    """The last charge call's commit on payments, under way when its deadline passed, completes now."""
    return await payments.charge(order_id, 2500, "USD", GOOD, charge_key(order_id))
