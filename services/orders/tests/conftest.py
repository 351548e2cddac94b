from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from shopmesh_chassis import errors
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import CancelCode, OrderState
from shopmesh_orders.domain.ports import (
    DependencyDown,
    InsufficientStock,
    PaymentRecord,
    PaymentRefused,
    PricedProduct,
    ReservationExpired,
)
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.wiring import VERSIONS

from .saga_kit import PROCESSOR_DOWN, CancelledInDoubt, Clock, Clocked, command, place


@dataclass
class FakeCatalog:
    products: dict[str, PricedProduct] = field(default_factory=dict)

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        missing = [p for p in product_ids if p not in self.products]
        if missing:
            raise errors.NotFound(
                "unknown",
                reason="PRODUCT_NOT_FOUND",
                metadata={"product_ids": ",".join(missing), "missing_count": str(len(missing))},
            )
        return {p: self.products[p] for p in product_ids}


@dataclass
class FakeInventory:
    """Stock bookkeeping as inventory does it, in memory; `down` makes every call UNAVAILABLE (DependencyDown,
    as the adapter says a transport failure); `answers`, while set, is what every call raises instead (e.g. the
    adapter's final answer)."""

    on_hand: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, tuple[str, tuple[CartLine, ...], str]] = field(default_factory=dict)
    down: bool = False
    answers: errors.Unavailable | None = None
    expire_on_commit: bool = False
    calls: list[str] = field(default_factory=list)

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.answers is not None:
            raise self.answers
        if self.down:
            raise DependencyDown("inventory down")

    def reserved(self, product_id: str) -> int:
        return sum(
            i.quantity
            for _order, items, state in self.reservations.values()
            if state == "PENDING"
            for i in items
            if i.product_id == product_id
        )

    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        self._check("reserve")
        for rid, (order, _items, state) in self.reservations.items():
            if order == order_id:
                # Inventory replays the order's reservation whatever its state; the adapter refuses a lapsed one.
                if state in ("EXPIRED", "RELEASED"):
                    raise ReservationExpired(rid)
                return rid
        short = [
            i.product_id for i in items if self.on_hand.get(i.product_id, 0) - self.reserved(i.product_id) < i.quantity
        ]
        if short:
            raise InsufficientStock(short)
        rid = f"res_{len(self.reservations) + 1}"
        self.reservations[rid] = (order_id, tuple(items), "PENDING")
        return rid

    async def commit(self, reservation_id: str) -> None:
        self._check("commit")
        order, items, state = self.reservations[reservation_id]
        if self.expire_on_commit or state in ("EXPIRED", "RELEASED"):
            self.reservations[reservation_id] = (order, items, "EXPIRED")
            raise ReservationExpired(reservation_id)
        if state == "PENDING":
            for i in items:
                self.on_hand[i.product_id] -= i.quantity
            self.reservations[reservation_id] = (order, items, "COMMITTED")

    async def release(self, reservation_id: str) -> None:
        self._check("release")
        order, items, state = self.reservations[reservation_id]
        if state == "COMMITTED":
            for i in items:
                self.on_hand[i.product_id] += i.quantity
        if state in ("PENDING", "COMMITTED"):
            self.reservations[reservation_id] = (order, items, "RELEASED")


