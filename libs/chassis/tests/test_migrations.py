"""migrate() brings a database to this release's newest schema, and starts on a database a newer release
has already migrated (a canary that was aborted, a rollback) instead of failing every start. On
PostgreSQL a migration stuck behind another transaction's lock fails the start in one line instead of
stalling every query of the table behind it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text

from shopmesh_chassis import app
from shopmesh_chassis.config import DatabaseSettings, MigratedOnly, StartupFailed
from shopmesh_chassis.db import Database, ForeignKeysViolated
from shopmesh_chassis.migrations import (
    _PG_MIGRATION_LOCK,
    DatabaseRefusedAtStart,
    DatabaseUnreachableAtStart,
    ForeignSchemaAtStart,
    IndexNameTaken,
    MigrationBlocked,
    alembic_config,
    migrate,
)
from shopmesh_chassis.tables import outbox_events
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_chassis.testing.postgres import PostgresServer

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


def release(folder: Path, tables: list[str], service: str = "svc") -> Path:
    """A service's versions folder holding one revision per table, in order (a release's migrations)."""
    folder.mkdir()
    down = None
    for number, table in enumerate(tables, start=1):
        revision = f"{service}_{number:04d}"
        labels = (service,) if down is None else None
        text = REVISION.format(doc=f"create {table}", revision=revision, down=down, labels=labels, table=table)
        (folder / f"{revision}.py").write_text(text)
        down = revision
    return folder


async def tables(database: Database) -> set[str]:
    async with database.transaction() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


@pytest.fixture
def database(blank_db: Database) -> Database:
    return blank_db


@pytest.fixture
async def pg_database(postgres: PostgresServer) -> AsyncIterator[Database]:
    db = Database(postgres.create_database())
    yield db
    await db.dispose()


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


async def test_a_service_on_another_services_database_fails_the_start_naming_whose_it_is(
    database: Database, tmp_path: Path
) -> None:
    """A Secret copied from another service, a shared DATABASE_URL: the other service's revisions are not a
    newer release of this one. Taken for one, the service skipped its migrations and started "healthy" with
    none of its tables (every call failing), beside the other's outbox it would relay."""
    await migrate(database, release(tmp_path / "orders", ["orders"], service="orders"))
    with pytest.raises(ForeignSchemaAtStart) as refused:
        await migrate(database, release(tmp_path / "catalog", ["products"], service="catalog"))
    message = str(refused.value)
    assert "holds the orders service's schema (revisions orders_0001), not catalog's" in message, message
    assert database.address in message, message
    assert "products" not in await tables(database), "nothing of the catalog's was made in the orders' database"


def sqlite_settings(tmp_path: Path, *, migrate_only: bool) -> DatabaseSettings:
    return DatabaseSettings(service_name="svc", database_url=f"sqlite:///{tmp_path}/svc.db", migrate_only=migrate_only)


