"""The migrations build exactly the tables the store uses, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from shopmesh_chassis.db import Database
from shopmesh_inventory.store.tables import metadata

from .conftest import BACKENDS


def _differences(connection: Connection) -> list[Any]:
    def ours(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
        # The chassis' tables live in the same database under their own Alembic branch.
        return kind != "table" or name in metadata.tables

    context = MigrationContext.configure(connection, opts={"include_name": ours})
    return list(compare_metadata(context, metadata))


@BACKENDS
async def test_migrated_schema_matches_the_store_tables(database: Database) -> None:
    async with database.read() as connection:
        assert await connection.run_sync(_differences) == []
