"""Read the traces the local trace sink kept (`make traces`): the recent ones, or one as a tree of spans.

    python -m shopmesh_platform.traces                 the last 20 traces, newest last
    python -m shopmesh_platform.traces 4bf92f35        one trace (any unique prefix of its id)

A trace id is in every JSON log line (`trace_id`) and in the message of an INTERNAL error
(`trace_id=...`). Each span line shows its offset from the trace's start, its duration, the service,
the span's kind and name (an Envoy span's, the HTTP edge's or a sidecar's, with the gRPC method it carried),
and its status when it is not OK; children are indented under their parent.
Events carry the trace on: a consumer's span sits under the event's `create` span, in the trace that wrote
the event. The outbox relay sends it later in a trace of its own, linked to that span: its `send` span is
shown under the create span too, marked `(linked, trace ...)`, and such a trace is not listed on its own
while the span it links to is there, unless it failed (`make traces ID=` of its id shows it, marked
`(links to trace ...)`).
Without --dir it reads the folder of the running local stack's trace sink (named by `.data/stack.json`, which
the launcher writes while it runs; said on stderr), else `.data/traces`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from shopmesh_chassis.interrupts import exit_status_on_interrupt
from shopmesh_chassis.local_stack import local_address

from .arguments import whole_number
from .trace_sink import ROTATED_FILE, SPANS_FILE


@dataclass(frozen=True)
class Trace:
    trace_id: str
    spans: list[dict[str, Any]]

    @property
    def start_ns(self) -> int:
        return min(int(s["start_ns"]) for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(int(s["end_ns"]) for s in self.spans)

    @property
    def roots(self) -> list[dict[str, Any]]:
        """Spans without a parent in this trace (the caller's, e.g. grpcurl's, is never exported)."""
        ids = {s["span_id"] for s in self.spans}
        return sorted((s for s in self.spans if s["parent_span_id"] not in ids), key=lambda s: int(s["start_ns"]))

    @property
    def failed(self) -> bool:
        return any(s["status"] == "error" for s in self.spans)


def links(span: dict[str, Any]) -> list[tuple[str, str]]:
    """The (trace id, span id) of each span `span` links to; none in a line written before the sink kept links."""
    found = span.get("links")
    if not isinstance(found, list):
        return []
    return [
        (link["trace_id"], link["span_id"])
        for link in found
        if isinstance(link, dict) and isinstance(link.get("trace_id"), str) and isinstance(link.get("span_id"), str)
    ]


def shown_within(trace: Trace, spans: set[tuple[str, str]]) -> bool:
    """Whether `trace` is shown in the tree of another trace rather than listed: every root of it links to a
    span of `spans` (the (trace id, span id) of each loaded span) in another trace, which print_tree shows it
    under (the relay's send traces, under their events' create spans).

    The linked span, not just its trace: rotation drops spans.jsonl.1, and with it a trace's older spans (the
    create span) while its later ones (the consumers') stay; a send hidden for its trace was in no tree either.
    A failed trace stays listed: a publish that failed or was set aside is found in the list at the time it
    failed, marked ERROR, rather than only under a checkout that itself went well (and may be older than
    --last reaches: the relay retries for as long as NATS is away)."""
    roots = trace.roots
    return (
        bool(roots)
        and not trace.failed
        and all(any(t != trace.trace_id and (t, s) in spans for t, s in links(root)) for root in roots)
    )


# What the list and the tree read of a span (every line the sink writes has them).
SPAN_KEYS = frozenset(
    {
        "trace_id",
        "span_id",
        "parent_span_id",
        "service",
        "name",
        "kind",
        "start_ns",
        "end_ns",
        "status",
        "status_message",
    }
)


def _span(line: str) -> dict[str, Any] | None:
    """The span on one line of the sink's file, or None for a line that holds no whole span."""
    try:
        span = json.loads(line)
    except ValueError:
        return None
    if not isinstance(span, dict) or not span.keys() >= SPAN_KEYS:
        return None
    return span


def load(directory: Path, err: TextIO | None = None) -> list[Trace]:
    """Every trace in the sink's files (the rotated one first), oldest first.

    A sink killed mid-write (the launcher's second Ctrl-C, a full disk) leaves a torn line; the lines around
    it are whole, so it is skipped, with one warning on `err`, rather than hiding every trace."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    torn: Counter[Path] = Counter()
    for path in (directory / ROTATED_FILE, directory / SPANS_FILE):
        if not path.is_file():
            continue
        # The sink writes ASCII JSON; a torn or garbled byte is one more torn line, not a UnicodeDecodeError.
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                span = _span(line)
                if span is None:
                    torn[path] += 1
                else:
                    by_trace[span["trace_id"]].append(span)
    if torn:
        where = ", ".join(f"{n} in {path}" for path, n in torn.items())
        print(f"warning: skipped {torn.total()} line(s) that hold no whole span ({where})", file=err or sys.stderr)
    return sorted((Trace(tid, spans) for tid, spans in by_trace.items()), key=lambda t: t.start_ns)


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.1f} ms"


def _when(nanoseconds: int) -> str:
    """ISO 8601 in UTC with its marker, to the millisecond, as the services' log lines write their `time`: a
    trace's start is found among them as it is written."""
    started = datetime.fromtimestamp(nanoseconds // 1_000_000_000, UTC)
    return f"{started:%Y-%m-%dT%H:%M:%S}.{nanoseconds // 1_000_000 % 1000:03d}Z"


def _what(span: dict[str, Any]) -> str:
    """A span's name, with the gRPC method an Envoy span is about: the edge's span is named `public API` and a
    sidecar's `inbound` or `outbound to <callee>`, so without it every trace of `make run MESH=envoy` listed
    the same root, `gateway-sidecar: inbound`, and grpcurl's reflection calls looked like the shop's."""
    attributes = span.get("attributes")
    path = attributes.get("grpc.path") if isinstance(attributes, dict) else None
    if isinstance(path, str) and path and path != span["name"]:
        return f"{span['name']} {path}"
    return str(span["name"])


def print_list(traces: list[Trace], out: TextIO) -> None:
    if not traces:
        print("no traces yet (`make run` records them; call a service first)", file=out)
        return
    rows = []
    for trace in traces:
        root = trace.roots[0]
        services = sorted({s["service"] for s in trace.spans})
        rows.append(
            (
                trace.trace_id,
                _when(trace.start_ns),
                _ms(trace.end_ns - trace.start_ns),
                str(len(trace.spans)),
                ",".join(services),
                f"{root['service']}: {_what(root)}" + ("  ERROR" if trace.failed else ""),
            )
        )
    header = ("TRACE ID", "STARTED", "DURATION", "SPANS", "SERVICES", "ROOT")
    print(tabulate(rows, headers=header, tablefmt="plain", disable_numparse=True), file=out)


def print_tree(trace: Trace, out: TextIO, others: Sequence[Trace] = ()) -> None:
    """`trace` as a tree, and under each of its spans the spans of `others` linked to it (a send span under
    its event's create span)."""
    print(
        f"trace {trace.trace_id}: {len(trace.spans)} spans, {_ms(trace.end_ns - trace.start_ns)}, "
        f"started {_when(trace.start_ns)}",
        file=out,
    )
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in trace.spans:
        children[span["parent_span_id"]].append(span)
    # Span ids of other traces are not this one's: a linked span is shown alone, without its trace's children.
    linked: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for other in others:
        if other.trace_id != trace.trace_id:
            for span in other.spans:
                for trace_id, span_id in links(span):
                    if trace_id == trace.trace_id:
                        linked[span_id].append(span)

    def show(span: dict[str, Any], depth: int, note: str = "") -> None:
        offset = _ms(int(span["start_ns"]) - trace.start_ns)
        duration = _ms(int(span["end_ns"]) - int(span["start_ns"]))
        status = ""
        if span["status"] == "error":
            status = f"  ERROR {span['status_message']}".rstrip()
        if not note:
            elsewhere = sorted({t[:8] for t, _ in links(span) if t != trace.trace_id})
            note = f"  (links to trace {', '.join(elsewhere)})" if elsewhere else ""
        what = f"{span['service']}  {span['kind']}  {_what(span)}{status}{note}"
        print(f"{'+' + offset:>11} {duration:>10}  {'  ' * depth}{what}", file=out)
        below = [(child, "") for child in children[span["span_id"]]]
        below += [(other, f"  (linked, trace {other['trace_id'][:8]})") for other in linked[span["span_id"]]]
        for child, child_note in sorted(below, key=lambda pair: int(pair[0]["start_ns"])):
            show(child, depth + 1, child_note)

    for root in trace.roots:
        show(root, 0)


DEFAULT_DIR = Path(".data", "traces")
# The newest ids an ambiguous prefix matched that its error lists.
AMBIGUOUS_SHOWN = 5


def sink_dir(err: TextIO) -> Path:
    """Where the running local stack's trace sink writes (.data/stack.json, said on `err`), else DEFAULT_DIR."""
    return Path(
        local_address(
            err,
            "traces",
            lambda stack: stack.traces_dir,
            str(DEFAULT_DIR),
            runs_no="trace sink (OTEL_EXPORTER_OTLP_ENDPOINT)",
        ).address
    )


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.traces", description=__doc__.splitlines()[0])
    parser.add_argument("trace_id", nargs="?", help="show this trace (a unique prefix will do)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"the trace sink's directory (default: the running local stack's, else {DEFAULT_DIR})",
    )
    parser.add_argument(
        "--last", type=whole_number(0), default=20, help="how many traces to list (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.dir is None:
        args.dir = sink_dir(err)
    traces = load(args.dir, err)
    if args.trace_id is None:
        spans = {(s["trace_id"], s["span_id"]) for t in traces for s in t.spans}
        listed = [t for t in traces if not shown_within(t, spans)]
        # Not listed[-last:]: -0 is 0, and --last 0 listed every trace.
        newest = listed[len(listed) - min(args.last, len(listed)) :]
        if newest or not listed:
            print_list(newest, out)
        return 0
    wanted = args.trace_id.lower()
    matches = [t for t in traces if t.trace_id.startswith(wanted)]
    if len(matches) != 1:
        said = "no trace" if not matches else f"{len(matches)} traces"
        # A prefix that matched several said only how many, and a user had to list them to pick more digits.
        shown = [t.trace_id for t in matches[-AMBIGUOUS_SHOWN:]]
        more = "" if len(matches) <= AMBIGUOUS_SHOWN else f", and {len(matches) - AMBIGUOUS_SHOWN} older"
        which = f": give more of the id ({', '.join(shown)}{more})" if matches else ""
        print(f"error: {said} with an id starting {wanted!r} in {args.dir / SPANS_FILE}{which}", file=err)
        return 1
    print_tree(matches[0], out, traces)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(exit_status_on_interrupt(main))
    except BrokenPipeError:
        # `make traces ID=... | head`: the reader left early. Python's documented idiom, so that the
        # interpreter's final flush does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
