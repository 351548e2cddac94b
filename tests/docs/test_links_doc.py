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


# Where the code, charts and docs cite a section in words, `docs/<file>.md, "<heading>"` (a comment, a render
# failure's message, a table cell): no link for the test above to follow, and a reader sent there finds no
# such heading. A heading cited across a line break is matched by the part on the first line.
CITING = [
    *DOCS,
    *sorted(ROOT.glob("helm/**/*.yaml")),
    *sorted(ROOT.glob("helm/**/*.tpl")),
    *sorted(ROOT.glob("k8s/**/*.py")),
    *sorted(ROOT.glob("k8s/**/*.yaml")),
    *sorted(ROOT.glob("libs/*/src/**/*.py")),
    *sorted(ROOT.glob("services/*/src/**/*.py")),
]
CITATION = re.compile(r'docs/([\w-]+\.md), \\?"([^"\\\n]+)')


def sections(doc: Path) -> list[str]:
    """Its headings, and the bold run-in titles opening a paragraph (`**Load shedding.** With ...`)."""
    prose = re.sub(r"(?s)```.*?```", "", doc.read_text())
    return re.findall(r"(?m)^#{1,6}\s+(.+?)\s*#*$", prose) + re.findall(r"(?m)^\*\*(.+?)\*\*", prose)


def test_every_section_cited_by_name_is_a_heading_of_that_doc() -> None:
    wrong = []
    for path in CITING:
        for name, title in CITATION.findall(path.read_text()):
            doc = ROOT / "docs" / name
            if not doc.exists() or not any(section.startswith(title.strip()) for section in sections(doc)):
                wrong.append(f'{path.relative_to(ROOT)}: docs/{name}, "{title.strip()}"')
    assert not wrong, wrong
