"""migrate() brings a database to this release's newest schema, and starts on a database a newer release
has already migrated (a canary that was aborted, a rollback) instead of failing every start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import inspect

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.tables import outbox_events

REVISION = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = None


def upgrade() -> None:
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("{table}")
'''


def release(folder: Path, tables: list[str]) -> Path:
    """A service's versions folder holding one revision per table, in order (a release's migrations)."""
    folder.mkdir()
    down = None
    for number, table in enumerate(tables, start=1):
        revision = f"svc_{number:04d}"
        labels = ("svc",) if down is None else None
        text = REVISION.format(doc=f"create {table}", revision=revision, down=down, labels=labels, table=table)
        (folder / f"{revision}.py").write_text(text)
        down = revision
    return folder


async def tables(database: Database) -> set[str]:
    async with database.transaction() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


@pytest.fixture
async def database(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path}/svc.db")


async def test_migrate_brings_the_database_to_the_newest_schema_of_the_release(
    database: Database, tmp_path: Path
) -> None:
    await migrate(database, release(tmp_path / "v1", ["widgets"]))
    assert {"widgets", outbox_events.name} <= await tables(database), "the service's and the chassis' own"
    await migrate(database, release(tmp_path / "v2", ["widgets", "gadgets"]))
    assert {"widgets", "gadgets"} <= await tables(database)


async def test_an_older_release_starts_on_a_schema_a_newer_one_migrated(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    newer, older = release(tmp_path / "v2", ["widgets", "gadgets"]), release(tmp_path / "v1", ["widgets"])
    await migrate(database, newer)
    with caplog.at_level(logging.WARNING, logger="shopmesh.migrations"):
        await migrate(database, older)  # alembic alone: "Can't locate revision identified by 'svc_0002'"
    (record,) = [r for r in caplog.records if r.name == "shopmesh.migrations"]
    assert "newer than this release" in record.getMessage()
    assert record.unknown_revisions == ["svc_0002"]  # type: ignore[attr-defined]
    assert {"widgets", "gadgets"} <= await tables(database), "the newer schema stays as it is"
    await migrate(database, newer)  # and the newer release finds nothing left to do
    assert {"widgets", "gadgets"} <= await tables(database)
