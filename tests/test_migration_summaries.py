"""Every migration's summary fits on one line: Alembic logs it at every start that runs the migration
(`Running upgrade a -> b, <summary>`), and a summary of two lines left `make run` a line with the service's
prefix but no time or level, which read as a stray message."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from shopmesh_chassis.migrations import alembic_config

from .contract.migration_sql import SERVICE_VERSIONS


def test_every_service_has_its_migrations_found() -> None:
    assert len(SERVICE_VERSIONS) == 7, SERVICE_VERSIONS  # every service but the gateway owns data


def test_every_migration_summary_is_one_line() -> None:
    multi_line = {
        f"{script.revision}: {script.doc!r}"
        for versions in SERVICE_VERSIONS
        for script in ScriptDirectory.from_config(alembic_config(versions)).walk_revisions()
        if "\n" in script.doc.strip()
    }
    assert not multi_line
