"""docs/kubernetes.md's table of make targets lists every target k8s/k8s.mk describes for `make help`, so a
reader of the Kubernetes guide finds each command the cluster side has (the root Makefile's are README's);
and `make help`, which prints those descriptions, shows them as a reader can use them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def described_targets() -> set[str]:
    # `make help` lists the targets with a `## ` description; the others are steps of those.
    return set(re.findall(r"(?m)^([a-z][a-z0-9-]*):[^\n]*## ", (ROOT / "k8s" / "k8s.mk").read_text()))


def table_targets() -> set[str]:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    table = re.search(r"\n## Make targets\n+((?:\|[^\n]*\n)+)", text)
    assert table, "docs/kubernetes.md lost its Make targets table"
    return set(re.findall(r"`make ([a-z][a-z0-9-]*)`", table.group(1)))


def test_every_described_k8s_target_is_in_the_table() -> None:
    assert described_targets(), "k8s/k8s.mk describes no target"
    missing = described_targets() - table_targets()
    assert not missing, f"docs/kubernetes.md's Make targets table leaves out {sorted(missing)}"


def test_make_help_shows_no_unexpanded_variable() -> None:
    # `make help` prints each description as written, so `$(CHROMIUM)` reached the reader as those characters.
    described = re.findall(
        r"(?m)^([a-z][a-z0-9-]*):[^\n]*?## ([^\n]*)",
        "".join((ROOT / f).read_text() for f in ("Makefile", "k8s/k8s.mk")),
    )
    assert len(described) > 20, described
    raw = {target: text for target, text in described if "$(" in text or "${" in text}
    assert not raw, f"these targets' help shows a make variable unexpanded: {raw}"
