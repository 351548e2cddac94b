"""Every ErrorInfo reason a service can answer is written down where a client reads its contract.

Clients branch on the reason, never on the message (docs/contracts.md), so a reason that no contract
names is one a client cannot be written for. The common conventions (protos/shopmesh/common/v1/money.proto,
"Errors") even promise the opposite of an undocumented reason: an INVALID_ARGUMENT carries "ErrorInfo
reason VALIDATION_FAILED unless a more specific reason is documented".

The reasons are read from the services' and the chassis' source (every `reason=` of a raised domain error,
a string or a constant holding one) and each must appear in a contract (protos/**/*.proto) or, for the
chassis' own answers that every service shares, in docs/*.md. A few reasons never leave the process that
makes them (an internal state machine's guard, a client channel's local error that the caller translates);
they are listed below with where they stay, so that the list is a decision and not a gap.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    *sorted((ROOT / "services").glob("*/src")),
    ROOT / "libs" / "chassis" / "src",
]
# The chassis' conformance service and test helpers: not deployed, not a contract of the shop.
EXCLUDED = ("testing",)
REASON = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")

# Reasons that never reach a client, and where they stay.
INTERNAL = {
    # notifications' sender: the delivery state machine's guards, caught by the sender, no RPC raises them.
    "NOTIFICATION_NOT_PENDING",
    "NOTIFICATION_NOT_SUPERSEDABLE",
    # orders' saga: a transition's guard (a bug if it fires) and the save's version check, which the saga
    # catches and retries.
    "ILLEGAL_SAGA_TRANSITION",
    "CONCURRENT_MODIFICATION",
    # orders' saga while a charge of a driver that is gone may still land: only a driver without the card
    # (the recovery loop) meets it; a PlaceOrder call carries its card.
    "CHARGE_IN_DOUBT",
    # The chassis' client channel: local errors in domain "shopmesh.chassis", which callers translate.
    "INBOUND_DEADLINE_EXCEEDED",
    "UNSENDABLE_METADATA",
    # recommendations' FAULT_MODE=fail, a demo switch; the gateway answers it with its fallback.
    "FAULT_INJECTED",
}


def _files() -> list[Path]:
    return [
        path
        for source in SOURCES
        for path in sorted(source.rglob("*.py"))
        if not any(part in EXCLUDED for part in path.relative_to(source).parts)
    ]


def _constants(trees: dict[Path, ast.Module]) -> dict[str, set[str]]:
    """NAME -> the UPPER_SNAKE strings assigned to it at module or class level anywhere in the source."""
    found: dict[str, set[str]] = defaultdict(set)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                if isinstance(value, str) and REASON.match(value):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            found[target.id].add(value)
    return found


def raised_reasons() -> dict[str, set[str]]:
    """reason -> the files that raise a domain error with it."""
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in _files()}
    constants = _constants(trees)
    reasons: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg != "reason":
                    continue
                value = keyword.value
                candidates: set[str] = set()
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    candidates = {value.value}
                elif isinstance(value, ast.Name):
                    candidates = constants.get(value.id, set())
                elif isinstance(value, ast.Attribute):
                    candidates = constants.get(value.attr, set())
                for reason in candidates:
                    if REASON.match(reason):
                        reasons[reason].add(str(path.relative_to(ROOT)))
    return reasons


def documentation() -> str:
    texts = [path.read_text() for path in sorted((ROOT / "protos" / "shopmesh").rglob("*.proto"))]
    texts += [path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(texts)


def test_the_scan_finds_the_reasons_the_contracts_are_known_to_name() -> None:
    """The checker itself: it must see reasons raised as strings, as constants and through a module."""
    reasons = raised_reasons()
    for known in ("ORDER_NOT_FOUND", "PRODUCT_NOT_FOUND", "PASSWORD_HASHING_BUSY", "DEPENDENCY_UNAVAILABLE"):
        assert known in reasons, known


def test_every_reason_a_service_answers_is_documented() -> None:
    docs = documentation()
    undocumented = {
        reason: sorted(files)
        for reason, files in sorted(raised_reasons().items())
        if reason not in INTERNAL and not re.search(rf"\b{reason}\b", docs)
    }
    assert undocumented == {}, (
        f"ErrorInfo reasons a client can get that no contract (protos/) or doc (docs/*.md) names: {undocumented}"
    )
