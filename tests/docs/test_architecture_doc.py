"""docs/architecture.md says what the topology says: every service, call edge, event and data owner."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shopmesh_platform.topology import SERVICES, callers_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def table() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in SERVICES:
            rows[cells[0]] = cells
    return rows


def names(cell: str) -> set[str]:
    return {part.strip().strip("`") for part in cell.split(",") if part.strip() not in ("", "—")}


def diagram() -> str:
    match = re.search(r"```mermaid\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, "architecture.md has no mermaid diagram"
    return match.group(1)


def test_every_service_has_a_row() -> None:
    assert set(table()) == set(SERVICES)


@pytest.mark.parametrize("name", list(SERVICES))
def test_row_matches_the_topology(name: str) -> None:
    service = SERVICES[name]
    _, owns, called_by, calls, publishes, consumes = table()[name]
    assert names(calls) == set(service.calls)
    assert names(called_by) == set(callers_of(name))
    assert names(publishes) == set(service.publishes)
    assert names(consumes) == set(service.consumes)
    assert (owns.startswith("nothing")) == (not service.has_database)


@pytest.mark.parametrize("name", list(SERVICES))
def test_diagram_shows_every_call_edge(name: str) -> None:
    text = diagram()
    for callee in SERVICES[name].calls:
        direct = re.search(rf"\b{name}\b\s*-->(\|[^|]*\|)?\s*{callee}\b", text)
        fanned = re.search(rf"\b{name}\b\s*-->\s*[\w ]*&[\w &]*\b{callee}\b", text)
        assert direct or fanned, f"the diagram lacks the edge {name} --> {callee}"