async def test_migrate_only_in_the_loaded_settings_stops_after_migrating_without_the_variable_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings the service loaded are the one source of MIGRATE_ONLY: settings made otherwise than from
    the environment (a test's, a launcher's) are obeyed, though the variable is not set."""
    monkeypatch.delenv("MIGRATE_ONLY", raising=False)
    database = Database.from_settings(sqlite_settings(tmp_path, migrate_only=True))
    try:
        with pytest.raises(MigratedOnly):
            await migrate(database, release(tmp_path / "v1", ["widgets"]))
        assert "widgets" in await tables(database), "migrated before it stopped"
    finally:
        await database.dispose()


async def test_a_migrate_only_variable_the_loaded_settings_say_false_to_is_not_read_behind_their_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATE_ONLY", "true")
    database = Database.from_settings(sqlite_settings(tmp_path, migrate_only=False))
    try:
        await migrate(database, release(tmp_path / "v1", ["widgets"]))  # returns: the service goes on to serve
        assert "widgets" in await tables(database)
    finally:
        await database.dispose()


ORDERS_WITH_LINES = '''"""orders and their lines, deleted with them"""

import sqlalchemy as sa
from alembic import op

revision = "svc_0001"
down_revision = None
branch_labels = ("svc",)
depends_on = None


def upgrade() -> None:
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))
    op.create_table(
        "lines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    )
'''

ORDERS_CHANGE = '''"""orders: {doc}"""

import sqlalchemy as sa
from alembic import op

revision = "svc_0002"
down_revision = "svc_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}
'''


async def _orders_with_lines(database: Database, tmp_path: Path) -> Path:
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "svc_0001.py").write_text(ORDERS_WITH_LINES)
    await migrate(database, versions)
    async with database.transaction() as connection:
        await connection.execute(text("INSERT INTO orders (id, note) VALUES (1, 'n')"))
        await connection.execute(text("INSERT INTO lines (id, order_id) VALUES (10, 1), (11, 1)"))
    return versions


async def _count(database: Database, table: str) -> int:
    async with database.read() as connection:
        return int(await connection.scalar(text(f"SELECT count(*) FROM {table}")))


async def test_a_batch_rebuild_of_a_referenced_table_on_sqlite_keeps_the_rows_referencing_it(tmp_path: Path) -> None:
    """Batch mode (how a migration drops a column on SQLite, docs/chassis.md) copies the table and drops the
    old one: with foreign keys enforced, as on every connection of the service, that DROP TABLE deleted every
    order first, and ON DELETE CASCADE every line with it."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        versions = await _orders_with_lines(database, tmp_path)
        body = '    with op.batch_alter_table("orders") as batch:\n        batch.drop_column("note")'
        (versions / "svc_0002.py").write_text(ORDERS_CHANGE.format(doc="no note", body=body))
        await migrate(database, versions)
        assert (await _count(database, "orders"), await _count(database, "lines")) == (1, 2)
        async with database.transaction() as connection:
            await connection.execute(text("DELETE FROM orders"))
        assert await _count(database, "lines") == 0, "foreign keys enforced again after the migration"
    finally:
        await database.dispose()


async def test_a_sqlite_migration_that_leaves_a_row_referencing_nothing_is_rolled_back(tmp_path: Path) -> None:
    """Foreign keys are not enforced while the migrations run on SQLite: they are checked before the commit."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        versions = await _orders_with_lines(database, tmp_path)
        body = '    op.execute("UPDATE orders SET note = \'m\'")\n    op.execute("DELETE FROM orders")'
        (versions / "svc_0002.py").write_text(ORDERS_CHANGE.format(doc="gone", body=body))
        with pytest.raises(ForeignKeysViolated, match=r"2 row\(s\) .* in lines \(referencing orders\)"):
            await migrate(database, versions)
        async with database.read() as connection:
            assert await connection.scalar(text("SELECT note FROM orders")) == "n", "the migration rolled back"
        assert await _count(database, "lines") == 2
    finally:
        await database.dispose()


async def test_a_row_orphaned_before_the_migrations_fails_no_start_on_sqlite(tmp_path: Path) -> None:
    """The check before the commit judges what the migrations did: a line whose order was deleted with foreign
    keys off (by the sqlite3 shell, which has them off by default) must not fail every later start."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        versions = await _orders_with_lines(database, tmp_path)
        with sqlite3.connect(tmp_path / "svc.db") as shell:  # foreign keys off, as in the sqlite3 shell
            shell.execute("DELETE FROM orders")
        await migrate(database, versions)  # nothing to migrate: a start
        (versions / "svc_0002.py").write_text(ORDERS_CHANGE.format(doc="a note", body='    op.execute("SELECT 1")'))
        await migrate(database, versions)
        assert await _count(database, "lines") == 2
    finally:
        await database.dispose()


