"""Every service's migrations build the tables, columns and indexes its store declares, and the chassis'
migrations (run in every service's database) the chassis' tables, on SQLite and on PostgreSQL: a column added
to a model without its migration fails here, not at the first query of a new release's pod (Alembic's
autogenerate comparison, `testing.schema_differences`).

Alone: `.venv/bin/pytest tests/contract/test_migrations_build_the_models.py`."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from shopmesh_chassis import tables as chassis_tables
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import schema_differences

from .migration_sql import SERVICE_VERSIONS


def store_metadata(versions: Path) -> MetaData:
    """The service's declared tables: `shopmesh_<service>.store.tables.metadata`, the package holding `versions`."""
    package = versions.parents[1].name
    metadata: MetaData = importlib.import_module(f"{package}.store.tables").metadata
    return metadata


def test_every_service_with_a_database_is_compared() -> None:
    assert len(SERVICE_VERSIONS) == 7, SERVICE_VERSIONS  # every service but the gateway owns data


@pytest.mark.parametrize("versions", SERVICE_VERSIONS, ids=[path.parents[1].name for path in SERVICE_VERSIONS])
async def test_the_migrations_build_what_the_store_and_the_chassis_declare(blank_db: Database, versions: Path) -> None:
    metadata = store_metadata(versions)
    await migrate(blank_db, versions, metadata)
    assert await schema_differences(blank_db, metadata) == []
    assert await schema_differences(blank_db, chassis_tables.metadata) == []
