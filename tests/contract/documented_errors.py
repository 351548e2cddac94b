"""The errors each RPC's own contract documents: the "Errors" paragraph of its comment in protos/.

A client writes its error handling from that paragraph, so an answer whose code it does not list (catalog's
GetProduct answering FAILED_PRECONDITION for an unknown product, which it documents as NOT_FOUND) breaks the
contract as surely as a malformed status does. The paragraph is read from the proto source: the generated
descriptors carry no comments.

The paragraph is the comment's lines from one starting "Errors" to the next empty comment line. A gRPC code (a
grpc.StatusCode name), outside parentheses, opens a part where a list opens one: after the "Errors ...:" that
starts the paragraph, a list item's "-", a ";" or a ","; named anywhere else it is prose ("the same answer,
instead of ABORTED") and opens nothing. A part runs to the next code that opens one. Its reasons are the
UPPER_SNAKE words a "reason" or "reasons" introduces, listed with ",", "/", "or" and "and" (a parenthesis after
one is skipped): "ErrorInfo reason RESERVATION_EXPIRED (...) or RESERVATION_RELEASED". Other upper-case words
(metadata values, setting names, states) are not reasons; violation reasons ("violation reason TOO_LONG") are,
which only widens what passes. A code named once without any reason is documented with any reason.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos" / "shopmesh"

CODES = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}
# Upper-case words, and the parentheses around them: a code named in parentheses is not one the RPC answers but a
# word of the part it is in (a violation reason OUT_OF_RANGE inside an INVALID_ARGUMENT's list).
TOKEN = re.compile(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b|[()]")
UPPER = re.compile(r"[A-Z][A-Z0-9_]*[A-Z0-9]")
# Every word and punctuation mark: a list item's "-" stands alone between spaces ("e-mail" is one word).
WORD = re.compile(r"(?<!\S)-(?=\s)|[(),;:/.]|[^\s(),;:/.]+")
# What may stand right before a code that opens a part (":" only before the first: the "Errors ...:").
OPENERS = {",", ";", "-"}
REASON_WORDS = {"reason", "reasons"}
LIST_JOINS = {",", "/", "or", "and"}

# What the common conventions (protos/shopmesh/common/v1/money.proto, "Errors" and "Text"; docs/contracts.md
# points there) let every RPC answer beside its own list. Any RPC that uses its service's database: UNAVAILABLE
# DATABASE_UNAVAILABLE (every RPC lists UNAVAILABLE itself). Any RPC: INVALID_ARGUMENT NUL_CHARACTER for a NUL
# in any field ("Text").
IMPLIED_REASONS = {
    grpc.StatusCode.UNAVAILABLE: {"DATABASE_UNAVAILABLE"},
    grpc.StatusCode.INVALID_ARGUMENT: {"NUL_CHARACTER"},
}
# VALIDATION_FAILED is the reason "unless a more specific reason is documented" of an INVALID_ARGUMENT the RPC
# answers: one whose paragraph documents no INVALID_ARGUMENT (ListCategories) is not let answer it by this.
VALIDATION_FAILED = "VALIDATION_FAILED"
# And any RPC that writes (every one not marked NO_SIDE_EFFECTS): ABORTED CONCURRENT_UPDATE, a lost race.
WRITER_CODES = {grpc.StatusCode.ABORTED: {"CONCURRENT_UPDATE"}}
# And any RPC of any service: what the conventions' "Errors" says the chassis answers for every service, whatever
# the RPC's own list (test_rpc_errors_documented ties each to that text). Shed at its GRPC_MAX_CONCURRENT_RPCS, a
# dependency away after its channel's retries, its work cut short inside it, a body that is no request message.
CHASSIS_REASONS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: {"SERVER_OVERLOADED"},
    grpc.StatusCode.UNAVAILABLE: {"DEPENDENCY_UNAVAILABLE", "INTERRUPTED"},
    grpc.StatusCode.INVALID_ARGUMENT: {"MALFORMED_REQUEST", "NOT_UTF8"},
}
# And any RPC of the gateway: the errors shop.proto's service comment says the gateway itself, or the HTTP/gRPC-Web
# edge in front of it, answers any call with, beside each RPC's own (test_rpc_errors_documented ties each to that
# text). Its own rate limit, a deadline below its floor, a body over 1 MiB, a malformed gRPC header or frame, an
# encoding it does not read and a request that did not arrive whole in time.
GATEWAY = "shopmesh.gateway."
GATEWAY_REASONS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: {"RATE_LIMITED", "REQUEST_TOO_LARGE"},
    grpc.StatusCode.INVALID_ARGUMENT: {"DEADLINE_TOO_SHORT", VALIDATION_FAILED},
    grpc.StatusCode.UNIMPLEMENTED: {"UNSUPPORTED_GRPC_ENCODING"},
    grpc.StatusCode.DEADLINE_EXCEEDED: {"REQUEST_TIMEOUT"},
}


@dataclass
class Documented:
    """One RPC's documented errors: code -> its reasons (empty: any reason)."""

    paragraph: str
    reasons: dict[grpc.StatusCode, set[str]] = field(default_factory=dict)


def header_comment(text: str) -> list[str]:
    """The comment atop a proto file (`text`): its `//` lines up to the first other one (a blank line, the syntax
    statement), where a contract writes its conventions and its errors."""
    return list(itertools.takewhile(lambda line: line.startswith("//"), text.splitlines()))


