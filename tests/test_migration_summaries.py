"""Every migration's summary fits on one line: Alembic logs it at every start that runs the migration
(`Running upgrade a -> b, <summary>`), and a summary of two lines left `make run` a line with the service's
prefix but no time or level, which read as a stray message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from alembic.script import ScriptDirectory

from shopmesh_chassis.migrations import alembic_config, branch_of

from .contract.migration_sql import SERVICE_VERSIONS


def test_every_service_has_its_migrations_found() -> None:
    assert len(SERVICE_VERSIONS) == 7, SERVICE_VERSIONS  # every service but the gateway owns data


def multi_line_summaries(service_versions: Iterable[Path]) -> set[str]:
    return {
        f"{script.revision}: {script.doc!r}"
        for versions in service_versions
        for script in ScriptDirectory.from_config(alembic_config(versions)).walk_revisions()
        if "\n" in script.doc.strip()
    }


def misnamed_revisions(service_versions: Iterable[Path]) -> set[str]:
    """The revisions whose id is not `<branch label>_NNNN`, of a branch label among their folder's."""
    misnamed = set()
    for versions in service_versions:
        scripts = list(ScriptDirectory.from_config(alembic_config(versions)).walk_revisions())
        labels = {label for script in scripts for label in script.branch_labels}
        misnamed |= {
            script.revision
            for script in scripts
            if not re.fullmatch(r"[a-z]+_\d{4}", script.revision) or branch_of(script.revision) not in labels
        }
    return misnamed


def test_every_migration_summary_is_one_line() -> None:
    multi_line = multi_line_summaries(SERVICE_VERSIONS)
    assert not multi_line, (
        f"make each revision's docstring start with a one-line paragraph (docs/services.md, `make "
        f"migration`): {sorted(multi_line)}"
    )


def test_every_revision_is_named_after_its_branch() -> None:
    """The chassis reads a revision's branch from its id, `<branch label>_NNNN` (migrations.branch_of), to tell a
    newer release's revision from another service's schema: a revision named otherwise would count as another
    service's, and the release before it, started on the database after a rollback, would refuse to run."""
    misnamed = misnamed_revisions(SERVICE_VERSIONS)
    assert not misnamed, (
        f"name each revision `<branch>_NNNN` (its branch label, then 4 digits, as catalog_0003: docs/services.md, "
        f"`make migration`), file `<branch>_NNNN_<slug>.py`: {sorted(misnamed)}"
    )