async def test_a_sqlite_migration_that_orphans_rows_names_only_those_not_the_rows_orphaned_before(
    tmp_path: Path,
) -> None:
    """An orphan left before (a line whose order was never there, written with foreign keys off) is not the
    migration's doing: the error named it with the two lines the migration orphaned, as every violation of the
    same (table, referenced table) was taken for new, and sent whoever fixed the migration after a third row."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        versions = await _orders_with_lines(database, tmp_path)
        with sqlite3.connect(tmp_path / "svc.db") as shell:  # foreign keys off, as in the sqlite3 shell
            shell.execute("INSERT INTO lines (id, order_id) VALUES (20, 99)")
        (versions / "svc_0002.py").write_text(
            ORDERS_CHANGE.format(doc="gone", body='    op.execute("DELETE FROM orders")')
        )
        with pytest.raises(ForeignKeysViolated, match=r"^2 row\(s\) ") as caught:
            await migrate(database, versions)
        assert sorted((table, rowid, parent) for table, rowid, parent, _key in caught.value.violations) == [
            ("lines", 10, "orders"),
            ("lines", 11, "orders"),
        ]
    finally:
        await database.dispose()


async def test_a_row_orphaned_before_is_still_known_as_old_after_a_batch_rebuild_renumbers_its_table(
    tmp_path: Path,
) -> None:
    """Batch mode copies a table without an INTEGER PRIMARY KEY with new rowids: an old orphan is known by its
    table and the key that matches nothing, not by its rowid, or every such rebuild failed the start."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        versions = await _orders_with_lines(database, tmp_path)
        with sqlite3.connect(tmp_path / "svc.db") as shell:  # foreign keys off, as in the sqlite3 shell
            shell.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, order_id INTEGER REFERENCES orders (id))")
            shell.execute("INSERT INTO tags (name, order_id) VALUES ('gift', 1), ('gone', 2), ('stale', 99)")
            shell.execute("DELETE FROM tags WHERE name = 'gone'")
        body = (
            '    with op.batch_alter_table("tags", recreate="always") as batch:\n'
            '        batch.add_column(sa.Column("n", sa.Text))'
        )
        (versions / "svc_0002.py").write_text(ORDERS_CHANGE.format(doc="tags get a note", body=body))
        await migrate(database, versions)
        with sqlite3.connect(tmp_path / "svc.db") as shell:
            assert shell.execute("SELECT rowid FROM tags WHERE name = 'stale'").fetchone() == (2,), "renumbered"
    finally:
        await database.dispose()


ADD_COLUMN = '''"""widgets get a colour"""

import sqlalchemy as sa
from alembic import op

revision = "svc_0002"
down_revision = "svc_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("widgets", sa.Column("colour", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("widgets", "colour")
'''


async def test_a_migration_stuck_behind_a_transaction_fails_the_start_and_runs_at_the_next(
    pg_database: Database, tmp_path: Path
) -> None:
    await migrate(pg_database, release(tmp_path / "v1", ["widgets"]))
    v2 = release(tmp_path / "v2", ["widgets"])
    (v2 / "svc_0002.py").write_text(ADD_COLUMN)
    # A previous release's long transaction that read the table: ALTER TABLE waits for it, and would make
    # every later query of the table wait behind itself.
    holder = await asyncpg.connect(pg_database.url.replace("postgresql+asyncpg", "postgresql"))
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetch("SELECT * FROM widgets")
        with pytest.raises(MigrationBlocked) as blocked:
            await migrate(pg_database, v2, lock_timeout_seconds=0.2)
        [line] = str(blocked.value).splitlines()
        assert line.startswith("database migration gave up after waiting 0.2s for a lock held by another transaction")
        await transaction.rollback()
    finally:
        await holder.close()
    await migrate(pg_database, v2)
    async with pg_database.transaction() as connection:
        columns = await connection.run_sync(lambda sync: [c["name"] for c in inspect(sync).get_columns("widgets")])
        # The timeout was the migration's alone: the service's own transactions wait for locks as before.
        assert await connection.scalar(text("SHOW lock_timeout")) == "0"
    assert "colour" in columns


RECORD_LOCK_SESSION = '''"""records the settings of the session that migrates"""

from alembic import op

revision = "svc_0002"
down_revision = "svc_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE lock_session AS SELECT name, current_setting(name) AS setting,"
        " EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = {lock} AND granted"
        " AND pid = pg_backend_pid()) AS holds_lock"
        " FROM unnest(ARRAY['tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count',"
        " 'tcp_user_timeout']) AS name"
    )


def downgrade() -> None:
    op.drop_table("lock_session")
'''


async def test_the_migration_lock_session_asks_the_server_to_drop_it_within_about_a_minute_after_a_network_break(
    pg_database: Database, tmp_path: Path
) -> None:
    """A replica cut off mid-migration without a FIN or RST (its node gone, a network partition) leaves a
    session PostgreSQL keeps, the migration lock with it, for the kernel's default TCP keepalive, about two
    hours, and every other replica's start waits for that lock meanwhile. The session that takes the lock has
    the server probe it (TCP keepalives after 30 s idle, every 10 s, 3 unanswered) and give up on data left
    unacknowledged for 60 s (TCP user timeout: keepalives probe only an idle connection), as the outbox relay's
    lock session does. Read by a migration, on the session that holds the lock."""
    await migrate(pg_database, release(tmp_path / "v1", ["widgets"]))
    v2 = release(tmp_path / "v2", ["widgets"])
    (v2 / "svc_0002.py").write_text(RECORD_LOCK_SESSION.replace("{lock}", str(_PG_MIGRATION_LOCK)))
    await migrate(pg_database, v2)
    async with pg_database.read() as connection:
        rows = (await connection.execute(text("SELECT name, setting, holds_lock FROM lock_session"))).all()
    assert all(row.holds_lock for row in rows), "read on a session other than the lock's"
    assert {row.name: row.setting for row in rows} == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "60000",  # milliseconds
    }


