"""Alembic for every service, written once.

The chassis owns the Alembic environment (`env.py`) and the migrations of its own tables
(idempotency records, the outbox, processed events) as the `chassis` branch. A service adds only its
`versions/` folder as a second branch; `migrate()` upgrades both to their heads at startup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from shopmesh_chassis.config import MigratedOnly, StartupFailed
from shopmesh_chassis.db import Database, try_session_lock
from shopmesh_chassis.db_errors import DatabaseUnreachable, server_said

log = logging.getLogger("shopmesh.migrations")

HERE = Path(__file__).resolve().parent
CHASSIS_VERSIONS = HERE / "versions"
CHASSIS_BRANCH = "chassis"
# Any constant works; it only has to be the same for every replica of every service.
_PG_MIGRATION_LOCK = 0x5350_4D49  # "SHMI"
# How long a migration's statement waits for a table lock on PostgreSQL. ALTER TABLE queues behind a long
# transaction, and every query of the table queues behind it: the previous release's pods would stop
# serving it. Better to fail this pod's start (it is restarted and tries again) than to stall them.
MIGRATION_LOCK_TIMEOUT_SECONDS = 5.0
_LOCK_NOT_AVAILABLE = "55P03"
_INSUFFICIENT_PRIVILEGE = "42501"
_LOCK_POLL_SECONDS = 0.5


class MigrationBlocked(StartupFailed):
    """A migration gave up waiting for a lock another transaction holds. Those before it stay applied; it
    runs again at the next start (a migration whose steps commit on their own must be safe to rerun)."""


class DatabaseUnreachableAtStart(StartupFailed):
    """The migrations could not connect to the database (not up yet, away, a network policy): nothing to
    serve without it; the orchestrator restarts the pod, and its next start tries again."""


class DatabaseRefusedAtStart(StartupFailed):
    """The database answered but refused this service: a wrong password, a role or a database that does
    not exist (yet: the next start tries again, after a Secret's rotation or the database's creation)."""


class ForeignSchemaAtStart(StartupFailed):
    """The database holds another service's schema (a Secret copied from another service, a shared
    DATABASE_URL): migrating it would mix two services' tables, and running on it without migrating would
    serve with none of this service's tables (and relay the other's outbox). Nothing to retry until the URL
    is fixed, but a start that fails, as for a wrong password, says what to fix."""


class IndexNameTaken(StartupFailed):
    """A migration's index is named as an index of another table: an index name is schema-wide in PostgreSQL,
    so the wanted one cannot be built beside it, and that other table's index is no one's to drop unasked.
    Nothing to retry until one of the two is renamed (or the other dropped, if a leftover)."""


# PostgreSQL's classes for a refused login (28: invalid authorization, a wrong password) and a database that
# does not exist (3D): a connection's own failures, never a query's.
_REFUSED_SQLSTATE_CLASSES = ("28", "3D")
# A migration's statement failing for a server going away under it: shutting down (with class 08, a connection
# exception). A server starting up or out of connection slots (57P03, 53300) refuses only a connection, which is
# DatabaseUnreachable whatever its SQLSTATE. Not a full disk or a read-only replica: a migration's own statement
# failing for those keeps its traceback, which says which migration.
_CONNECTION_LOST_SQLSTATES = frozenset({"57P01", "57P02"})


def _as_option(path: Path) -> str:
    return str(path).replace("%", "%%")


def alembic_config(versions_dir: Path, metadata: MetaData | None = None) -> Config:
    config = Config()
    # Options are ConfigParser text, and the folders are where the packages lie ("~/My Projects", "100%"):
    # a '%' is interpolation syntax unless doubled, and the list is split on its separator, so one no
    # folder name holds (a space did: the service's migrations were silently left out).
    config.set_main_option("script_location", _as_option(HERE))
    config.set_main_option("version_locations", "\n".join(map(_as_option, (CHASSIS_VERSIONS, versions_dir))))
    config.set_main_option("path_separator", "newline")
    config.attributes["target_metadata"] = metadata
    return config


def unknown_revisions(connection: Connection, config: Config) -> set[str]:
    """The database's revisions that this release's migrations do not contain: a newer release (a canary,
    or the release a rollback came from) migrated it, or another service did (see `branch_of`)."""
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    return set(MigrationContext.configure(connection).get_current_heads()) - known


def _branches(config: Config) -> list[str]:
    """The branch labels of this release's migrations: `chassis` and the service's own (`orders`)."""
    scripts = ScriptDirectory.from_config(config).walk_revisions()
    return sorted({label for script in scripts for label in script.branch_labels})


def branch_of(revision: str) -> str:
    """The branch a revision belongs to by its id, known or not: revisions are named `<branch label>_<NNNN>`
    (chassis_0004, orders_0002); a revision named otherwise is no branch's."""
    branch, _, number = revision.rpartition("_")
    return branch if branch and number.isdigit() else revision


