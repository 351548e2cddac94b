from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_notifications.settings import NotificationsSettings
from shopmesh_notifications.store.tables import metadata
from shopmesh_notifications.wiring import VERSIONS


@pytest.fixture
def settings(tmp_path: Path) -> NotificationsSettings:
    return load_settings(NotificationsSettings, grpc_port=0, metrics_port=-1, data_dir=str(tmp_path))


def _empty_database_url(request: pytest.FixtureRequest, settings: NotificationsSettings) -> str:
    """The fixture's parameter, "sqlite" or "postgresql" (a test may pick one, indirect=True)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres").create_database())
    return settings.resolved_database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, settings: NotificationsSettings) -> str:
    """An empty database on SQLite, then on a real PostgreSQL, for tests that open their own `Database`."""
    return _empty_database_url(request, settings)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, settings: NotificationsSettings) -> AsyncIterator[Database]:
    """The store-backed tests run on SQLite and on a real PostgreSQL."""
    db = Database(_empty_database_url(request, settings))
    await migrate(db, VERSIONS, metadata)
    yield db
    await db.dispose()
