"""Reading the trace sink's file: the recent traces as a list, one as a tree; unknown ids say so."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shopmesh_platform.trace_sink import SPANS_FILE
from shopmesh_platform.traces import main


def span(trace: str, span_id: str, parent: str, service: str, name: str, start: float, end: float, **kw: str) -> str:
    """One line of spans.jsonl; start and end in milliseconds since the epoch; `links`: "trace/span" ones, comma
    separated (a line the sink wrote before it kept links has none)."""
    record = {
        "trace_id": trace, "span_id": span_id, "parent_span_id": parent, "service": service, "name": name,
        "kind": kw.get("kind", "server"), "start_ns": int(start * 1e6), "end_ns": int(end * 1e6),
        "status": kw.get("status", "unset"), "status_message": kw.get("message", ""),
        "attributes": {"grpc.path": kw["grpc_path"]} if "grpc_path" in kw else {},
    }  # fmt: skip
    if "links" in kw:
        record["links"] = [
            dict(zip(("trace_id", "span_id"), link.split("/"), strict=True)) for link in kw["links"].split(",")
        ]
    return json.dumps(record) + "\n"


def write(directory: Path, *lines: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPANS_FILE).write_text("".join(lines))
    return directory


def ran(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_trace_is_shown_as_a_tree_with_offsets_and_failures(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        span("aa11", "01", "", "orders", "/o/PlaceOrder", 1000.0, 1050.0),
        span("aa11", "03", "02", "payments", "/p/Charge", 1012.0, 1020.0, status="error", message="declined"),
        span("aa11", "02", "01", "orders", "/p/Charge", 1010.0, 1022.5, kind="client"),
        span("bb22", "09", "", "catalog", "/c/ListProducts", 2000.0, 2001.0),
    )
    code, out, _ = ran("aa", "--dir", str(directory))
    assert code == 0
    assert out.splitlines() == [
        "trace aa11: 3 spans, 50.0 ms, started 1970-01-01T00:00:01.000Z",
        "    +0.0 ms    50.0 ms  orders  server  /o/PlaceOrder",
        "   +10.0 ms    12.5 ms    orders  client  /p/Charge",
        "   +12.0 ms     8.0 ms      payments  server  /p/Charge  ERROR declined",
    ]


def test_the_list_shows_the_latest_traces_with_their_root_and_errors(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        span("bb22", "09", "", "catalog", "/c/ListProducts", 2000.0, 2001.0),
        span("aa11", "01", "", "orders", "/o/PlaceOrder", 1000.0, 1050.0, status="error"),
    )
    code, out, _ = ran("--dir", str(directory), "--last", "5")
    header, first, second = out.splitlines()
    assert code == 0
    assert header.split()[:3] == ["TRACE", "ID", "STARTED"]
    assert (first.split()[0], second.split()[0]) == ("aa11", "bb22")  # oldest first
    assert first.endswith("orders: /o/PlaceOrder  ERROR")
    assert second.endswith("catalog: /c/ListProducts")


@pytest.mark.usefixtures("away_from_utc")
def test_a_traces_start_is_iso_8601_in_utc_with_its_marker_in_the_list_and_the_tree(tmp_path: Path) -> None:
    """As the services' log lines write their time: a trace's start is found among them as shown, whatever
    the zone `make traces` runs in."""
    directory = write(
        tmp_path, span("aa11", "01", "", "orders", "/o/PlaceOrder", 1_796_481_573_904.0, 1_796_481_574_000.0)
    )
    _, listed, _ = ran("--dir", str(directory))
    _, tree, _ = ran("aa11", "--dir", str(directory))
    assert listed.splitlines()[1].split()[:2] == ["aa11", "2026-12-05T14:39:33.904Z"]
    assert tree.splitlines()[0] == "trace aa11: 1 spans, 96.0 ms, started 2026-12-05T14:39:33.904Z"


def test_an_envoy_span_is_shown_with_the_grpc_method_it_carried(tmp_path: Path) -> None:
    """The edge's and the sidecars' spans are named for the listener (`public API`, `inbound`, `outbound to
    catalog`), the same for every call: the list and the tree add the method Envoy recorded (`grpc.path`), so
    that the shop's calls can be told from each other and from grpcurl's reflection."""
    page = "/shopmesh.gateway.v1.ShopService/GetProductPage"
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    directory = write(
        tmp_path,
        span("aa11", "01", "", "gateway-sidecar", "inbound", 1000.0, 1001.0, grpc_path=reflection),
        span("bb22", "01", "", "http-api", "public API", 2000.0, 2010.0, grpc_path=page),
        span("bb22", "02", "01", "gateway", page, 2001.0, 2009.0, grpc_path=page),
    )
    code, out, _ = ran("--dir", str(directory))
    _, first, second = out.splitlines()
    assert code == 0
    assert first.endswith(f"gateway-sidecar: inbound {reflection}")
    assert second.endswith(f"http-api: public API {page}")
    code, out, _ = ran("bb", "--dir", str(directory))
    assert code == 0
    assert out.splitlines()[1:] == [
        f"    +0.0 ms    10.0 ms  http-api  server  public API {page}",
        f"    +1.0 ms     8.0 ms    gateway  server  {page}",  # a span named for its method says it once
    ]


def test_an_unknown_or_ambiguous_id_exits_1_saying_so(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        span("aa11", "01", "", "orders", "/o", 1.0, 2.0),
        span("aa22", "02", "", "orders", "/o", 3.0, 4.0),
    )
    assert ran("ff", "--dir", str(directory))[::2] == (
        1,
        f"error: no trace with an id starting 'ff' in {directory / SPANS_FILE}\n",
    )
    assert ran("aa", "--dir", str(directory))[::2] == (
        1,
        f"error: 2 traces with an id starting 'aa' in {directory / SPANS_FILE}: give more of the id (aa11, aa22)\n",
    )
    assert ran("--dir", str(tmp_path / "none"))[1] == "no traces yet (`make run` records them; call a service first)\n"


def test_a_prefix_many_traces_share_lists_the_newest_of_them_to_pick_from(tmp_path: Path) -> None:
    """`make traces ID=5` said "8 traces with an id starting '5'" and no more: which ids, to type one digit on."""
    ids = [f"5{n}" for n in range(8)]
    directory = write(tmp_path, *(span(t, f"0{n}", "", "orders", "/o", n, n + 0.5) for n, t in enumerate(ids)))
    assert ran("5", "--dir", str(directory))[::2] == (
        1,
        f"error: 8 traces with an id starting '5' in {directory / SPANS_FILE}: give more of the id "
        "(53, 54, 55, 56, 57, and 3 older)\n",
    )


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    # `make traces ID=... | head`: more output than a pipe holds, and a reader that takes one line.
    lines = [span("cc" * 16, "root", "", "gateway", "/Shop/PlaceOrder", 0, 100)]
    lines += [span("cc" * 16, f"{n:016x}", "root", "orders", f"/Orders/Step{n}", 1, 2) for n in range(3000)]
    directory = write(tmp_path / "traces", *lines)
    reader = subprocess.run(
        f"{shlex.quote(sys.executable)} -m shopmesh_platform.traces --dir {shlex.quote(str(directory))} cc | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert reader.stdout.startswith("trace cccc")
    assert reader.stderr == ""


def test_a_line_torn_by_a_sink_killed_mid_write_does_not_hide_every_other_trace(tmp_path: Path) -> None:
    # The launcher's second Ctrl-C SIGKILLs the sink (a full disk does the same): its last write can stop half-way,
    # and the next run's sink appends its first record to that half line. The traces before and after it are
    # still whole; `make traces` must show them, not die on the torn line with a traceback.
    torn = span("dd44", "07", "", "orders", "/o/PlaceOrder", 3000.0, 3001.0)[:40]
    directory = write(
        tmp_path,
        span("aa11", "01", "", "orders", "/o/PlaceOrder", 1000.0, 1050.0),
        torn,
        span("bb22", "09", "", "catalog", "/c/ListProducts", 2000.0, 2001.0),
        span("cc33", "0a", "", "catalog", "/c/GetProduct", 4000.0, 4001.0),
    )
    result = subprocess.run(
        [sys.executable, "-m", "shopmesh_platform.traces", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert "aa11" in listed, result.stdout
    assert "cc33" in listed, result.stdout


def test_last_0_lists_no_trace(tmp_path: Path) -> None:
    directory = write(tmp_path, span("aa11", "01", "", "orders", "/o/PlaceOrder", 1000.0, 1050.0))
    assert ran("--dir", str(directory), "--last", "0") == (0, "", "")
    assert ran("--dir", str(directory), "--last", "1")[1].splitlines()[1].startswith("aa11")


# A checkout whose event the relay sent later, in a trace of its own linked to the event's create span.
CHECKOUT_AND_ITS_SEND = (
    span("aa11", "01", "", "orders", "/o/PlaceOrder", 1000.0, 1050.0),
    span("aa11", "02", "01", "orders", "create orders.v1.order_confirmed", 1040.0, 1041.0, kind="producer"),
    span("aa11", "03", "02", "notifications", "consume orders.v1.order_confirmed", 1060.0, 1062.0, kind="consumer"),
    span("cc33", "07", "", "orders", "send orders.v1.order_confirmed", 1055.0, 1056.5, kind="client", links="aa11/02"),
)


def test_an_events_send_span_is_shown_under_its_create_span_marked_as_linked(tmp_path: Path) -> None:
    code, out, _ = ran("aa", "--dir", str(write(tmp_path, *CHECKOUT_AND_ITS_SEND)))
    assert code == 0
    assert out.splitlines() == [
        "trace aa11: 3 spans, 62.0 ms, started 1970-01-01T00:00:01.000Z",
        "    +0.0 ms    50.0 ms  orders  server  /o/PlaceOrder",
        "   +40.0 ms     1.0 ms    orders  producer  create orders.v1.order_confirmed",
        "   +55.0 ms     1.5 ms      orders  client  send orders.v1.order_confirmed  (linked, trace cc33)",
        "   +60.0 ms     2.0 ms      notifications  consumer  consume orders.v1.order_confirmed",
    ]


def test_a_send_trace_shown_by_its_id_says_which_trace_it_links_to(tmp_path: Path) -> None:
    code, out, _ = ran("cc", "--dir", str(write(tmp_path, *CHECKOUT_AND_ITS_SEND)))
    assert code == 0
    assert out.splitlines()[1:] == [
        "    +0.0 ms     1.5 ms  orders  client  send orders.v1.order_confirmed  (links to trace aa11)"
    ]


def test_a_send_trace_that_went_through_is_listed_only_when_the_span_it_links_to_is_not_there(tmp_path: Path) -> None:
    code, out, _ = ran("--dir", str(write(tmp_path, *CHECKOUT_AND_ITS_SEND)))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["aa11"]
    # The checkout's spans rotated away, or never recorded: the send is all there is to see of it.
    code, out, _ = ran("--dir", str(write(tmp_path / "alone", CHECKOUT_AND_ITS_SEND[-1])))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["cc33"]


def test_a_failed_send_trace_is_listed_though_the_trace_it_links_to_is_there(tmp_path: Path) -> None:
    # The checkout went well; the publish of its event did not (NATS away, or the event set aside).
    failed_send = span(
        "dd44", "08", "", "orders", "send orders.v1.order_confirmed", 1070.0, 1071.0,
        kind="client", links="aa11/02", status="error", message="NoRespondersError",
    )  # fmt: skip
    code, out, _ = ran("--dir", str(write(tmp_path, *CHECKOUT_AND_ITS_SEND, failed_send)))
    assert code == 0
    rows = out.splitlines()[1:]
    assert [line.split()[0] for line in rows] == ["aa11", "dd44"]
    assert rows[1].endswith("orders: send orders.v1.order_confirmed  ERROR")
    assert not rows[0].endswith("ERROR")


def test_a_send_trace_whose_linked_span_rotated_away_is_listed_though_its_trace_is_there(tmp_path: Path) -> None:
    # spans.jsonl.1 held PlaceOrder and the create span; the consumer's span, written later, is all that is left
    # of the checkout, and a send under a create span that is not there would be in no tree.
    _, _, consumer, send = CHECKOUT_AND_ITS_SEND
    code, out, _ = ran("--dir", str(write(tmp_path, consumer, send)))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["cc33", "aa11"]
