"""Every migration is safe for a rolling update: squawk, the PostgreSQL migration linter, reads the SQL each
Alembic migration (the chassis' and every service's) runs on PostgreSQL and refuses what would break the
previous release's pods or stall them behind a lock: a dropped, renamed or retyped column, a NOT NULL column
without a default, an index built without CONCURRENTLY on an existing table, a statement waiting for a lock
with no lock_timeout... (docs/chassis.md, "Migrations are expand-only"; the rules left out, with their
reasons: .squawk.toml). A deliberately unsafe migration is refused by the same check, naming the rule.

Alone: `.venv/bin/pytest tests/contract/test_migrations_safe.py`."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import CHASSIS_VERSIONS
from shopmesh_chassis.testing.postgres import PostgresServer

from .migration_sql import (
    SERVICE_VERSIONS,
    MigrationSql,
    Statement,
    captured_sql,
    display,
    migration_files,
    squawk_binary,
    squawk_findings,
)

MIGRATIONS = [path for folder in (CHASSIS_VERSIONS, *SERVICE_VERSIONS) for path in migration_files(folder)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def released(postgres: PostgresServer) -> AsyncIterator[dict[Path, MigrationSql]]:
    """Every service's migrations, each service on a database of its own (the chassis' run in each: kept once)."""
    found: dict[Path, MigrationSql] = {}
    for versions in SERVICE_VERSIONS:
        database = Database(postgres.create_database())
        try:
            for path, sql in (await captured_sql(database, versions)).items():
                found.setdefault(path, sql)
        finally:
            await database.dispose()
    yield found


def test_every_migration_is_run_and_checked(released: dict[Path, MigrationSql]) -> None:
    assert len(SERVICE_VERSIONS) == 7, SERVICE_VERSIONS  # every service but the gateway owns data
    assert sorted(released) == sorted(MIGRATIONS)
    # Each ran something on PostgreSQL, under migrate()'s lock_timeout: a capture that lost track of a file
    # (no record of it found in alembic_version) would leave squawk nothing to refuse.
    assert [display(p) for p, sql in released.items() if not sql.statements] == []
    assert any(line.startswith("SET lock_timeout") for line in released[MIGRATIONS[0]].session)


@pytest.mark.parametrize("migration", MIGRATIONS, ids=[path.stem for path in MIGRATIONS])
def test_migration_is_safe_for_a_rolling_update(released: dict[Path, MigrationSql], migration: Path) -> None:
    sql = released[migration]
    findings = squawk_findings(sql)
    assert not findings, (
        f"squawk refuses {display(migration)} (a migration that breaks or stalls the previous release's pods "
        f"during a rolling update; docs/chassis.md, 'Migrations are expand-only'):\n\n{findings}\n\n"
        f"The SQL it ran on PostgreSQL:\n{sql.render()}"
    )


INITIAL = '''"""widgets: a new table, with its index."""

import sqlalchemy as sa
from alembic import op

revision = "widgets_0001"
down_revision = None
branch_labels = ("widgets",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "widgets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_widgets_created_at", "widgets", ["created_at"])
'''

CHANGE = '''"""widgets: {doc}."""

import sqlalchemy as sa
from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "widgets_0002"
down_revision = "widgets_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}
'''

UNSAFE = {
    # What the previous release reads, gone while its pods still run.
    "drop-column": ('op.drop_column("widgets", "name")', "ban-drop-column"),
    # Holds every write to an existing (busy) table for the whole build.
    "plain-index": ('op.create_index("ix_widgets_name", "widgets", ["name"])', "require-concurrent-index-creation"),
    # The previous release's INSERTs do not name the column: every one of them fails.
    "not-null-without-default": (
        'op.add_column("widgets", sa.Column("colour", sa.Text, nullable=False))',
        "adding-required-field",
    ),
    # The same drop through op.run_async (Alembic's way to await in a migration on an async engine, as ours):
    # sent from a greenlet whose call stack holds no migration file.
    "drop-column-in-run-async": (
        "async def drop(connection):\n"
        '    await connection.execute(sa.text("ALTER TABLE widgets DROP COLUMN name"))\n'
        "op.run_async(drop)",
        "ban-drop-column",
    ),
    # The index build's autocommit block commits the column first; a start that ends during the build (its pod
    # killed while the build waits for an old snapshot) leaves the column without the migration recorded, and
    # every later start fails on "column already exists": the service crash-loops.
    "add-column-before-an-autocommit-block": (
        'op.add_column("widgets", sa.Column("colour", sa.Text, nullable=True))\n'
        'create_index_concurrently("ix_widgets_colour", "widgets", ["colour"])',
        "prefer-robust-stmts",
    ),
}


def versions_with(folder: Path, doc: str, body: str) -> Path:
    folder.mkdir()
    (folder / "widgets_0001_initial.py").write_text(INITIAL)
    (folder / "widgets_0002_change.py").write_text(CHANGE.format(doc=doc, body=textwrap.indent(body, "    ")))
    return folder


async def checked(postgres: PostgresServer, versions: Path) -> dict[str, str]:
    """squawk's findings on each of `versions`' migrations, run as the real ones are; by file name."""
    database = Database(postgres.create_database())
    try:
        captured = await captured_sql(database, versions)
    finally:
        await database.dispose()
    return {path.name: squawk_findings(sql) for path, sql in captured.items() if path.parent == versions}


@pytest.mark.parametrize(("case", "rule"), [(case, rule) for case, (_, rule) in UNSAFE.items()], ids=list(UNSAFE))
async def test_an_unsafe_migration_is_refused_naming_its_file_and_the_rule(
    postgres: PostgresServer, tmp_path: Path, case: str, rule: str
) -> None:
    versions = versions_with(tmp_path / "versions", case, UNSAFE[case][0])
    findings = await checked(postgres, versions)
    # The new table's CREATE TABLE and CREATE INDEX block nobody: nobody reads the table yet.
    assert findings["widgets_0001_initial.py"] == ""
    report = findings["widgets_0002_change.py"]
    assert rule in report, report
    assert "widgets_0002_change.py" in report, report


async def test_the_safe_way_to_make_each_change_passes(postgres: PostgresServer, tmp_path: Path) -> None:
    """The expand-only way to do what the unsafe migrations did: a nullable column, added only if a start that
    ended in the index build after it has not added it already, a concurrent index (the drop waits a release:
    the previous one still reads the column). The check refuses changes, not all."""
    body = (
        'op.add_column("widgets", sa.Column("colour", sa.Text, nullable=True), if_not_exists=True)\n'
        'create_index_concurrently("ix_widgets_name", "widgets", ["name"])'
    )
    assert await checked(postgres, versions_with(tmp_path / "versions", "expand", body)) == {
        "widgets_0001_initial.py": "",
        "widgets_0002_change.py": "",
    }


async def test_the_next_releases_drop_passes_silenced_for_its_one_statement(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A contracting change's second release drops what the first stopped reading, as docs/chassis.md says:
    a `-- squawk-ignore ban-drop-column` comment in the SQL the migration runs reaches squawk with the
    statement, and silences that rule for that statement only."""
    silenced = 'op.execute("-- squawk-ignore ban-drop-column\\nALTER TABLE widgets DROP COLUMN IF EXISTS name")'
    findings = await checked(postgres, versions_with(tmp_path / "versions", "drop name", silenced))
    assert findings["widgets_0002_change.py"] == ""
    # For that statement only: another drop in the same migration, without its own comment, is refused.
    unsilenced = 'op.execute("ALTER TABLE widgets DROP COLUMN IF EXISTS created_at")'
    findings = await checked(postgres, versions_with(tmp_path / "both", "drop both", f"{silenced}\n{unsilenced}"))
    report = findings["widgets_0002_change.py"]
    assert "ban-drop-column" in report, report
    assert "DROP COLUMN IF EXISTS created_at" in report, report
    assert "DROP COLUMN IF EXISTS name" not in report, report


def test_a_migration_is_checked_under_the_lock_timeout_migrate_sets(tmp_path: Path) -> None:
    """require-lock-timeout is not left out: each migration is read after the `SET lock_timeout` migrate() ran
    on its connection, and without it the same ALTER TABLE is refused (a migrate() that stopped bounding its
    wait for a table lock would fail every migration's check)."""
    alter = [Statement("ALTER TABLE widgets ADD COLUMN colour TEXT", in_transaction=True)]
    migration = tmp_path / "widgets_0002_colour.py"
    assert squawk_findings(MigrationSql(migration, ["SET lock_timeout = 5000;"], alter)) == ""
    report = squawk_findings(MigrationSql(migration, [], alter))
    assert "require-lock-timeout" in report, report
    assert "widgets_0002_colour.py" in report, report


def test_a_missing_squawk_fails_the_run_naming_make_setup(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"squawk is missing .*run `make setup`"):
        squawk_binary(tmp_path)
