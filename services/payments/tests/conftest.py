from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shopmesh.common.v1 import money_pb2
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_metadata
from shopmesh_chassis.clocks import utc_now
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import free_port, serve_in_process
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_payments.domain.models import Card, Money
from shopmesh_payments.domain.payments import processor_unavailable
from shopmesh_payments.domain.processor import CardProcessor, ProcessorResult
from shopmesh_payments.migrations import VERSIONS
from shopmesh_payments.settings import PaymentsSettings
from shopmesh_payments.store.tables import metadata, processor_charges
from shopmesh_payments.transport import DESCRIPTOR
from shopmesh_payments.wiring import PaymentsRuntime, builtin_processor

SUCCEEDS = "4242424242424242"
DECLINES = "4000000000000002"
INSUFFICIENT_FUNDS = "4000000000009995"
UNAVAILABLE = "4000000000000119"


def payments_settings(data_dir: Path, **overrides: Any) -> PaymentsSettings:
    # database_url="" pins the SQLite file in data_dir even when DATABASE_URL is set in the environment; the
    # default NATS address is a port nothing listens on, unless a test brings a server.
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": -1,
        "data_dir": str(data_dir),
        "database_url": "",
        "nats_url": f"nats://127.0.0.1:{free_port()}",
        "idempotency_fingerprint_key": "payments-tests-fingerprint-key-0123456789",
    }
    return load_settings(PaymentsSettings, **{**values, **overrides})


def charge_request(
    order_id: str = "ord_1",
    number: str = SUCCEEDS,
    amount_minor: int = 1250,
    currency: str = "USD",
    exp_month: int = 12,
    exp_year: int = 2099,
    cvv: str = "123",
) -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        order_id=order_id,
        amount=money_pb2.Money(amount_minor=amount_minor, currency=currency),
        card=payments_pb2.PaymentCard(number=number, exp_month=exp_month, exp_year=exp_year, cvv=cvv),
    )


class ProcessorSpy:
    """A processor factory around the built-in one that counts the charges it is asked for, and can fail
    the first `fail_first` of them as an unavailable processor would."""

    def __init__(self) -> None:
        self._builtin = builtin_processor(utc_now)
        self.charges = 0
        self.fail_first = 0

    def __call__(self, session: DbConnection) -> CardProcessor:
        return _SpiedProcessor(self, self._builtin(session))


class _SpiedProcessor:
    def __init__(self, spy: ProcessorSpy, inner: CardProcessor) -> None:
        self._spy = spy
        self._inner = inner

    async def charge(self, card: Card, amount: Money, *, reference: str) -> ProcessorResult:
        self._spy.charges += 1
        if self._spy.charges <= self._spy.fail_first:
            raise processor_unavailable()
        return await self._inner.charge(card, amount, reference=reference)

    async def refund(self, charge_id: str, amount: Money) -> None:
        await self._inner.refund(charge_id, amount)


@dataclass
class Payments:
    """A payments service on a real socket over a real database, and what a test needs to look inside."""

    address: str
    database: Database
    runtime: PaymentsRuntime
    processor: ProcessorSpy
    _channels: list[ResilientChannel] = field(default_factory=list)

    def stub(self, caller: str = "orders") -> payments_pb2_grpc.PaymentsServiceAsyncStub:
        channel = ResilientChannel(self.address, [DESCRIPTOR], ClientOptions(breaker=None, caller=caller))
        self._channels.append(channel)
        return payments_pb2_grpc.PaymentsServiceStub(channel.channel)

    async def charge(
        self, request: payments_pb2.ChargeRequest, key: str, caller: str = "orders"
    ) -> payments_pb2.ChargeResponse:
        return await self.stub(caller).Charge(request, metadata=idempotency_metadata(key))

    async def refund(self, payment_id: str, key: str, reason: str = "") -> payments_pb2.RefundResponse:
        request = payments_pb2.RefundRequest(payment_id=payment_id, reason=reason)
        return await self.stub().Refund(request, metadata=idempotency_metadata(key))

    async def ledger(self, order_id: str) -> list[tuple[str, str]]:
        """(outcome, decline code) of every attempt the processor answered for the order."""
        async with self.database.transaction() as session:
            rows = await session.execute(
                select(processor_charges.c.outcome, processor_charges.c.decline_code)
                .where(processor_charges.c.reference == order_id)
                .order_by(processor_charges.c.created_at)
            )
            return [(row.outcome, row.decline_code) for row in rows]

    async def outbox(self) -> list[tuple[str, bool]]:
        """(subject, published) of every event in the outbox, oldest first."""
        async with self.database.transaction() as session:
            rows = await session.execute(
                select(outbox_events.c.subject, outbox_events.c.published_at).order_by(outbox_events.c.seq)
            )
            return [(row.subject, row.published_at is not None) for row in rows]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@contextlib.asynccontextmanager
async def running_payments(data_dir: Path, *, background: bool = False, **overrides: Any) -> AsyncIterator[Payments]:
    """The service as wiring builds it, with the processor spied on; `background` starts the NATS
    connection, the outbox relay and the purge, as the process does."""
    settings = payments_settings(data_dir, **overrides)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)
    spy = ProcessorSpy()
    runtime = PaymentsRuntime(settings, database, processor_for=spy)
    if background:
        runtime.start()
    try:
        async with serve_in_process(settings, [runtime.binding]) as server:
            service = Payments(server.address, database, runtime, spy)
            try:
                yield service
            finally:
                await service.close()
    finally:
        await runtime.stop()
        await database.dispose()


@pytest.fixture
async def payments(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Payments]:
    """On SQLite; on PostgreSQL as well for tests marked with BACKENDS."""
    overrides: dict[str, Any] = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        overrides["database_url"] = server.create_database()
    async with running_payments(tmp_path, **overrides) as service:
        yield service


BACKENDS = pytest.mark.parametrize("payments", ["sqlite", "postgresql"], indirect=True)