# The index named so in the table's schema: where CREATE INDEX puts it and its IF NOT EXISTS looks. The chassis
# sets no schema: the table is the one the connection's search_path finds (the role's or the database's
# setting, else public), and an index of the name in another schema of that path is none of this build's. It may
# be another table's of the schema, though (`on_table` false): IF NOT EXISTS would take it for the one wanted.
_INDEX_BESIDE_TABLE = text(
    "SELECT n.nspname, c.relkind::text AS relkind, i.indisvalid, pg_get_indexdef(i.indexrelid) AS definition,"
    " i.indrelid = to_regclass(:table) AS on_table, i.indrelid::regclass::text AS indexed_table FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_index i ON i.indexrelid = c.oid"
    " WHERE c.relname = :name AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(:table))"
)
# pg_class.relkind of what may hold an index's name instead of an index.
_RELATION_KINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
    "c": "type",
}
# A session's temporary copy of the indexed table's columns (their types and collations), to have PostgreSQL write
# the wanted index's definition as it writes the existing one's: it stores a condition rewritten (`state =
# 'pending'` reads back as `((state)::text = 'pending'::text)`), so only its own rendering of both compares.
_SCRATCH_TABLE = "shopmesh_wanted_index"


def _index_shape(definition: str) -> str:
    """What an index is, from its pg_get_indexdef() without its name and table's: unique or not, method, columns
    (with their order and operator classes), INCLUDE, condition."""
    head, _, body = definition.partition(" USING ")
    return f"{'UNIQUE ' if head.startswith('CREATE UNIQUE ') else ''}USING {body}"


def _wanted_shape(bind: Connection, table: str, body: str) -> str:
    """The shape (`_index_shape`) of the index `CREATE INDEX ... ON table body` would build, built on an empty
    temporary copy of the table's columns: nothing locked beyond a read of the table's definition."""
    bind.execute(text(f"CREATE TEMPORARY TABLE {_SCRATCH_TABLE} (LIKE {table})"))
    try:
        bind.execute(text(f"CREATE INDEX {_SCRATCH_TABLE}_ix ON {_SCRATCH_TABLE} {body}"))
        definition = bind.scalar(
            text("SELECT pg_get_indexdef(to_regclass(:index))"), {"index": f"pg_temp.{_SCRATCH_TABLE}_ix"}
        )
    finally:
        bind.execute(text(f"DROP TABLE {_SCRATCH_TABLE}"))
    return _index_shape(str(definition))


def _built_otherwise(bind: Connection, name: str, table: str, body: str, existing: str) -> bool:
    """Whether the valid index `existing` (its pg_get_indexdef()) is not the one `CREATE INDEX name ON table body`
    builds; says so in a warning naming both. Kept, with a warning saying why, when the role may not create the
    comparison's temporary table (managed PostgreSQL hardened with REVOKE TEMP ON DATABASE ... FROM PUBLIC): a
    start failing on every rerun for a check would be worse than an index that may be an earlier draft's."""
    try:
        wanted = _wanted_shape(bind, table, body)
    except DBAPIError as error:
        reason, sqlstate = server_said(error)
        if sqlstate != _INSUFFICIENT_PRIVILEGE:
            raise
        log.warning(
            "index %s kept as it is: its definition could not be compared with the one this migration builds "
            "(CREATE INDEX %s ON %s %s), as the comparison needs a temporary table: %s",
            name,
            name,
            table,
            body,
            reason,
            extra={"index": name, "existing_definition": existing},
        )
        return False
    if _index_shape(existing) == wanted:
        return False
    log.warning(
        "index %s is not the one this migration builds: dropping %s to build CREATE INDEX %s ON %s %s",
        name,
        existing,
        name,
        table,
        wanted,
        extra={"index": name, "existing_definition": existing, "wanted_definition": wanted},
    )
    return True


