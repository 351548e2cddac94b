"""Fixtures of the inventory tests: a clock tests can move, the service over real gRPC on SQLite or
PostgreSQL, and a throwaway PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from shopmesh.inventory.v1 import inventory_pb2_grpc
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database, sqlite_url
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.migrations import VERSIONS
from shopmesh_inventory.settings import InventorySettings
from shopmesh_inventory.store.tables import metadata
from shopmesh_inventory.wiring import binding


@dataclass
class FakeClock:
    """Time that moves only when a test says so: expiry without sleeping."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite by default; PostgreSQL for tests parametrized with `backend` = "postgresql"."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.create_database()
    return sqlite_url(tmp_path, "inventory")


BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate(db, VERSIONS, metadata)
    try:
        yield db
    finally:
        await db.dispose()


@asynccontextmanager
async def serving(inventory: Inventory, data_dir: Path) -> AsyncIterator[inventory_pb2_grpc.InventoryServiceAsyncStub]:
    """The inventory servicer on a real gRPC socket, and a stub connected to it."""
    settings = load_settings(InventorySettings, grpc_port=0, metrics_port=-1, data_dir=str(data_dir))
    async with (
        serve_in_process(settings, [binding(inventory)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield inventory_pb2_grpc.InventoryServiceStub(channel)


@pytest.fixture
def make_inventory(database: Database) -> Callable[..., Inventory]:
    def make(clock: Clock = utc_now, sweep_batch_size: int = 100) -> Inventory:
        return Inventory(database, clock=clock, sweep_batch_size=sweep_batch_size)

    return make


@pytest.fixture
def inventory(make_inventory: Callable[..., Inventory], clock: FakeClock) -> Inventory:
    return make_inventory(clock)


@pytest.fixture
async def stub(inventory: Inventory, tmp_path: Path) -> AsyncIterator[inventory_pb2_grpc.InventoryServiceAsyncStub]:
    async with serving(inventory, tmp_path) as connected:
        yield connected
