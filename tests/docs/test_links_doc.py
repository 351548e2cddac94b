"""Every relative link of README and docs/ leads somewhere: the file exists, and a `#section` is a heading
of it (as GitHub makes its anchor). A section renamed or a file moved otherwise leaves a link that
looks fine in review and lands a reader at the top of a page, or on GitHub's 404."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (backticks, colons, '=') dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    prose = re.sub(r"(?s)```.*?```", "", doc.read_text())
    return {anchor(heading) for heading in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*#*$", prose)}


def links(doc: Path) -> list[str]:
    prose = re.sub(r"(?s)```.*?```", "", doc.read_text())
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", prose)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        path, _, section = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif section and linked.suffix == ".md" and section not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not broken, f"{doc.name}: {broken}"


def test_the_anchor_rule_is_githubs() -> None:
    # Headings this repository links to, with the anchors GitHub gives them.
    assert anchor("The local mesh: `make run MESH=envoy`") == "the-local-mesh-make-run-meshenvoy"
    assert anchor("Ingress (Gateway API)") == "ingress-gateway-api"
    assert anchor("Settings (environment variables)") == "settings-environment-variables"
