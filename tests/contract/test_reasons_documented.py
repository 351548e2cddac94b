"""Every ErrorInfo reason a service can answer is written down where a client reads its contract.

Clients branch on the reason, never on the message (docs/contracts.md), so a reason that no contract
names is one a client cannot be written for. The common conventions (protos/shopmesh/common/v1/money.proto,
"Errors") even promise the opposite of an undocumented reason: an INVALID_ARGUMENT carries "ErrorInfo
reason VALIDATION_FAILED unless a more specific reason is documented".

The reasons are read from the services', the chassis' and the HTTP edge's source (every `reason=` of a raised
domain error, or of the ErrorInfo the edge answers itself:
a string, a constant holding one, either branch of a conditional, or the `.value` of a field typed with an
enum, such as orders' cancel code) and each must appear in a contract (protos/**/*.proto) or, for the
chassis' own answers that every service shares, in docs/*.md; a service's (or the edge's) in its own contract,
protos/shopmesh/<service>/ (the gateway's for the edge) or the common conventions, which its clients read.
A `reason=` that passes a parameter on is checked where the parameter's value is written. A few reasons never
leave the process that makes them (an internal state machine's guard, a client channel's local error that the
caller translates); they are listed below with where they stay, so that the list is a decision and not a gap.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHASSIS = ROOT / "libs" / "chassis" / "src"
EDGE = ROOT / "libs" / "platform" / "src"
SOURCES = [
    *sorted((ROOT / "services").glob("*/src")),
    CHASSIS,
    # The HTTP/gRPC-Web edge in front of the gateway (http_api/): its own answers reach the gateway's clients.
    EDGE,
]
# The chassis' conformance service and test helpers: not deployed, not a contract of the shop.
EXCLUDED = ("testing",)
REASON = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")

# Reasons that never reach a client, and where they stay.
INTERNAL = {
    # notifications' delivery state machine (domain/model.py): guards of sent() and superseded(), which only
    # the sender's delivery loop calls, on a PENDING notification it has checked; ListNotifications, the
    # service's only RPC, calls neither.
    "NOTIFICATION_NOT_PENDING",
    "NOTIFICATION_NOT_SUPERSEDABLE",
    # orders' saga: a transition's guard (domain/model.py; a bug if it fires), and the save's version check
    # (store/repository.py), which SagaDriver.drive and recheck_charge turn into LeaseHeld (another driver
    # has the order), and which CancelOrder's save, under the order's row lock, cannot meet.
    "ILLEGAL_SAGA_TRANSITION",
    "CONCURRENT_MODIFICATION",
    # orders' saga while a charge of a driver that is gone may still land (saga.py): only a driver without
    # the card meets it, at the CHARGE step: the recovery loop, which logs it. PlaceOrder drives with its
    # card, and CancelOrder (no card) only drives a CONFIRMED order, past the charge.
    "CHARGE_IN_DOUBT",
    # The chassis' client channel (client.py): local errors in domain "shopmesh.chassis", which the gateway
    # (grpc_errors.relayed) and every other server's interceptor answer as their own UNAVAILABLE
    # DEPENDENCY_UNAVAILABLE or INTERNAL, never with this reason.
    "INBOUND_DEADLINE_EXCEEDED",
    "UNSENDABLE_METADATA",
    # recommendations' FAULT_MODE=fail (faults.py), a demo switch off by default, documented with the
    # setting (settings.py); its only caller, the gateway, answers it with its fallback recommendations.
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


def _enums(trees: dict[Path, ast.Module]) -> dict[str, set[str]]:
    """Enum class name -> its members' UPPER_SNAKE values."""
    found: dict[str, set[str]] = defaultdict(set)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("Enum") for base in node.bases):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and isinstance(statement.value, ast.Constant)
                        and isinstance(statement.value.value, str)
                        and REASON.match(statement.value.value)
                    ):
                        found[node.name].add(statement.value.value)
    return found


