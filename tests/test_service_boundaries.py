"""A service never imports another service's code, only the contracts (libs/contracts) and the shared libraries:
each service is its own image with its own dependencies, and its own tests run with only those installed.
The rule holds for a service's unit tests too; system tests under tests/ may use several services."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = sorted(path.name for path in (ROOT / "services").iterdir() if (path / "pyproject.toml").is_file())


def imported_modules(source: Path) -> set[str]:
    """The top-level package of every module the file imports (relative imports excluded: they stay inside it)."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def crossings(service: str) -> list[str]:
    """`file: package` for each import of another service's package in this service's folder."""
    others = {f"shopmesh_{other}" for other in SERVICES if other != service}
    found = []
    for source in sorted((ROOT / "services" / service).rglob("*.py")):
        for package in sorted(imported_modules(source) & others):
            found.append(f"{source.relative_to(ROOT)}: {package}")
    return found


def test_the_services_are_found() -> None:
    assert len(SERVICES) == 8, SERVICES


def test_no_service_imports_another_services_code() -> None:
    assert [crossing for service in SERVICES for crossing in crossings(service)] == []


def test_the_check_sees_an_import_of_another_service(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import shopmesh_inventory.wiring\nfrom shopmesh_catalog import x\nfrom . import y\n")
    assert imported_modules(source) >= {"shopmesh_inventory", "shopmesh_catalog"}
    assert "" not in imported_modules(source)