def test_a_start_that_failed_for_now_exits_1_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        raise MigrationBlocked("database migration gave up after waiting 5s for a table lock")

    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        app.run(main)
    assert exited.value.code == 1
    assert [r.getMessage() for r in caplog.records] == ["database migration gave up after waiting 5s for a table lock"]


async def start_failure(url: str, tmp_path: Path, expected: type[StartupFailed]) -> str:
    """The one line a start on `url` fails with, as `expected`."""
    database = Database(url)
    try:
        with pytest.raises(expected) as failed:
            await migrate(database, release(tmp_path / "v1", ["widgets"]))
    finally:
        await database.dispose()
    [line] = str(failed.value).splitlines()
    return line


async def test_a_database_that_cannot_be_reached_fails_the_start_in_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    port = free_port()
    line = await start_failure(f"postgresql://shop:s3cret@127.0.0.1:{port}/shop", tmp_path, DatabaseUnreachableAtStart)
    assert line.startswith(f"cannot connect to the database at 127.0.0.1:{port} (DATABASE_URL): "), line
    assert "s3cret" not in line


@pytest.mark.parametrize(
    ("user", "name", "said"),
    [
        # Under password authentication PostgreSQL does not say whether the role exists.
        ("nosuchrole", "postgres", 'password authentication failed for user "nosuchrole"'),
        ("postgres", "nosuchdb", 'database "nosuchdb" does not exist'),
    ],
)
async def test_a_database_that_refuses_the_service_fails_the_start_in_one_line_naming_why(
    postgres: PostgresServer, tmp_path: Path, user: str, name: str, said: str
) -> None:
    # A wrong password, a role or a database not created yet: the Secret or the database is fixed, and the
    # pod's next start works. It was a traceback of some 130 lines ending in a DBAPIError.
    password = "s3cret" if user != "postgres" else None  # the superuser's own: only the database is wrong
    url = postgres.url(name, user=user, password=password, driver="postgresql")
    line = await start_failure(url, tmp_path, DatabaseRefusedAtStart)
    assert line.startswith(f"the database at 127.0.0.1:{postgres.port} refused this service (DATABASE_URL): {said}")
    assert "s3cret" not in line
    assert postgres.password not in line


async def test_a_database_with_no_connection_slot_for_the_service_fails_the_start_in_one_line(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """The same start with PostgreSQL refusing the connection for a reason of class 53 (too many connections:
    replicas starting together past the role's or the server's limit, a managed database's plan): it is one
    more "database that refuses the service" for now, and the next start may work. The refused check looks
    at classes 28 and 3D only, so this start still ends in the ~130-line traceback of a DBAPIError."""
    role = f"crowded_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url(driver="postgresql"))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 's3cret' CONNECTION LIMIT 0")
    finally:
        await admin.close()
    url = postgres.url(user=role, password="s3cret", driver="postgresql")
    line = await start_failure(url, tmp_path, StartupFailed)
    assert f'too many connections for role "{role}"' in line, line


INSERT_PROCESSED = "INSERT INTO chassis_processed_events (consumer, event_id, processed_at) VALUES ($1, $2, now())"


async def building(connection: asyncpg.Connection) -> bool:
    """Whether a concurrent index build is running (waiting, as it must, for older transactions)."""
    return bool(
        await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND pid <> pg_backend_pid()"
        )
    )


def _back_to_chassis_0001(connection: Connection, versions_dir: Path) -> None:
    config = alembic_config(versions_dir)
    config.attributes["connection"] = connection
    command.downgrade(config, "chassis_0001")


