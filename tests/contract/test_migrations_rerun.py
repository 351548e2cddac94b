"""Every migration survives a start that ends in its autocommit block: the next start finishes it.

On PostgreSQL a migration that builds an index concurrently or backfills in batches runs those steps in an
`autocommit_block()`, which commits what the migration ran before it, while the migration is recorded as
done only at its end. A start that ends in the block (the pod killed by its startup probe while the build
waits for an old snapshot, a cancelled statement, a lock timeout) leaves those first steps applied and the
revision not recorded: the next start runs the whole migration again, and a step that fails on what it made
the first time ("column already exists") fails every start after, the service crash-looping.

Here each migration of each service is cut off at its first autocommit statement (an exception raised as
the driver is about to send it), then the service starts again, as its restarted pod would; squawk's
prefer-robust-stmts (test_migrations_safe.py) refuses the same mistake from the SQL alone.

Alone: `.venv/bin/pytest tests/contract/test_migrations_rerun.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import alembic_config, migrate
from shopmesh_chassis.testing.postgres import PostgresServer

from .migration_sql import SERVICE_VERSIONS


class StartEnded(Exception):
    """The start cut off as it was about to run an autocommit step."""


def _recorded(statement: str) -> bool:
    # Alembic's record of a migration just run, in the transaction that ends it.
    return statement.lstrip().startswith(("INSERT INTO alembic_version", "UPDATE alembic_version"))


async def _start(database: Database, versions: Path) -> list[str]:
    """migrate() as a pod's start runs it, ended at the first autocommit statement of a migration after the
    first one it records (the one a previous cut start left half-done runs through this time)."""
    seen: list[str] = []
    armed = False

    def before_execute(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal armed
        if _recorded(statement):
            armed = True
        elif armed and connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            seen.append(statement)
            raise StartEnded(statement)

    event.listen(database.sync_engine, "before_cursor_execute", before_execute)
    try:
        await migrate(database, versions)
    except StartEnded:
        pass
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", before_execute)
    return seen


@pytest.mark.parametrize("versions", SERVICE_VERSIONS, ids=[path.parents[3].name for path in SERVICE_VERSIONS])
async def test_a_start_ended_in_a_migrations_autocommit_block_is_finished_by_the_next(
    postgres: PostgresServer, versions: Path
) -> None:
    database = Database(postgres.create_database())
    try:
        # The first start: cut at the first autocommit step after the first migration recorded (chassis_0001
        # creates alembic_version, and has none); each next start finishes that migration and is cut at the
        # next one's. Every start that fails must fail by the cut, never on what an earlier start left.
        cut_at = await _start(database, versions)
        starts = 1
        while cut_at:
            cut_at = await _start(database, versions)
            starts += 1
            assert starts < 100, "the starts never got past the autocommit steps"
        # The last start ran to the end: every migration recorded.

        def current(connection: Connection) -> set[str]:
            return set(MigrationContext.configure(connection).get_current_heads())

        async with database.read() as connection:
            assert await connection.run_sync(current) == set(
                ScriptDirectory.from_config(alembic_config(versions)).get_heads()
            )
        assert starts > 1, "no migration of the service has an autocommit step: nothing was cut"
    finally:
        await database.dispose()
