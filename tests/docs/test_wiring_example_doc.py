"""docs/chassis.md's wiring example is the first code a newcomer copies: its imports must resolve, its
settings class must load, and the chassis functions it calls must take the arguments it passes. It
declared `service_name: str`, which ServiceSettings refuses at import (TypeError: the field drops its
bounds)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

from shopmesh_chassis.config import ServiceSettings, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "chassis.md"
# The module the example's classes are declared in, to tell them from the chassis' own.
EXAMPLE = "chassis_md_wiring_example"


def example() -> ast.Module:
    text = DOC.read_text()
    found = re.search(r"## A service's wiring module\n\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "chassis.md lost its wiring example"
    return ast.parse(found.group(1))


def imported_and_declared() -> dict[str, Any]:
    """Run the example's imports and classes (its `main` needs a service's own modules, which it elides)."""
    namespace: dict[str, Any] = {"__name__": EXAMPLE}
    kept: list[ast.stmt] = [
        node for node in example().body if isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef))
    ]
    # dont_inherit: as a reader runs it, without this file's `from __future__ import annotations`.
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(DOC), "exec", dont_inherit=True), namespace)
    return namespace


def test_its_settings_class_loads_with_the_chassis_defaults() -> None:
    classes = [v for v in imported_and_declared().values() if isinstance(v, type) and issubclass(v, ServiceSettings)]
    (settings_class,) = {cls for cls in classes if cls.__module__ == EXAMPLE}
    settings = load_settings(settings_class)
    assert settings.service_name == "catalog"


def test_every_chassis_call_it_makes_takes_the_arguments_it_passes() -> None:
    namespace = imported_and_declared()
    calls = [node for node in ast.walk(example()) if isinstance(node, ast.Call)]
    checked = 0
    for call in calls:
        target: Any
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
            owner = namespace.get(call.func.value.id)
            if not inspect.ismodule(owner):
                continue
            target = getattr(owner, call.func.attr)
        elif isinstance(call.func, ast.Name) and call.func.id in namespace:
            target = namespace[call.func.id]
            if not (getattr(target, "__module__", None) or "").startswith("shopmesh_chassis"):
                continue  # the example's own settings class, or builtins
        else:
            continue
        # Bind placeholders: what is checked is the call's shape (arity, keyword names), not its values.
        inspect.signature(target).bind(*call.args, **{kw.arg: kw.value for kw in call.keywords if kw.arg})
        checked += 1
    assert checked >= 5, "the example's chassis calls were not found"
