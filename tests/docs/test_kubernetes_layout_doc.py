"""docs/kubernetes.md's Layout table names everything k8s/ holds, so a reader who meets a file there (the
example ingress, the scripts that write the generated files) finds what it is for; the table had fallen
behind k8s/ingress/, k8s/http_api.py and k8s/dockerfiles.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_paths() -> set[str]:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    table = re.search(r"\n## Layout\n+((?:\|[^\n]*\n)+)", text)
    assert table, "docs/kubernetes.md lost its Layout table"
    return set(re.findall(r"`(k8s/[^`]*)`", table.group(1)))


def test_every_entry_of_k8s_is_in_the_layout_table() -> None:
    named = layout_paths()
    entries = [entry for entry in sorted((ROOT / "k8s").iterdir()) if not entry.name.startswith((".", "__"))]
    assert entries, "k8s/ holds nothing"
    missing = [
        entry.name
        for entry in entries
        # A folder counts when the table names it or a file in it (k8s/kind/cluster.yaml).
        if not any(path == f"k8s/{entry.name}" or path.startswith(f"k8s/{entry.name}/") for path in named)
    ]
    assert not missing, f"docs/kubernetes.md's Layout table leaves out k8s/{', k8s/'.join(missing)}"