async def test_the_processed_events_index_is_built_without_stopping_consumers_or_failing_the_start(
    pg_database: Database, tmp_path: Path
) -> None:
    """chassis_0002 indexes a table that grew for months while the previous release's consumers insert into
    it: a plain CREATE INDEX held their inserts for the whole build, and failed the start (lock timeout)
    behind any transaction that had written to the table."""
    versions = release(tmp_path / "v1", ["widgets"])
    await migrate(pg_database, versions)
    async with pg_database.dedicated_connection() as connection:
        await connection.run_sync(_back_to_chassis_0001, versions)
        await connection.commit()
    dsn = pg_database.url.replace("postgresql+asyncpg", "postgresql")
    consumer, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        # An older replica's consumer in the middle of applying an event.
        applying = consumer.transaction()
        await applying.start()
        await consumer.execute(INSERT_PROCESSED, "old", "e1")
        migrating = asyncio.create_task(migrate(pg_database, versions, lock_timeout_seconds=0.2))
        await eventually(lambda: migrating.done() or building(other), "the index build under way", timeout=15)
        # Another consumer's insert goes through while the build waits for the first one's transaction.
        await asyncio.wait_for(other.execute(INSERT_PROCESSED, "old", "e2"), 5)
        await applying.commit()
        await asyncio.wait_for(migrating, 30)
        indexes = await other.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'chassis_processed_events'")
        assert "ix_chassis_processed_events_age" in {row["indexname"] for row in indexes}
    finally:
        await consumer.close()
        await other.close()


@pytest.mark.parametrize("folder", ["My Projects", "100%"])
async def test_a_service_installed_under_a_path_with_a_space_or_a_percent_sign_is_migrated(
    tmp_path: Path, folder: str
) -> None:
    """The versions folder is where the service's package lies (a checkout under "~/My Projects", an
    editable install). Alembic's `version_locations` is split on spaces (`path_separator = space`) and
    interpolated as ConfigParser text: a space silently dropped the service's migrations (it started with
    none of its tables, and every call failed), a '%' stopped the start with "invalid interpolation syntax"."""
    database = Database(f"sqlite:///{tmp_path}/svc.db")
    try:
        await migrate(database, release(tmp_path / folder, ["widgets"]))
        assert {"widgets", outbox_events.name} <= await tables(database)
    finally:
        await database.dispose()


INDEX_WIDGETS = '''"""widgets indexed by id, concurrently"""

from shopmesh_chassis.migrations import create_index_concurrently

revision = "svc_0002"
down_revision = "svc_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently({call})
'''
WIDGETS_BY_ID = '"ix_widgets_id", "widgets", ["id"]'


@asynccontextmanager
async def widgets_migrated(database: Database, tmp_path: Path) -> AsyncIterator[tuple[Path, asyncpg.Connection]]:
    """A service's release of one table, `widgets`, migrated on `database` (PostgreSQL): its versions folder,
    and a session of its own on the database, as another pod's or a person's."""
    versions = release(tmp_path / "v1", ["widgets"])
    await migrate(database, versions)
    other = await asyncpg.connect(database.url.replace("postgresql+asyncpg", "postgresql"))
    try:
        yield versions, other
    finally:
        await other.close()


async def leave_an_invalid_index(connection: asyncpg.Connection, table: str) -> None:
    """A build of ix_widgets_id that fails half-way (here: on a duplicate) and leaves its INVALID index."""
    await connection.execute(f"INSERT INTO {table} (id) VALUES (1), (3)")
    with pytest.raises(asyncpg.UniqueViolationError):
        await connection.execute(f"CREATE UNIQUE INDEX CONCURRENTLY ix_widgets_id ON {table} ((id % 2))")


async def migrate_with_the_widgets_index(database: Database, versions: Path, call: str = WIDGETS_BY_ID) -> None:
    (versions / "svc_0002.py").write_text(INDEX_WIDGETS.format(call=call))
    await migrate(database, versions)


