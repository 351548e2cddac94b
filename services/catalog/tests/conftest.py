from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2_grpc
from shopmesh_catalog.settings import CatalogSettings
from shopmesh_catalog.wiring import Catalog, build
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process


def catalog_settings(data_dir: Path, **overrides: Any) -> CatalogSettings:
    # database_url="" pins the SQLite file in data_dir even when DATABASE_URL is set in the environment.
    values: dict[str, Any] = {"grpc_port": 0, "metrics_port": -1, "data_dir": str(data_dir), "database_url": ""}
    return load_settings(CatalogSettings, **{**values, **overrides})


@pytest.fixture
def seed_catalog() -> bool:
    """Whether the catalog starts with the seed; a test overrides it with parametrize."""
    return True


@pytest.fixture
async def catalog(tmp_path: Path, seed_catalog: bool) -> AsyncIterator[Catalog]:
    built = await build(catalog_settings(tmp_path, seed_catalog=seed_catalog))
    try:
        yield built
    finally:
        await built.database.dispose()


@pytest.fixture
async def server(tmp_path: Path, catalog: Catalog) -> AsyncIterator[ChassisServer]:
    async with serve_in_process(catalog_settings(tmp_path), [catalog.binding]) as running:
        yield running


@pytest.fixture
async def stub(server: ChassisServer) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)
