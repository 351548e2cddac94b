"""The environment variables the docs name are the ones the settings classes read, with their defaults.

A setting added to a service used to reach no doc at all (the gateway's rate limits, notifications' SMTP
relay: a newcomer had to read settings.py), and a default changed in code leaves a stale number behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from shopmesh_chassis import config
from shopmesh_platform.topology import SERVICES, settings_class

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHASSIS_DOC = ROOT / "docs" / "chassis.md"
SERVICES_DOC = ROOT / "docs" / "services.md"
# Read by load_settings itself, before any settings class.
NOT_A_FIELD = {config.SECRETS_DIR}
CHASSIS_CLASSES: tuple[type[BaseSettings], ...] = (config.ConsumerSettings, config.IdempotencySettings)


def variables(cls: type[BaseSettings]) -> dict[str, Any]:
    return {name.upper(): field.default for name, field in cls.model_fields.items()}


def table_rows(doc: Path, heading: str) -> list[list[str]]:
    """The rows of the first table under `heading` (its header and rule left out); none without the section,
    whose variables test_every_variable_a_settings_class_reads_is_documented then misses."""
    text = doc.read_text()
    if f"\n{heading}\n" not in text:
        return []
    rows: list[list[str]] = []
    for line in text.split(f"\n{heading}\n", 1)[1].splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[1:]


def names_in(cell: str) -> list[str]:
    """`A` / `B` and `A`, `B`. A shorthand (`..._TIMEOUT_SECONDS`) is kept as written: nobody can grep for it,
    so it counts as a name no settings class reads."""
    return re.findall(r"`((?:\.\.\.)?[A-Z0-9_]+)`", cell)


def parsed(value: str) -> object:
    """A documented default as a value to compare, or NotImplemented for prose (unset, per service, ...)."""
    value = re.sub(r"\s*\([^)]*\)", "", value).strip()
    if value in ("true", "false", "`true`", "`false`"):
        return value.strip("`") == "true"
    if value == "empty":
        return ""
    quoted = re.fullmatch(r"`([^`]*)`", value)
    if quoted:
        value = quoted.group(1)
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
            return value
    sized = re.fullmatch(r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)( MiB| KiB)?", value)
    if sized:
        number = float(sized.group(1).replace(",", ""))
        return number * {" MiB": 1024 * 1024, " KiB": 1024, None: 1}[sized.group(2)]
    return NotImplemented


def agrees(documented: object, default: Any) -> bool:
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(documented, float) and isinstance(default, (int, float)) and not isinstance(default, bool):
        return documented == float(default)
    return bool(documented == default)


def defaults_in(cell: str, count: int) -> list[str]:
    parts = [part.strip() for part in re.sub(r"\s*\([^)]*\)", "", cell).split(" / ")]
    return parts * count if len(parts) == 1 else parts


def all_variables() -> set[str]:
    names: set[str] = set()
    for cls in (*CHASSIS_CLASSES, *(settings_class(name) for name in SERVICES)):
        names |= set(variables(cls))
    return names


def documented_text() -> str:
    return "\n".join(doc.read_text() for doc in DOCS)


def test_every_variable_a_settings_class_reads_is_documented() -> None:
    text = documented_text()
    missing = sorted(name for name in all_variables() if not re.search(rf"\b{name}\b", text))
    assert not missing, f"settings no doc names: {missing}"


def checked_rows() -> list[tuple[str, str, dict[str, Any], str]]:
    """(doc, variable, its defaults by class, documented default) for every row of the two settings tables."""
    chassis_defaults: dict[str, Any] = {}
    for cls in CHASSIS_CLASSES:
        chassis_defaults = variables(cls) | chassis_defaults
    rows: list[tuple[str, str, dict[str, Any], str]] = []
    for cells in table_rows(CHASSIS_DOC, "## Settings (environment variables)"):
        names = names_in(cells[0])
        for name, default in zip(names, defaults_in(cells[1], len(names)), strict=True):
            rows.append(("chassis.md", name, {"chassis": chassis_defaults.get(name, NotImplemented)}, str(default)))
    for cells in table_rows(SERVICES_DOC, "## Each service's own settings"):
        services = [s.strip() for s in cells[0].split(",")]
        assert set(services) <= set(SERVICES), cells[0]
        names = names_in(cells[1])
        for name, default in zip(names, defaults_in(cells[2], len(names)), strict=True):
            readers = {s: variables(settings_class(s)).get(name, NotImplemented) for s in services}
            rows.append(("services.md", name, readers, str(default)))
    return rows


def test_every_variable_in_a_settings_table_is_read_by_its_service() -> None:
    unknown = [
        (doc, name)
        for doc, name, readers, _ in checked_rows()
        if name not in NOT_A_FIELD and all(default is NotImplemented for default in readers.values())
    ]
    assert not unknown, f"settings tables name variables no settings class reads: {unknown}"


def defaults_to_check() -> list[Any]:
    return [
        pytest.param(name, readers, documented, id=f"{doc}:{','.join(readers)}:{name}")
        for doc, name, readers, documented in checked_rows()
        if name not in NOT_A_FIELD
        and parsed(documented) is not NotImplemented
        # A name no class reads is test_every_variable_in_a_settings_table_is_read_by_its_service's to report.
        and any(default is not NotImplemented for default in readers.values())
    ]


@pytest.mark.parametrize(("name", "readers", "documented"), defaults_to_check())
def test_a_documented_default_is_the_code_default(name: str, readers: dict[str, Any], documented: str) -> None:
    value = parsed(documented)
    for reader, default in readers.items():
        if default is NotImplemented:  # one of several services a row names that does not read this one
            continue
        assert agrees(value, default), f"{name} documented as {documented}, {reader} has {default!r}"
