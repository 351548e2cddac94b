"""Each Alembic migration's SQL as PostgreSQL ran it, checked by squawk (the PostgreSQL migration linter).

Alembic's offline mode (`--sql`) cannot render our migrations: it emits COMMIT / BEGIN around an
`autocommit_block()`, but `create_index_concurrently` reads the session's lock_timeout to restore it after
the build, and orders_0002 backfills by primary-key ranges it asks the database for; offline there is no
database to answer ('MockConnection' object has no attribute 'scalar'). So each migration runs for real,
through `migrate()` (the chassis' own environment, lock timeout and transaction per migration), on a
throwaway PostgreSQL, and every statement the driver sends is kept: which migration file sent it (found on
the call stack) and whether it ran inside the migration's transaction or in an autocommit block. squawk then
reads one file per migration, with the real BEGIN / COMMIT around what ran in a transaction.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import CHASSIS_VERSIONS, migrate

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
        in_transaction = False
        for statement in self.statements:
            if statement.in_transaction != in_transaction:
                lines.append("BEGIN;" if statement.in_transaction else "COMMIT;")
                in_transaction = statement.in_transaction
            lines.append(statement.sql.strip().rstrip(";") + ";")
        if in_transaction:
            lines.append("COMMIT;")
        return "\n".join(lines) + "\n"


def display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


async def captured_sql(database: Database, versions: Path) -> dict[Path, MigrationSql]:
    """Migrate `database` (empty, PostgreSQL) with the chassis' migrations and `versions`'; what each of
    their files ran, by file."""
    files = _by_code_path(versions)
    session: list[str] = []
    captured = {path: MigrationSql(path, session) for path in files.values()}

    def sent_by() -> Path | None:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if (path := files.get(frame.f_code.co_filename)) is not None:
                return path
            frame = frame.f_back
        return None

    def before_execute(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        migration = sent_by()
        if migration is None:
            # migrate()'s own statements: its session settings hold for every migration after them.
            if statement.lstrip().upper().startswith("SET "):
                session.append(statement.strip().rstrip(";") + ";")
            return
        autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        captured[migration].statements.append(Statement(statement, in_transaction=not autocommit))

    event.listen(database.sync_engine, "before_cursor_execute", before_execute)
    try:
        await migrate(database, versions)
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", before_execute)
    return captured


def _by_code_path(versions: Path) -> dict[str, Path]:
    """The migration files by each name a frame's code may carry for them (Alembic loads them by the folder's
    path as configured; a symlinked checkout resolves to another)."""
    files = {os.path.abspath(path): path for folder in (CHASSIS_VERSIONS, versions) for path in migration_files(folder)}
    return files | {os.path.realpath(name): path for name, path in files.items()}


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
