"""docs/operations.md, "Rolling back: how far": its table of where main leaves each database is each Alembic
branch's head, the oldest release it names is the newest of its limits, and every contracting migration (a
`squawk-ignore ban-drop-...`, docs/chassis.md) is one of those limits. Otherwise an operator reads a rollback
limit that a migration since has moved, and rolls back onto a schema the release cannot run on."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import takewhile
from pathlib import Path

from alembic.script import ScriptDirectory

from shopmesh_chassis.migrations import CHASSIS_VERSIONS, alembic_config, branch_of
from shopmesh_platform.new_migration import documented_heads

from ..contract.migration_sql import SERVICE_VERSIONS

ROOT = Path(__file__).resolve().parents[2]


def section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## Rolling back: how far")
    return text[start : text.index("\n## ", start + 1)]


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header`, its separator row left out."""
    lines = iter(text[text.index(header) :].splitlines()[2:])
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in takewhile(is_row, lines)]


def is_row(line: str) -> bool:
    return line.startswith("|")


def branch_heads(service_versions: Iterable[Path] = SERVICE_VERSIONS) -> dict[str, str]:
    heads: dict[str, str] = {}
    for versions in service_versions:
        for head in ScriptDirectory.from_config(alembic_config(versions)).get_heads():
            heads[branch_of(head)] = head
    return heads


def test_the_heads_table_names_each_branchs_head_on_main() -> None:
    assert len(SERVICE_VERSIONS) == 7, SERVICE_VERSIONS  # every service but the gateway owns data
    assert documented_heads(ROOT) == branch_heads(), (
        "docs/operations.md, 'Rolling back: how far': set each branch's row of the table '| Database branch | Head on "
        "main |' to its head revision (a new migration moves its branch's head; docs/services.md's migration section)"
    )


def test_the_oldest_release_named_is_the_newest_limit_in_the_table() -> None:
    text = section()
    limits = [row[0] for row in table_rows(text, "| Oldest release |")]
    dates = [re.search(r"\((.+?)\)", limit).group(1) for limit in limits]  # type: ignore[union-attr]
    newest = limits[dates.index(max(dates))].split()[0]
    assert re.search(r"a rollback may go back to commit \*\*(\w+)\*\*", text).group(1) == newest  # type: ignore[union-attr]


def test_every_contracting_migration_is_a_limit_in_the_table() -> None:
    named = " ".join(" ".join(row) for row in table_rows(section(), "| Oldest release |"))
    contracting = [
        re.match(r"[a-z]+_\d+", path.stem).group(0)  # type: ignore[union-attr]
        for versions in (CHASSIS_VERSIONS, *SERVICE_VERSIONS)
        for path in versions.glob("*.py")
        if "squawk-ignore ban-drop" in path.read_text()
    ]
    assert [revision for revision in contracting if revision not in named] == []