def create_index_concurrently(name: str, table: str, columns: Sequence[str], *, where: str | None = None) -> None:
    """For a migration: on PostgreSQL, build an index without holding writes to a busy table, outside the
    migration's transaction. Safe to run again: a build that failed half-way leaves an INVALID index under
    the name, dropped first; a VALID one (a start killed after its build finished, before Alembic recorded the
    migration) is kept, not built again from zero, which on a big table takes longer than a start may. Kept
    only if it is the index wanted, though: one of the name with other columns, uniqueness or condition (made
    by hand, or by an earlier draft of the migration) is dropped, with a warning naming both definitions, and
    the wanted one built; the comparison is PostgreSQL's own rendering of both (`_wanted_shape`). An index of the
    name on another table fails the migration (IndexNameTaken): the name is the schema's, not the table's. It
    runs without migrate()'s lock timeout: a concurrent build blocks nobody, but waits for every older
    snapshot in the database (a backup, a long report), and with the timeout such a transaction would fail
    every start until it ended. Elsewhere (SQLite), a plain CREATE INDEX. `where`, SQL both dialects read
    alike, makes it a partial index of the rows it holds for.

    The build says IF NOT EXISTS, which keeps the valid index, and is what squawk (the migration linter,
    tests/contract/test_migrations_safe.py) asks for anyway: it reads each statement outside a transaction on
    its own, and refuses one that a rerun would fail on."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(name, table, list(columns), sqlite_where=text(where) if where is not None else None)
        return
    body = f"({', '.join(columns)})" + (f" WHERE {where}" if where is not None else "")
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        index = bind.execute(_INDEX_BESIDE_TABLE, {"name": name, "table": table}).one_or_none()
        # Any relation's name is schema-wide: a table, view or sequence of the name made IF NOT EXISTS skip.
        if index is not None and index.relkind not in ("i", "I"):
            kind = _RELATION_KINDS.get(index.relkind, "relation")
            raise IndexNameTaken(
                f"the migration's index {name} of table {table} cannot be built: a {kind} of that name exists in "
                "its schema, and a relation name is schema-wide in PostgreSQL; rename one of the two; this start fails"
            )
        if index is not None and not index.on_table:
            raise IndexNameTaken(
                f"the migration's index {name} of table {table} cannot be built: an index of that name exists on "
                f"table {index.indexed_table} ({index.definition}), and an index name is schema-wide in PostgreSQL; "
                "rename one of the two (or drop the other, if a leftover); this start fails"
            )
        if index is not None and (not index.indisvalid or _built_otherwise(bind, name, table, body, index.definition)):
            schema = bind.dialect.identifier_preparer.quote_schema(index.nspname)
            bind.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {schema}.{name}"))
        timeout = bind.scalar(text("SHOW lock_timeout"))
        bind.execute(text("SET lock_timeout = 0"))
        try:
            bind.execute(text(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {body}"))
        finally:
            bind.execute(text("SELECT set_config('lock_timeout', :timeout, false)"), {"timeout": timeout})


def _newer_schema(connection: Connection, config: Config, address: str) -> bool:
    newer = unknown_revisions(connection, config)
    ours = _branches(config)
    # An unknown revision of another branch is not a newer release of this service: its database is another
    # service's, and this one would start "healthy" on it without any of its tables.
    foreign = sorted(revision for revision in newer if branch_of(revision) not in ours)
    if foreign:
        service = [label for label in ours if label != CHASSIS_BRANCH]
        holds = " and ".join(sorted({f"the {branch_of(revision)} service's" for revision in foreign}))
        raise ForeignSchemaAtStart(
            f"the database at {address} (DATABASE_URL) holds {holds} schema (revisions {', '.join(foreign)}), "
            f"not {' and '.join(service) or 'this service'}'s: each service has a database of its own; check "
            "DATABASE_URL (or the database Secret the service reads it from); this start fails"
        )
    if newer:
        # Alembic would stop here ("Can't locate revision"), and the pod would crash-loop: an aborted
        # canary or a rollback could never start again. Migrations are expand-only across a release
        # (docs/chassis.md), so this release runs on the newer schema as its pods did during the rollout.
        log.warning(
            "database schema is newer than this release: running on it without migrating",
            extra={"unknown_revisions": sorted(newer)},
        )
    return bool(newer)


def _upgrade_postgres(connection: Connection, config: Config, lock_timeout: float, address: str) -> bool:
    try:
        connection.execute(text(f"SET lock_timeout = {int(lock_timeout * 1000)}"))
        newer = _newer_schema(connection, config, address)
        # Alembic runs each migration in its own transaction only on a connection outside one.
        connection.commit()
        if newer:
            return False
        config.attributes["transaction_per_migration"] = True
        return _run_upgrade(connection, config)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise MigrationBlocked(
                f"database migration gave up after waiting {lock_timeout:g}s for a lock held by another "
                "transaction (a long query, an idle transaction, or a backup on the database); this start fails "
                "and the next one tries again"
            ) from None
        raise


def _upgrade_sqlite(connection: Connection, config: Config, address: str) -> bool:
    if _newer_schema(connection, config, address):
        return False
    return _run_upgrade(connection, config)


def _run_upgrade(connection: Connection, config: Config) -> bool:
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")
    return True


@asynccontextmanager
async def _no_connection_fails_the_start(database: Database) -> AsyncIterator[None]:
    try:
        yield
    except DatabaseUnreachable as error:
        # No connection could be made: the server refused this service (a wrong password, no such database:
        # the URL to fix), or cannot take it now (down, too many connections, not allowing connections).
        if error.sqlstate[:2] in _REFUSED_SQLSTATE_CLASSES:
            raise DatabaseRefusedAtStart(
                f"the database at {database.address} refused this service (DATABASE_URL): {error.said}; check the "
                "URL's user, password and database name; this start fails and the next one tries again"
            ) from None
        raise _unreachable_at_start(database, error.said) from None
    except DBAPIError as error:
        said, sqlstate = server_said(error)
        if sqlstate[:2] == "08" or sqlstate in _CONNECTION_LOST_SQLSTATES:
            # The connection made, then lost or cut by a server going away: a database pod restarting, a
            # failover under way.
            raise _unreachable_at_start(database, said) from None
        raise


def _unreachable_at_start(database: Database, said: str) -> DatabaseUnreachableAtStart:
    return DatabaseUnreachableAtStart(
        f"cannot connect to the database at {database.address} (DATABASE_URL): {said}; this start fails and "
        "the next one tries again"
    )


async def migrate(
    database: Database,
    versions_dir: Path,
    metadata: MetaData | None = None,
    *,
    lock_timeout_seconds: float = MIGRATION_LOCK_TIMEOUT_SECONDS,
) -> None:
    """Bring the database to the newest schema of the chassis and of the service, unless a newer release
    has already taken it further (then leave it as it is). On PostgreSQL each migration commits on its
    own and waits at most `lock_timeout_seconds` for a lock (MigrationBlocked past that). Under MIGRATE_ONLY (the
    loaded settings' `migrate_only`, which `Database.from_settings` gives `database`) it then raises MigratedOnly,
    which ends the process with status 0 (`app.run`)."""
    config = alembic_config(versions_dir, metadata)
    if database.dialect == "postgresql":
        # The connection is discarded after: the advisory lock and the lock timeout go with it.
        async with _no_connection_fails_the_start(database), database.dedicated_connection() as connection:
            # Replicas starting together: one migrates, the others wait and then find nothing to do. A session
            # lock, to outlive the migrations' own commits. Polled with a try, never waited for in a statement:
            # a replica blocked in pg_advisory_lock() holds a snapshot, which CREATE INDEX CONCURRENTLY in
            # the one migrating waits for, while it waits for the lock: a deadlock PostgreSQL breaks by
            # failing one of them. A session the server drops about a minute after its client is cut off (its
            # node gone mid-migration): kept for hours, it would stall every replica's start meanwhile.
            while not await try_session_lock(connection, _PG_MIGRATION_LOCK):
                await connection.commit()  # no transaction held between tries
                await asyncio.sleep(_LOCK_POLL_SECONDS)
            await connection.commit()
            upgraded = await connection.run_sync(_upgrade_postgres, config, lock_timeout_seconds, database.address)
    else:
        # Foreign keys off while it runs (checked before the commit): batch mode's table rebuilds would
        # otherwise cascade their DROP TABLE to every row referencing the table.
        async with database.sqlite_schema_transaction() as connection:
            upgraded = await connection.run_sync(_upgrade_sqlite, config, database.address)
    if upgraded:
        log.info("database schema is up to date", extra={"versions": str(versions_dir)})
    if database.migrate_only:
        raise MigratedOnly(f"MIGRATE_ONLY: the database at {database.address} is migrated; exiting without serving")