@dataclass
class FakePayments:
    """Payments as the contract describes it: keyed charges, test cards, refunds. `answers`, while set, is what
    every call raises (e.g. the adapter's final answer)."""

    payments: dict[str, PaymentRecord] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    order_of: dict[str, str] = field(default_factory=dict)
    down: bool = False
    answers: errors.Unavailable | None = None
    charge_calls: int = 0
    list_calls: int = 0
    refund_calls: int = 0
    refunds: list[str] = field(default_factory=list)
    # Every Refund's reason, as asked.
    refund_reasons: list[str] = field(default_factory=list)

    async def charge(self, order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str) -> str:
        self.charge_calls += 1
        if self.answers is not None:
            raise self.answers
        if self.down or card.number == "4000000000000119":
            raise DependencyDown("processor unavailable", reason="PAYMENT_UNAVAILABLE")
        if idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        payment_id = f"pay_{len(self.payments) + 1}"
        self.order_of[payment_id] = order_id
        if card.number == "4000000000000002":
            self.payments[payment_id] = PaymentRecord(
                payment_id, False, CancelCode.CARD_DECLINED, False, amount_minor, currency
            )
            raise PaymentRefused(CancelCode.CARD_DECLINED, payment_id)
        self.payments[payment_id] = PaymentRecord(payment_id, True, None, False, amount_minor, currency)
        self.by_key[idempotency_key] = payment_id
        return payment_id

    async def payments_for(self, order_id: str) -> list[PaymentRecord]:
        self.list_calls += 1
        if self.answers is not None:
            raise self.answers
        if self.down:
            raise DependencyDown("payments down")
        return [p for pid, p in self.payments.items() if self.order_of[pid] == order_id]

    async def refund(self, payment_id: str, reason: str, idempotency_key: str) -> None:
        self.refund_calls += 1
        self.refund_reasons.append(reason)
        if self.answers is not None:
            raise self.answers
        if self.down:
            raise DependencyDown("payments down")
        if self.payments[payment_id].captured:
            self.payments[payment_id] = replace(self.payments[payment_id], captured=False, refunded=True)
            self.refunds.append(payment_id)

    def captured(self) -> int:
        return sum(1 for p in self.payments.values() if p.captured)


@pytest.fixture
def settings(tmp_path: Path) -> OrdersSettings:
    return load_settings(
        OrdersSettings,
        grpc_port=0,
        metrics_port=-1,
        data_dir=str(tmp_path),
        step_attempts=2,
        step_backoff_seconds=0.01,
        step_timeout_seconds=0.05,
        saga_lease_seconds=5,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, settings: OrdersSettings) -> AsyncIterator[Database]:
    """Every saga and service test runs on SQLite and on a real PostgreSQL."""
    url = settings.resolved_database_url
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database()
    db = Database(url)
    await migrate(db, VERSIONS, metadata)
    yield db
    await db.dispose()


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog(
        {
            "prod_a": PricedProduct("prod_a", "Product A", 1250, "USD"),
            "prod_b": PricedProduct("prod_b", "Product B", 500, "USD"),
        }
    )


@pytest.fixture
def inventory() -> FakeInventory:
    return FakeInventory(on_hand={"prod_a": 5, "prod_b": 1})


@pytest.fixture
def payments() -> FakePayments:
    return FakePayments()


# The checkout saga's fixtures (test_orders_saga_*.py); what they are built from is in saga_kit.py.
@pytest.fixture
def saga(database: Database, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings) -> SagaDriver:
    return SagaDriver(database, inventory, payments, settings)


@pytest.fixture
def app(database: Database, catalog: FakeCatalog, saga: SagaDriver) -> OrdersApplication:
    return OrdersApplication(database, catalog, saga)


@pytest.fixture
def clocked(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    settings: OrdersSettings,
) -> Clocked:
    return Clocked(database, catalog, inventory, payments, settings, Clock())


@pytest.fixture
async def cancelled_in_doubt(clocked: Clocked, settings: OrdersSettings) -> CancelledInDoubt:
    late_refunds: list[str] = []
    app = clocked.app(on_late_refund=lambda order: late_refunds.append(order.id))
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(PROCESSOR_DOWN))
    # PlaceOrder still answers at once: it does not wait for the charge's window.
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    assert clocked.payments.charge_calls == settings.step_attempts
    order_id: str = caught.value.metadata["order_id"]
    order = await app.get_order(order_id)
    assert (order.state, order.charge_recheck_at is not None) == (OrderState.CANCELLED, True)
    return CancelledInDoubt(app, clocked.clock, order_id, late_refunds)