def errors_paragraph(comment: list[str]) -> str | None:
    """The "Errors" paragraph of an RPC's comment lines (their text after `//`), joined: from the line that starts
    with "Errors" to the next empty one; None without one."""
    for start, line in enumerate(comment):
        if re.match(r"Errors\b", line):
            end = comment.index("", start) if "" in comment[start:] else len(comment)
            return " ".join(comment[start:end])
    return None


def parse(paragraph: str) -> dict[grpc.StatusCode, set[str]]:
    """code -> the reasons the paragraph names for it; empty when it names the code bare at least once."""
    reasons: dict[grpc.StatusCode, set[str]] = {}
    bare: set[grpc.StatusCode] = set()
    current: grpc.StatusCode | None = None
    part: set[str] = set()

    def close() -> None:
        if current is not None:
            reasons.setdefault(current, set()).update(part)
            if not part:
                bare.add(current)

    depth = 0
    previous: str | None = None  # the word before, at any depth
    # A reason list: the depth it is at (None: none open), and whether a reason is due next (after "reason" or a
    # join) rather than a join.
    listing: int | None = None
    due = False
    for word in (match.group() for match in WORD.finditer(paragraph)):
        code = CODES.get(word) if depth == 0 else None
        if word in "()":
            depth = depth + 1 if word == "(" else max(0, depth - 1)
            if listing is not None and depth < listing:
                listing = None
        elif code is not None:
            listing = None
            if previous is None or previous in OPENERS or (previous == ":" and current is None):
                close()
                current, part = code, set()
        elif listing is not None and depth == listing:  # deeper: a parenthesis after a reason, skipped
            if due and UPPER.fullmatch(word):
                part.add(word)
                due = False
            elif word in LIST_JOINS:
                due = True  # ", or" joins as one
            else:
                listing = None
        if word in REASON_WORDS:
            listing, due = depth, True
        previous = word
    close()
    return {code: set() if code in bare else named for code, named in reasons.items()}


def rpc_comments(text: str) -> dict[str, list[str]]:
    """`package.Service.Method` -> the lines of the comment right above its `rpc`, for every RPC of one proto
    file's `text`."""
    lines = text.splitlines()
    package = next(m.group(1) for line in lines if (m := re.match(r"package ([\w.]+);", line)))
    found: dict[str, list[str]] = {}
    service = ""
    for index, line in enumerate(lines):
        if opened := re.match(r"service (\w+)", line):
            service = opened.group(1)
        elif rpc := re.match(r"\s+rpc (\w+)\(", line):
            comment: list[str] = []
            above = index - 1
            while above >= 0 and lines[above].strip().startswith("//"):
                comment.insert(0, lines[above].strip().removeprefix("//").strip())
                above -= 1
            found[f"{package}.{service}.{rpc.group(1)}"] = comment
    return found


def documented_in(*protos: str) -> dict[str, Documented]:
    """`package.Service.Method` -> its documented errors, for every RPC of these proto files' texts whose comment
    has an Errors paragraph."""
    documented = {}
    for text in protos:
        for name, comment in rpc_comments(text).items():
            if (paragraph := errors_paragraph(comment)) is not None:
                documented[name] = Documented(paragraph, parse(paragraph))
    return documented


@functools.cache  # the protos do not change while tests run
def documented_errors() -> dict[str, Documented]:
    """Every RPC of protos/ whose comment has an Errors paragraph -> its documented errors."""
    return documented_in(*(path.read_text() for path in sorted(PROTOS.rglob("*.proto"))))


def allowed(method: MethodDescriptor) -> dict[grpc.StatusCode, set[str]]:
    """What `method` may answer: its own Errors paragraph, what the conventions imply for every RPC (the chassis'
    answers among them) and, for a gateway RPC, the gateway's service-wide errors."""
    own = documented_errors().get(method.full_name)
    answers: dict[grpc.StatusCode, set[str]] = defaultdict(set)
    for code, reasons in (own.reasons if own else {}).items():
        answers[code] = set(reasons)
    implied = {code: set(reasons) for code, reasons in IMPLIED_REASONS.items()}
    for code, reasons in CHASSIS_REASONS.items():
        implied[code] = implied.get(code, set()) | reasons
    if grpc.StatusCode.INVALID_ARGUMENT in answers:
        implied[grpc.StatusCode.INVALID_ARGUMENT].add(VALIDATION_FAILED)
    if method.GetOptions().idempotency_level != descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS:
        implied |= WRITER_CODES
    if method.full_name.startswith(GATEWAY):
        for code, reasons in GATEWAY_REASONS.items():
            implied[code] = implied.get(code, set()) | reasons
    for code, reasons in implied.items():
        if code not in answers or answers[code]:  # a code documented with any reason stays so
            answers[code] |= reasons
    return dict(answers)


def undocumented(method: MethodDescriptor, code: grpc.StatusCode, reason: str | None) -> str | None:
    """Why an answer is not among the errors `method` documents (None: it is)."""
    answers = allowed(method)
    if code not in answers:
        return f"{code.name}: not among {method.name}'s documented errors ({', '.join(c.name for c in answers)})"
    if answers[code] and reason not in answers[code]:
        return f"{code.name} {reason}: not a reason {method.name} documents for {code.name} ({sorted(answers[code])})"
    return None