async def test_a_rerun_after_a_failed_concurrent_build_replaces_the_invalid_index_it_left(
    pg_database: Database, tmp_path: Path
) -> None:
    """A CREATE INDEX CONCURRENTLY that fails (the pod killed, a statement cancelled) leaves an INVALID index of
    the name behind, which PostgreSQL never uses for a query and keeps updating on every write. The build says
    IF NOT EXISTS (for squawk): without the DROP before it, the rerun would skip the build and keep that
    INVALID index for good, the migration recorded as done."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        await leave_an_invalid_index(other, "widgets")
        await migrate_with_the_widgets_index(pg_database, versions)
        index = await other.fetchrow(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i"
            " WHERE i.indexrelid = 'ix_widgets_id'::regclass"
        )
        assert index is not None
        assert index["indisvalid"], "the failed build's INVALID index was kept"
        assert index["definition"].endswith("USING btree (id)"), index["definition"]


async def test_a_rerun_after_a_start_killed_once_the_concurrent_build_finished_keeps_the_valid_index(
    pg_database: Database, tmp_path: Path
) -> None:
    """A start killed after the build finished but before Alembic recorded the migration (the startup probe)
    left a VALID index: dropping it built it again from zero, minutes on a big table, and a start killed again
    mid-build never got further."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        # The interrupted start's build, finished: the index is valid, the migration not recorded.
        await other.execute("CREATE INDEX CONCURRENTLY ix_widgets_id ON widgets (id)")
        built = await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid")
        await migrate_with_the_widgets_index(pg_database, versions)
        assert await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid") == built, "the valid index was rebuilt"
        assert await other.fetchval("SELECT version_num FROM alembic_version WHERE version_num LIKE 'svc_%'") == (
            "svc_0002"
        )


async def test_an_invalid_index_in_the_schema_the_database_puts_the_tables_in_is_replaced(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """The chassis sets no schema: the tables go to the first schema of the role's or database's search_path.
    An INVALID index there is the one the build's IF NOT EXISTS would keep, so it is the one dropped; an index
    of the name in another schema (public, another application's) is left alone."""
    url = postgres.create_database()
    name = postgres.created[-1]
    admin = await asyncpg.connect(postgres.url(name, driver="postgresql"))
    try:
        await admin.execute("CREATE SCHEMA shop")
        # For the sessions that start after it: the service's, made below.
        await admin.execute(f"ALTER DATABASE {name} SET search_path = shop")
        await admin.execute("CREATE TABLE public.widgets (id integer)")
        await admin.execute("CREATE INDEX ix_widgets_id ON public.widgets (id)")
        elsewhere = await admin.fetchval("SELECT 'public.ix_widgets_id'::regclass::oid")
        database = Database(url)
        try:
            async with widgets_migrated(database, tmp_path) as (versions, other):
                await leave_an_invalid_index(other, "shop.widgets")
                await migrate_with_the_widgets_index(database, versions)
        finally:
            await database.dispose()
        assert await admin.fetchval(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = 'shop.ix_widgets_id'::regclass"
        ), "the failed build's INVALID index was kept"
        assert await admin.fetchval("SELECT 'public.ix_widgets_id'::regclass::oid") == elsewhere
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "leftover",
    [
        "CREATE INDEX ix_widgets_id ON widgets (colour)",
        "CREATE INDEX ix_widgets_id ON widgets (id, colour)",
        "CREATE UNIQUE INDEX ix_widgets_id ON widgets (id)",
        "CREATE INDEX ix_widgets_id ON widgets (id) WHERE colour IS NOT NULL",
    ],
    ids=["other-column", "more-columns", "unique", "partial"],
)
async def test_a_valid_index_of_the_name_built_otherwise_is_replaced_by_the_one_the_migration_wants(
    pg_database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture, leftover: str
) -> None:
    """A valid index of the name is kept only when it is the one the migration builds. One of the name built
    otherwise (a hand-made index, an earlier draft of the migration run on the database) was kept as if it
    were: the migration recorded as done, and its queries left without the index they were written for (or a
    unique one refusing rows the service means to write)."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        await other.execute("ALTER TABLE widgets ADD COLUMN colour text")
        await other.execute(leftover)
        left = await other.fetchval("SELECT pg_get_indexdef('ix_widgets_id'::regclass)")
        with caplog.at_level(logging.WARNING, logger="shopmesh.migrations"):
            await migrate_with_the_widgets_index(pg_database, versions)
        index = await other.fetchrow(
            "SELECT i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i"
            " WHERE i.indexrelid = 'ix_widgets_id'::regclass"
        )
        assert index is not None
        assert index["indisvalid"], index["definition"]
        assert not index["indisunique"], index["definition"]
        assert index["definition"].endswith("USING btree (id)"), index["definition"]
    (record,) = [r for r in caplog.records if r.name == "shopmesh.migrations" and r.levelno == logging.WARNING]
    message = record.getMessage()
    assert left in message, "the leftover's definition: " + message
    assert "USING btree (id)" in message, "the wanted definition: " + message


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
async def test_an_index_of_the_name_on_another_table_fails_the_migration_naming_both_tables(
    pg_database: Database, tmp_path: Path, valid: bool
) -> None:
    """An index name is schema-wide in PostgreSQL: one of the wanted name on another table (same columns) was
    taken for the wanted one, the build's IF NOT EXISTS then did nothing, and the migration was recorded with
    the intended table left unindexed (or, the other's INVALID, dropped another table's index)."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        await other.execute("CREATE TABLE gadgets (id integer)")
        if valid:
            await other.execute("CREATE INDEX ix_widgets_id ON gadgets (id)")
        else:
            await leave_an_invalid_index(other, "gadgets")
        elsewhere = await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid")
        with pytest.raises(IndexNameTaken) as taken:
            await migrate_with_the_widgets_index(pg_database, versions)
        message = str(taken.value)
        assert "of table widgets" in message, message
        assert "on table gadgets" in message, message
        assert await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid") == elsewhere, "the other's was dropped"
        assert await other.fetchval("SELECT version_num FROM alembic_version WHERE version_num LIKE 'svc_%'") == (
            "svc_0001"
        ), "the migration was recorded with widgets unindexed"


