"""A service process imports no more than its image holds (lean_imports), and every service asks for it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import sys
from shopmesh_chassis import lean_imports
{install}
import shopmesh_chassis.events, shopmesh_chassis.migrations, mako.exceptions  # nats-py, Alembic and its Mako
print(sorted(n for n in lean_imports.NOT_IN_ANY_IMAGE if sys.modules.get(n) is not None))
"""


@pytest.mark.parametrize(("install", "loaded"), [("", "['aiohttp', 'pygments']"), ("lean_imports.install()", "[]")])
def test_the_libraries_a_service_uses_skip_what_no_image_holds(install: str, loaded: str) -> None:
    # Without install() the workspace's environment, which holds both, has them imported: the probe can fail.
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(install=install)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == loaded


@pytest.mark.parametrize("main", sorted(ROOT.glob("services/*/src/*/__main__.py")), ids=lambda p: p.parent.name)
def test_every_service_installs_lean_imports_before_importing_anything_else(main: Path) -> None:
    calls = [
        ast.unparse(node.value)
        for node in ast.parse(main.read_text()).body
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ]
    imports = [ast.unparse(node) for node in ast.parse(main.read_text()).body if isinstance(node, ast.ImportFrom)]
    assert calls[:2] == ["early_signals.install()", "lean_imports.install()"]
    assert imports[0] == "from shopmesh_chassis import early_signals, lean_imports"
