"""Alembic for every service, written once.

The chassis owns the Alembic environment (`env.py`) and the migrations of its own tables
(idempotency records, the outbox, processed events) as the `chassis` branch. A service adds only its
`versions/` folder as a second branch; `migrate()` upgrades both to their heads at startup.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from shopmesh_chassis.db import Database

log = logging.getLogger("shopmesh.migrations")

HERE = Path(__file__).resolve().parent
CHASSIS_VERSIONS = HERE / "versions"
# Any constant works; it only has to be the same for every replica of every service.
_PG_MIGRATION_LOCK = 0x5350_4D49  # "SHMI"


def alembic_config(versions_dir: Path, metadata: MetaData | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("version_locations", f"{CHASSIS_VERSIONS} {versions_dir}")
    config.set_main_option("path_separator", "space")
    config.attributes["target_metadata"] = metadata
    return config


def unknown_revisions(connection: Connection, config: Config) -> set[str]:
    """The database's revisions that this release's migrations do not contain: a newer release (a canary,
    or the release a rollback came from) migrated it."""
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    return set(MigrationContext.configure(connection).get_current_heads()) - known


def _upgrade(connection: Connection, config: Config) -> bool:
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait and then find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    newer = unknown_revisions(connection, config)
    if newer:
        # Alembic would stop here ("Can't locate revision"), and the pod would crash-loop: an aborted
        # canary or a rollback could never start again. Migrations are expand-only across a release
        # (docs/chassis.md), so this release runs on the newer schema as its pods did during the rollout.
        log.warning(
            "database schema is newer than this release: running on it without migrating",
            extra={"unknown_revisions": sorted(newer)},
        )
        return False
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")
    return True


async def migrate(database: Database, versions_dir: Path, metadata: MetaData | None = None) -> None:
    """Bring the database to the newest schema of the chassis and of the service, unless a newer release
    has already taken it further (then leave it as it is)."""
    config = alembic_config(versions_dir, metadata)
    async with database.transaction() as connection:
        upgraded = await connection.run_sync(_upgrade, config)
    if upgraded:
        log.info("database schema is up to date", extra={"versions": str(versions_dir)})