@pytest.mark.parametrize("kind", ["TABLE", "VIEW", "SEQUENCE"])
async def test_a_table_view_or_sequence_of_the_index_name_fails_the_migration(
    pg_database: Database, tmp_path: Path, kind: str
) -> None:
    """A relation name is schema-wide too: a table, view or sequence of the wanted index's name made the
    build's IF NOT EXISTS skip with a NOTICE, and the migration was recorded with the table unindexed."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        body = {"TABLE": "(id integer)", "VIEW": "AS SELECT 1 AS id", "SEQUENCE": ""}[kind]
        await other.execute(f"CREATE {kind} ix_widgets_id {body}")
        with pytest.raises(IndexNameTaken) as taken:
            await migrate_with_the_widgets_index(pg_database, versions)
        assert f"a {kind.lower()} of that name" in str(taken.value), str(taken.value)
        assert await other.fetchval("SELECT version_num FROM alembic_version WHERE version_num LIKE 'svc_%'") == (
            "svc_0001"
        ), "the migration was recorded with widgets unindexed"


async def test_a_valid_index_of_the_name_is_kept_with_a_warning_when_the_role_may_not_create_temporary_tables(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed PostgreSQL is often hardened with REVOKE TEMP ON DATABASE ... FROM PUBLIC: the comparison's
    temporary table is then refused, and every start that found a valid index of the name failed where it used
    to keep it. It keeps it, saying in one warning that its definition could not be compared, and why."""
    postgres.create_database()
    name = postgres.created[-1]
    role = f"notemp_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url(name, driver="postgresql"))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 's3cret'")
        await admin.execute(f"REVOKE TEMP ON DATABASE {name} FROM PUBLIC")
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    finally:
        await admin.close()
    database = Database(postgres.url(name, user=role, password="s3cret"))
    try:
        async with widgets_migrated(database, tmp_path) as (versions, other):
            await other.execute("CREATE INDEX ix_widgets_id ON widgets (id)")
            built = await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid")
            with caplog.at_level(logging.WARNING, logger="shopmesh.migrations"):
                await migrate_with_the_widgets_index(database, versions)
            assert await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid") == built, "the valid index was rebuilt"
    finally:
        await database.dispose()
    (record,) = [r for r in caplog.records if r.name == "shopmesh.migrations" and r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "could not be compared" in message, message
    assert "permission denied to create temporary tables" in message, message


async def test_a_valid_partial_index_of_the_name_as_the_migration_builds_it_is_kept(
    pg_database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL stores a partial index's condition rewritten (`colour = 'red'` reads back as
    `(colour = 'red'::text)`): the index a killed start built is still the one wanted, and kept."""
    async with widgets_migrated(pg_database, tmp_path) as (versions, other):
        await other.execute("ALTER TABLE widgets ADD COLUMN colour text")
        await other.execute("CREATE INDEX ix_widgets_id ON widgets (id) WHERE colour = 'red'")
        built = await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid")
        with caplog.at_level(logging.WARNING, logger="shopmesh.migrations"):
            await migrate_with_the_widgets_index(pg_database, versions, WIDGETS_BY_ID + ", where=\"colour = 'red'\"")
        assert await other.fetchval("SELECT 'ix_widgets_id'::regclass::oid") == built, "the wanted index was rebuilt"
    assert not [r for r in caplog.records if r.name == "shopmesh.migrations" and r.levelno >= logging.WARNING]
