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


def owned(cell: str) -> list[str]:
    """The owns cell split at top-level commas (a comma inside parentheses belongs to its item)."""
    items: list[str] = []
    depth, current = 0, ""
    for char in cell:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()]


@pytest.mark.parametrize("name", list(SERVICES))
def test_owns_cell_is_exactly_what_the_topology_says_the_service_owns(name: str) -> None:
    # The whole cell, item by item and in order: a data set the doc names but the topology lacks
    # (or the reverse) fails here, not only a service that wrongly claims to be stateless.
    owns = table()[name][1]
    assert owned(owns) == list(SERVICES[name].owns)


def diagram_call_edges() -> set[tuple[str, str]]:
    """The diagram's solid edges between services, fan-outs (`a --> b & c`) expanded."""
    edges: set[tuple[str, str]] = set()
    for line in diagram().splitlines():
        match = re.fullmatch(r"\s*(\w+)\s*-->(?:\|[^|]*\|)?\s*([\w &]+?)\s*", line)
        if match and match.group(1) in SERVICES:
            edges |= {(match.group(1), callee.strip()) for callee in match.group(2).split("&")}
    return edges


def test_diagram_shows_the_call_edges_of_the_topology_and_no_others() -> None:
    expected = {(name, callee) for name, service in SERVICES.items() for callee in service.calls}
    shown = diagram_call_edges()
    assert shown - expected == set(), "the diagram shows calls the topology does not make"
    assert expected - shown == set(), "the diagram lacks calls the topology makes"
