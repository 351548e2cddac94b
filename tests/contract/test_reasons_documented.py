"""Every ErrorInfo reason a service can answer is written down where a client reads its contract.

Clients branch on the reason, never on the message (docs/contracts.md), so a reason that no contract
names is one a client cannot be written for. The common conventions (protos/shopmesh/common/v1/money.proto,
"Errors") even promise the opposite of an undocumented reason: an INVALID_ARGUMENT carries "ErrorInfo
reason VALIDATION_FAILED unless a more specific reason is documented".

The reasons are read from the services', the chassis' and the HTTP edge's source (every `reason=` of a raised
domain error, or of the ErrorInfo the edge answers itself:
a string, a constant holding one, either branch of a conditional, or the `.value` of a field typed with an
enum, such as orders' cancel code) and each must appear in a contract (protos/**/*.proto): a service's (or the
edge's) in its own contract, protos/shopmesh/<service>/ (the gateway's for the edge) or the common conventions,
which its clients read; the chassis' own, which it answers for every service, in the conventions themselves (the
comment atop protos/shopmesh/common/v1/money.proto), which every service's clients read. A `reason=` that passes
a parameter on is checked where the parameter's value is written, a `reason` parameter's default included
(grpc_errors.dependency_unavailable's DEPENDENCY_UNAVAILABLE). A few reasons never
leave the process that makes them (an internal state machine's guard, a client channel's local error that the
caller translates); they are listed below with where they stay, so that the list is a decision and not a gap.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from .documented_errors import header_comment

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
# What a `reason=` may pass as a string: one word too (the chassis' INTERRUPTED). Only names assigned a string
# are held to REASON: a constant of one upper-case word is as likely a setting or a state as a reason.
RAISED = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
# The conventions every contract follows, atop this file: what the chassis answers for every service is written
# there, once, for every service's clients.
CONVENTIONS = ROOT / "protos" / "shopmesh" / "common" / "v1" / "money.proto"

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
    # The chassis' client channel (client.py; INBOUND_DEADLINE_EXCEEDED also from the database's work of a call out
    # of time, db.py): local errors in domain "shopmesh.chassis", which the gateway
    # (grpc_errors.relayed) and every other server's interceptor answer as their own UNAVAILABLE
    # DEPENDENCY_UNAVAILABLE or INTERNAL, never with this reason.
    "INBOUND_DEADLINE_EXCEEDED",
    "UNSENDABLE_METADATA",
    "CIRCUIT_OPEN",
    # The chassis' replay of a status sent before (errors.ReplayedError: an idempotency key's stored error, a
    # relayed dependency's answer): the server sends the stored status byte for byte, never this reason.
    "REPLAYED",
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

    def passed(node: ast.AST) -> list[ast.expr]:
        """What `node` passes as a reason: a call's `reason=`, a function's `reason` parameter's default."""
        if isinstance(node, ast.Call):
            return [keyword.value for keyword in node.keywords if keyword.arg == "reason"]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            defaults: list[tuple[ast.arg, ast.expr | None]] = [
                *zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True),
                *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
            ]
            return [default for arg, default in defaults if arg.arg == "reason" and default is not None]
        return []

    reasons: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            for value in passed(node):
                for reason in candidates(value):
                    if RAISED.match(reason):
                        reasons[reason].add(str(path.relative_to(ROOT)))
    return reasons


def contracts() -> str:
    return "\n".join(path.read_text() for path in sorted((ROOT / "protos" / "shopmesh").rglob("*.proto")))


def documentation() -> str:
    return "\n".join([contracts(), *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))])


def conventions(text: str | None = None) -> str:
    """The conventions every contract follows: the comment atop common/v1/money.proto (`text`: that file's)."""
    return "\n".join(header_comment(CONVENTIONS.read_text() if text is None else text))


def test_the_scan_finds_the_reasons_the_contracts_are_known_to_name() -> None:
    """The checker itself: it must see reasons raised as strings, as constants, through a module, in either
    branch of a conditional (the chassis' NOT_UTF8), as an enum field's value (orders' cancel codes), as a
    `reason` parameter's default (the chassis' DEPENDENCY_UNAVAILABLE) and of one word (its INTERRUPTED)."""
    reasons = raised_reasons()
    assert "libs/chassis/src/shopmesh_chassis/grpc_errors.py" in reasons["DEPENDENCY_UNAVAILABLE"]
    assert "libs/chassis/src/shopmesh_chassis/server_interceptor.py" in reasons["INTERRUPTED"]
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


def own_contract(file: str, header: str | None = None) -> str:
    """The contract whose clients get the reasons `file` raises: its service's protos, the gateway's for the edge in
    front of it (libs/platform), with the conventions every service shares (common/v1); for the chassis, which
    answers for every service, the conventions' header itself (`header`, else money.proto's)."""
    parts = Path(file).parts
    if parts[0] == "services":
        name = parts[1]
    elif file.startswith(str(EDGE.relative_to(ROOT))):
        name = "gateway"
    else:
        return conventions() if header is None else header
    protos = ROOT / "protos" / "shopmesh"
    return "\n".join(
        path.read_text() for folder in (name, "common") for path in sorted((protos / folder).rglob("*.proto"))
    )


def not_in_own_contract(header: str | None = None) -> list[str]:
    """Each "REASON (file)": a reason raised in a file whose own contract (`own_contract`, with the conventions'
    `header`) does not name it."""
    return sorted(
        f"{reason} ({file})"
        for reason, files in raised_reasons().items()
        if reason not in INTERNAL
        for file in files
        if not re.search(rf"\b{reason}\b", own_contract(file, header))
    )


def test_a_reason_is_written_in_the_contract_of_the_service_that_answers_it() -> None:
    """A client of catalog reads catalog.proto (and the common conventions), not orders.proto: a reason a service
    raises that only another service's contract names is one its own clients were never told of. A reason the
    chassis answers for every service is in the conventions' header, which every service's clients read: a
    chapter of docs/chassis.md is no contract."""
    elsewhere = not_in_own_contract()
    assert elsewhere == [], (
        "ErrorInfo reasons missing from the raising service's own proto (protos/shopmesh/<service>/, the gateway's "
        "for libs/platform; the conventions atop common/v1/money.proto for libs/chassis, which answers them for "
        f"every service): write each in the comment of the RPC that answers it, or in the conventions: {elsewhere}"
    )


def test_a_chassis_reason_missing_from_the_conventions_header_is_reported() -> None:
    """The check above is no formality: the conventions without SERVER_OVERLOADED (written elsewhere in the
    contracts and in docs/chassis.md all the same) fail it, naming the chassis file that sheds; the header
    alone decides, not the rest of money.proto (a Money field's comment)."""
    header = conventions()
    without = re.sub(r"\bSERVER_OVERLOADED\b", "SHED", header)
    shed_here = "libs/chassis/src/shopmesh_chassis/server_interceptor.py"
    assert not_in_own_contract(without) == [f"SERVER_OVERLOADED ({shed_here})"]
    assert conventions(f'{header}\nsyntax = "proto3";\n// SERVER_OVERLOADED\n') == header


def test_the_internal_reasons_are_still_raised_and_no_contract_promises_them() -> None:
    """The allow-list stays a decision: an entry nothing raises any more is dropped, and a reason a contract
    names is one a client can get, which the list must not hide."""
    reasons = raised_reasons()
    written = contracts()
    assert sorted(INTERNAL - reasons.keys()) == []
    assert sorted(r for r in INTERNAL if re.search(rf"\b{r}\b", written)) == []
