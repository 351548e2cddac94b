"""docs/chassis.md's table of modules names every module of the chassis, so a reader looking for where a
concern lives finds it there; the table had fallen behind six of them (e-mail addresses, NATS_URL's
credentials, the text rules, the call context, the chassis' tables) and the dead letters' command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "libs" / "chassis" / "src" / "shopmesh_chassis"


def tabled_modules() -> set[str]:
    text = (ROOT / "docs" / "chassis.md").read_text()
    table = re.search(r"\n\| module \| owns \|\n\|---\|---\|\n((?:\|[^\n]*\n)+)", text)
    assert table, "docs/chassis.md lost its table of modules"
    named = set()
    for row in table.group(1).splitlines():
        first, owns = row.split("|")[1:3]
        named |= set(re.findall(r"`(\w+)`", first))
        # A module that serves another's concern is named beside it: `deadletters_cli` in `deadletters`' row.
        named |= set(re.findall(r"\(`(\w+)`\)", owns))
    return named


def test_every_chassis_module_is_in_the_table() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py") if not path.stem.startswith("__")}
    modules |= {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert {"app", "client", "testing"} <= modules, modules
    missing = sorted(modules - tabled_modules())
    assert not missing, f"docs/chassis.md's table of modules leaves out {missing}"
