"""Each Alembic migration's SQL as PostgreSQL ran it, checked by squawk (the PostgreSQL migration linter).

Alembic's offline mode (`--sql`) cannot render our migrations: it emits COMMIT / BEGIN around an
`autocommit_block()`, but `create_index_concurrently` reads the session's lock_timeout to restore it after
the build, and orders_0002 backfills by primary-key ranges it asks the database for; offline there is no
database to answer ('MockConnection' object has no attribute 'scalar'). So each migration runs for real,
through `migrate()` (the chassis' own environment, lock timeout and transaction per migration), on a
throwaway PostgreSQL, and every statement the driver sends is kept: which migration ran it and whether it ran
inside the migration's transaction or in an autocommit block. squawk then reads one file per migration, with
the real BEGIN / COMMIT around what ran in a transaction (but for what an autocommit block committed before
it: a start that ends in the block runs it again, so squawk reads it as outside a transaction).

A statement belongs to the migration whose record in `alembic_version` follows it: migrations run one after
the other on the one connection, and Alembic records each as soon as it has run. Not the call stack: a
statement a migration awaits through `op.run_async` is sent from a greenlet whose stack holds no migration
file, and was checked by nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import alembic_config, migrate

ROOT = Path(__file__).resolve().parents[2]
# The rules squawk leaves out here, each with its reason.
SQUAWK_CONFIG = ROOT / ".squawk.toml"
SERVICE_VERSIONS = sorted((ROOT / "services").glob("*/src/shopmesh_*/migrations/versions"))
# squawk-cli's wheel puts the binary beside the venv's Python (`make setup` installs it, pinned in uv.lock).
SQUAWK_BIN_DIR = Path(sys.executable).parent
# The tty reporter's colours and hyperlinks (it prints them to a pipe too): squawk's message, as plain text.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;;[^\x1b]*\x1b\\")


def migration_files(versions: Path) -> list[Path]:
    return sorted(path for path in versions.glob("*.py") if not path.name.startswith("__"))


@dataclass
class Statement:
    sql: str
    in_transaction: bool


@dataclass
class MigrationSql:
    """What one migration file ran, after the session settings `migrate()` gave its connection."""

    migration: Path
    session: list[str]
    statements: list[Statement] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"-- {display(self.migration)}, as run on PostgreSQL by migrate()"]
        if self.session:
            # Set once per connection before the first migration (migrate()'s lock_timeout): in effect for this one.
            lines += ["-- the connection's session settings, made by migrate() before any migration", *self.session]
        # Consecutive statements in a transaction were in one: a migration's transaction ends only where an
        # autocommit block commits it (Alembic's transaction_per_migration, which migrate() sets on PostgreSQL).
        # What ran in a transaction before an autocommit block is committed by it, though the migration is not
        # recorded as done: a start that ends in the block (a pod killed during a concurrent index build, which
        # waits for every older snapshot) runs those statements again at the next start. So squawk reads them
        # as outside a transaction, where prefer-robust-stmts refuses an ADD COLUMN or a CREATE TABLE that a
        # rerun would fail on; only the transaction after the last autocommit statement is rolled back whole.
        last_autocommit = max((i for i, s in enumerate(self.statements) if not s.in_transaction), default=-1)
        in_transaction = False
        for index, statement in enumerate(self.statements):
            transactional = statement.in_transaction and index > last_autocommit
            if transactional != in_transaction:
                lines.append("BEGIN;" if transactional else "COMMIT;")
                in_transaction = transactional
            if (
                statement.in_transaction
                and not transactional
                and (index == 0 or not self.statements[index - 1].in_transaction)
            ):
                lines.append("-- committed before the autocommit block below: run again if the start ends in it")
            lines.append(statement.sql.strip().rstrip(";") + ";")
        if in_transaction:
            lines.append("COMMIT;")
        return "\n".join(lines) + "\n"


def display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


# Alembic's record of a migration it has just run, naming its revision: a branch's first (INSERT) or the next.
_APPLIED = re.compile(
    r"INSERT INTO alembic_version \(version_num\) VALUES \('([^']+)'\)|UPDATE alembic_version SET version_num='([^']+)'"
)


async def captured_sql(database: Database, versions: Path) -> dict[Path, MigrationSql]:
    """Migrate `database` (empty, PostgreSQL) with the chassis' migrations and `versions`'; what each of
    their files ran, by file."""
    files = {
        script.revision: Path(script.path)
        for script in ScriptDirectory.from_config(alembic_config(versions)).walk_revisions()
        if script.path is not None
    }
    session: list[str] = []
    captured = {path: MigrationSql(path, session) for path in files.values()}
    # What ran since Alembic's last record: the next migration's, once Alembic records it. None before Alembic
    # starts (its first statements read or create alembic_version): what runs then is migrate()'s own.
    pending: list[Statement] | None = None

    def before_execute(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal pending
        if "alembic_version" in statement:
            if (applied := _APPLIED.match(statement.strip())) is not None:
                captured[files[applied.group(1) or applied.group(2)]].statements.extend(pending or [])
                pending = []
            elif pending is None:
                pending = []
            # Else a merge's DELETE of one of the heads it joins: what ran is the merge's, recorded next.
            return
        if pending is None:
            # migrate()'s own statements: its session settings hold for every migration after them.
            if statement.lstrip().upper().startswith("SET "):
                session.append(statement.strip().rstrip(";") + ";")
            return
        autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        pending.append(Statement(statement, in_transaction=not autocommit))

    event.listen(database.sync_engine, "before_cursor_execute", before_execute)
    try:
        await migrate(database, versions)
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", before_execute)
    # Alembic records the last migration last: anything after it, no migration ran and nothing checks.
    assert not pending, f"statements after the last migration's record, by no migration: {pending}"
    return captured


def squawk_binary(bin_dir: Path = SQUAWK_BIN_DIR) -> Path:
    """The venv's squawk; a missing one fails the test (never a skip: the check would be silently gone)."""
    binary = bin_dir / "squawk"
    if not binary.is_file():
        pytest.fail(
            f"squawk is missing ({binary}): run `make setup` (squawk-cli is a dev dependency in uv.lock); "
            "without it no migration is checked for what breaks a rolling update"
        )
    return binary


def squawk_findings(migration: MigrationSql, bin_dir: Path = SQUAWK_BIN_DIR) -> str:
    """squawk's own report on one migration's SQL, naming its file; "" when squawk finds nothing."""
    # On stdin, reported under the migration's own path: squawk's message names the file.
    named = f"{display(migration.migration)}.sql"
    result = subprocess.run(
        [str(squawk_binary(bin_dir)), "--config", str(SQUAWK_CONFIG), "--reporter", "tty", "--stdin-filepath", named],
        input=migration.render(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = _TERMINAL_CODES.sub("", result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return ""
    return report or f"squawk exited {result.returncode} and said nothing"