def _enum_fields(trees: dict[Path, ast.Module], enums: dict[str, set[str]]) -> dict[str, set[str]]:
    """Field name -> the enums its annotations name (`cancel_code: CancelCode | None`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                named = {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)}
                found[node.target.id] |= named & enums.keys()
    return found


def raised_reasons() -> dict[str, set[str]]:
    """reason -> the files that raise a domain error with it."""
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in _files()}
    constants = _constants(trees)
    enums = _enums(trees)
    enum_fields = _enum_fields(trees, enums)

    def candidates(value: ast.expr) -> set[str]:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return {value.value}
        if isinstance(value, ast.IfExp):
            return candidates(value.body) | candidates(value.orelse)
        if isinstance(value, ast.Name):
            return constants.get(value.id, set())
        if isinstance(value, ast.Attribute):
            if value.attr == "value" and isinstance(value.value, ast.Attribute | ast.Name):
                field = value.value.attr if isinstance(value.value, ast.Attribute) else value.value.id
                return {member for enum in enum_fields.get(field, ()) for member in enums[enum]}
            return constants.get(value.attr, set())
        return set()

    reasons: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg != "reason":
                    continue
                for reason in candidates(keyword.value):
                    if REASON.match(reason):
                        reasons[reason].add(str(path.relative_to(ROOT)))
    return reasons


def contracts() -> str:
    return "\n".join(path.read_text() for path in sorted((ROOT / "protos" / "shopmesh").rglob("*.proto")))


def documentation() -> str:
    return "\n".join([contracts(), *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))])


def test_the_scan_finds_the_reasons_the_contracts_are_known_to_name() -> None:
    """The checker itself: it must see reasons raised as strings, as constants, through a module, in either
    branch of a conditional (the chassis' NOT_UTF8) and as an enum field's value (orders' cancel codes)."""
    reasons = raised_reasons()
    for known in (
        "ORDER_NOT_FOUND",
        "PRODUCT_NOT_FOUND",
        "PASSWORD_HASHING_BUSY",
        "DEPENDENCY_UNAVAILABLE",
        "NOT_UTF8",
        "CHECKOUT_INTERRUPTED",
        "REQUEST_TOO_LARGE",
    ):
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


def test_a_reason_only_a_service_or_the_edge_answers_is_in_a_contract() -> None:
    """docs/*.md is enough only for the chassis' answers, which every service shares: a reason of one service's
    (or of the edge in front of the gateway) is written where its clients read, that service's proto."""
    written = contracts()
    chassis = str(CHASSIS.relative_to(ROOT))
    missing = {
        reason: sorted(files)
        for reason, files in sorted(raised_reasons().items())
        if reason not in INTERNAL
        and not all(file.startswith(chassis) for file in files)
        and not re.search(rf"\b{reason}\b", written)
    }
    assert missing == {}, f"ErrorInfo reasons of a service or the edge that no contract (protos/) names: {missing}"


def own_contract(file: str) -> str | None:
    """The contract whose clients get the reasons `file` raises: its service's protos, the gateway's for the edge in
    front of it (libs/platform), with the conventions every service shares (common/v1); None for the chassis."""
    parts = Path(file).parts
    if parts[0] == "services":
        name = parts[1]
    elif file.startswith(str(EDGE.relative_to(ROOT))):
        name = "gateway"
    else:
        return None
    protos = ROOT / "protos" / "shopmesh"
    return "\n".join(
        path.read_text() for folder in (name, "common") for path in sorted((protos / folder).rglob("*.proto"))
    )


def test_a_reason_is_written_in_the_contract_of_the_service_that_answers_it() -> None:
    """A client of catalog reads catalog.proto (and the common conventions), not orders.proto: a reason a service
    raises that only another service's contract names is one its own clients were never told of."""
    elsewhere = sorted(
        f"{reason} ({file})"
        for reason, files in raised_reasons().items()
        if reason not in INTERNAL
        for file in files
        if (contract := own_contract(file)) is not None and not re.search(rf"\b{reason}\b", contract)
    )
    assert elsewhere == [], (
        "ErrorInfo reasons missing from the raising service's own proto (protos/shopmesh/<service>/, the gateway's "
        f"for libs/platform): write each in the comment of the RPC that answers it: {elsewhere}"
    )


def test_the_internal_reasons_are_still_raised_and_no_contract_promises_them() -> None:
    """The allow-list stays a decision: an entry nothing raises any more is dropped, and a reason a contract
    names is one a client can get, which the list must not hide."""
    reasons = raised_reasons()
    written = contracts()
    assert sorted(INTERNAL - reasons.keys()) == []
    assert sorted(r for r in INTERNAL if re.search(rf"\b{r}\b", written)) == []
