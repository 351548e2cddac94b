"""The command that changes a canary's share while the stack runs: its arguments, what it says when there is
no canary to split to, and that every caller gets the split or none does, against stand-ins of the sidecars'
admin interfaces (the split itself, on real sidecars: tests/mesh/test_local_canary.py)."""

from __future__ import annotations

import http.server
import io
import json
import os
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_platform.mesh.envoy import admin_socket_file, split_runtime_keys
from shopmesh_platform.mesh.layout import sidecar_name, sockets_link
from shopmesh_platform.mesh.split import DISAGREE, main

STABLE, CANARY = split_runtime_keys("catalog")


@pytest.mark.parametrize(
    "argv",
    [["catalog"], ["catalog", "101"], ["catalog", "-1"], ["catalog", "a-third"], ["catalog", "30", "--reset"]],
)
def test_a_share_that_is_no_percentage_or_none_at_all_is_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv, io.StringIO(), io.StringIO())
    assert refused.value.code == 2


def test_no_arguments_at_all_say_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    """A bare `make split` ended in argparse's "the following arguments are required: service"."""
    with pytest.raises(SystemExit) as refused:
        main([], io.StringIO(), io.StringIO())
    assert refused.value.code == 2
    assert 'make split SPLIT_ARGS="catalog 30"' in capsys.readouterr().err


def test_the_gateway_has_no_canary_to_split_to() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["gateway", "30"], io.StringIO(), io.StringIO())
    assert refused.value.code == 2


def test_without_a_canary_running_it_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    admins = {name: str(tmp_path / f"{name}-sidecar-admin.sock") for name in ("recommendations", "catalog")}
    stack = LocalStack(
        path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1", sidecar_admin=admins
    )
    write_stack_file(stack)
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1] == (
        f'error: no catalog-canary runs in {stack.said()}: start the stack with one, make run MESH=envoy RUN_ARGS="'
        '--postgres --canary catalog"'
    )


class FakeAdmin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An Envoy admin interface's runtime on a Unix socket, as much as mesh.split uses: GET /runtime?format=json,
    POST /runtime_modify (an empty value removes its key); `refuse`: 503 to every change; `lose_reply`: the
    first change is made, and the connection closed without an answer."""

    daemon_threads = True

    def __init__(
        self, path: Path, runtime: dict[str, str] | None = None, *, refuse: bool = False, lose_reply: bool = False
    ) -> None:
        self.runtime = dict(runtime or {})
        self.refuse = refuse
        self.lose_reply = lose_reply
        super().__init__(str(path), _AdminHandler)


class _AdminHandler(http.server.BaseHTTPRequestHandler):
    server: FakeAdmin

    def do_GET(self) -> None:
        entries = {key: {"final_value": value} for key, value in self.server.runtime.items()}
        self._answer(200, json.dumps({"entries": entries}))

    def do_POST(self) -> None:
        if self.server.refuse:
            self._answer(503, "refused")
            return
        for key, [value] in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, True).items():
            if value:
                self.server.runtime[key] = value
            else:
                self.server.runtime.pop(key, None)
        if self.server.lose_reply:
            self.server.lose_reply = False
            self.close_connection = True
            return
        self._answer(200, "OK")

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def admins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeAdmin]]:
    """Stand-ins of sidecars' admin sockets where `make run MESH=envoy` has them (.data/mesh/sockets, relative:
    short), started by `start`; stopped after."""
    monkeypatch.chdir(tmp_path)
    sockets_link(Path(".data")).mkdir(parents=True)
    started: dict[str, FakeAdmin] = {}
    yield started
    for server in started.values():
        server.shutdown()
        server.server_close()


def start(admins: dict[str, FakeAdmin], name: str, runtime: dict[str, str] | None = None, **kw: bool) -> FakeAdmin:
    server = FakeAdmin(sockets_link(Path(".data")) / admin_socket_file(sidecar_name(name)), runtime, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    admins[name] = server
    return server


def listing(names: list[str], canary_weights: dict[str, int] | None = None) -> None:
    """.data/stack.json of a running stack (this process) whose sidecars are `names`, and whose canaries started
    with `canary_weights` (None: a file of a launcher that recorded none)."""
    sockets = sockets_link(Path(".data"))
    admin = {name: str(sockets / admin_socket_file(sidecar_name(name))) for name in names}
    stack = LocalStack(path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1")
    write_stack_file(replace(stack, sidecar_admin=admin, canary_weights=canary_weights or {}))


def test_a_caller_the_stack_lists_whose_sidecar_does_not_answer_fails_the_split_and_changes_no_caller(
    admins: dict[str, FakeAdmin],
) -> None:
    """It was passed over: the callers that answered sent the canary the new share, that one the old, and the
    command said it had split the calls."""
    start(admins, "catalog-canary")
    gateway, orders = start(admins, "gateway"), start(admins, "orders")
    listing(["gateway", "orders", "recommendations", "catalog", "catalog-canary"])
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1].startswith("error: recommendations's sidecar does not answer at "), (
        err.getvalue()
    )
    assert gateway.runtime == orders.runtime == {}


def test_a_caller_that_refuses_part_way_has_those_already_changed_put_back_as_they_were(
    admins: dict[str, FakeAdmin],
) -> None:
    start(admins, "catalog-canary")
    earlier = {STABLE: "70", CANARY: "30"}
    gateway = start(admins, "gateway", earlier)
    orders = start(admins, "orders")
    start(admins, "recommendations", refuse=True)
    listing(["gateway", "orders", "recommendations", "catalog", "catalog-canary"])
    err = io.StringIO()
    assert main(["catalog", "100"], io.StringIO(), err) == 1
    assert "put back as it was: gateway, orders" in err.getvalue(), err.getvalue()
    assert gateway.runtime == earlier
    assert orders.runtime == {}, "the key it had not is gone again: the weight it started with"


def test_without_a_running_stacks_file_a_canary_whose_sidecar_does_not_answer_is_no_success(
    admins: dict[str, FakeAdmin],
) -> None:
    """Its socket's path was taken for a running canary: the callers' sidecars were sent to split to nothing,
    and the command said it had."""
    gateway = start(admins, "gateway")
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1].startswith("error: catalog-canary's sidecar does not answer at "), (
        err.getvalue()
    )
    assert gateway.runtime == {}


def test_without_a_running_stacks_file_every_caller_that_answers_gets_the_split(admins: dict[str, FakeAdmin]) -> None:
    start(admins, "catalog-canary")
    gateway, orders = start(admins, "gateway"), start(admins, "orders")
    out = io.StringIO()
    assert main(["catalog", "30"], out, io.StringIO()) == 0
    assert gateway.runtime == orders.runtime == {STABLE: "70", CANARY: "30"}
    assert out.getvalue().splitlines() == [
        "gateway: 30 % of its calls to catalog to catalog-canary",
        "orders: 30 % of its calls to catalog to catalog-canary",
    ]


@pytest.mark.parametrize("listed", [False, True], ids=["without-a-stacks-file", "the-running-stacks"])
def test_all_calls_are_moved_off_a_canary_whose_sidecar_does_not_answer(
    admins: dict[str, FakeAdmin], listed: bool
) -> None:
    """Share 0, the abort an operator reaches for when the canary is down, was refused: its sidecar had to
    answer whatever the share, as if 0 % were sent there."""
    gateway, orders, recommendations = (start(admins, name) for name in ("gateway", "orders", "recommendations"))
    if listed:
        listing(["gateway", "orders", "recommendations", "catalog", "catalog-canary"])
    err = io.StringIO()
    assert main(["catalog", "0"], io.StringIO(), err) == 0, err.getvalue()
    assert gateway.runtime == orders.runtime == recommendations.runtime == {STABLE: "100", CANARY: "0"}


def test_a_canary_the_running_stack_lists_whose_sidecar_does_not_answer_is_sent_no_share(
    admins: dict[str, FakeAdmin],
) -> None:
    gateway = start(admins, "gateway")
    start(admins, "orders"), start(admins, "recommendations")
    listing(["gateway", "orders", "recommendations", "catalog", "catalog-canary"])
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1].startswith("error: catalog-canary's sidecar does not answer at "), (
        err.getvalue()
    )
    assert gateway.runtime == {}


def test_a_caller_that_made_the_change_but_whose_answer_was_lost_is_put_back_too(
    admins: dict[str, FakeAdmin],
) -> None:
    """It was neither put back nor named: only a caller that had answered counted as changed, so it sent the
    canary the new share while the others were back on the old one."""
    start(admins, "catalog-canary")
    gateway = start(admins, "gateway")
    orders = start(admins, "orders", lose_reply=True)
    start(admins, "recommendations")
    listing(["gateway", "orders", "recommendations", "catalog", "catalog-canary"])
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert "put back as it was: gateway, orders" in err.getvalue(), err.getvalue()
    assert gateway.runtime == orders.runtime == {}


def test_show_flags_a_caller_the_running_stack_lists_whose_sidecar_does_not_answer(
    admins: dict[str, FakeAdmin],
) -> None:
    """Its share is unknown, so the callers cannot be said to agree: the status says so too."""
    start(admins, "catalog-canary")
    start(admins, "gateway", {STABLE: "70", CANARY: "30"})
    listing(["gateway", "recommendations", "catalog", "catalog-canary"])
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show"], out, err) == DISAGREE
    assert [line.split() for line in out.getvalue().splitlines()[1:]] == [
        ["catalog", "gateway", "30", "%"],
        ["catalog", "recommendations", "-", "DOES", "NOT", "ANSWER"],
    ]
    said = err.getvalue().splitlines()[-1]
    assert said.startswith("error: catalog's callers: recommendations's sidecar does not answer at "), said


def test_show_without_a_canary_running_says_so_in_one_line(admins: dict[str, FakeAdmin]) -> None:
    start(admins, "gateway")
    listing(["gateway", "recommendations", "catalog"])
    out = io.StringIO()
    assert main(["--show"], out, io.StringIO()) == 0
    assert out.getvalue().splitlines() == ["no canary runs: every caller sends each service all its calls"]


CATALOGS_CALLERS = ["gateway", "orders", "recommendations", "catalog", "catalog-canary"]


def shown_rows(out: io.StringIO) -> list[list[str]]:
    return [line.split() for line in out.getvalue().splitlines()[1:]]


def test_show_gives_the_share_callers_started_with_as_the_stack_file_recorded_it(
    admins: dict[str, FakeAdmin],
) -> None:
    """Envoy's runtime has no key until a split is set: the share was said as "the weight it started with"."""
    for name in CATALOGS_CALLERS:
        start(admins, name)
    listing(CATALOGS_CALLERS, {"catalog": 20})
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show"], out, err) == 0, err.getvalue()
    assert shown_rows(out) == [
        ["catalog", caller, "20", "%", "(as", "started)"] for caller in ("gateway", "orders", "recommendations")
    ]


def test_show_takes_a_caller_set_to_the_share_the_others_started_with_as_agreeing(
    admins: dict[str, FakeAdmin],
) -> None:
    """A split of 20 % set on one caller and the others' starting 20 % are one share: it was flagged as
    disagreeing, and the exit status said the callers split the calls differently."""
    for name in ("catalog-canary", "orders", "recommendations"):
        start(admins, name)
    start(admins, "gateway", {STABLE: "80", CANARY: "20"})
    listing(CATALOGS_CALLERS, {"catalog": 20})
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show", "catalog"], out, err) == 0, err.getvalue()
    assert shown_rows(out) == [
        ["catalog", "gateway", "20", "%"],
        ["catalog", "orders", "20", "%", "(as", "started)"],
        ["catalog", "recommendations", "20", "%", "(as", "started)"],
    ]
    assert "error:" not in err.getvalue()


def test_show_flags_a_caller_set_to_another_share_than_the_others_started_with(admins: dict[str, FakeAdmin]) -> None:
    for name in ("catalog-canary", "orders", "recommendations"):
        start(admins, name)
    start(admins, "gateway", {STABLE: "70", CANARY: "30"})
    listing(CATALOGS_CALLERS, {"catalog": 20})
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show"], out, err) == DISAGREE
    assert shown_rows(out)[0] == ["catalog", "gateway", "30", "%", "DISAGREES"]
    assert "catalog's callers split its calls differently" in err.getvalue(), err.getvalue()


def test_show_flags_every_caller_when_no_share_is_most_callers(admins: dict[str, FakeAdmin]) -> None:
    """Two callers on two shares: neither is the odd one out. The one listed second was named as disagreeing,
    as if the first's share were the service's."""
    start(admins, "catalog-canary")
    start(admins, "gateway", {STABLE: "70", CANARY: "30"})
    start(admins, "recommendations", {STABLE: "40", CANARY: "60"})
    listing(["gateway", "recommendations", "catalog", "catalog-canary"], {"catalog": 20})
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show"], out, err) == DISAGREE
    assert shown_rows(out) == [
        ["catalog", "gateway", "30", "%", "DISAGREES"],
        ["catalog", "recommendations", "60", "%", "DISAGREES"],
    ]
    assert "catalog's callers split its calls differently" in err.getvalue(), err.getvalue()


def test_show_of_a_stack_file_that_recorded_no_starting_weight_says_only_that_callers_are_on_it(
    admins: dict[str, FakeAdmin],
) -> None:
    """A launcher started before the weight was recorded: its callers on the starting share still agree."""
    for name in CATALOGS_CALLERS:
        start(admins, name)
    listing(CATALOGS_CALLERS)
    out, err = io.StringIO(), io.StringIO()
    assert main(["--show"], out, err) == 0, err.getvalue()
    assert shown_rows(out)[0] == ["catalog", "gateway", "the", "weight", "it", "started", "with"]


def test_reset_says_the_share_the_callers_are_back_on(admins: dict[str, FakeAdmin]) -> None:
    start(admins, "catalog-canary")
    gateway = start(admins, "gateway", {STABLE: "70", CANARY: "30"})
    listing(["gateway", "catalog", "catalog-canary"], {"catalog": 20})
    out = io.StringIO()
    assert main(["catalog", "--reset"], out, io.StringIO()) == 0
    assert gateway.runtime == {}
    assert out.getvalue() == "gateway: 20 % (as started) of its calls to catalog to catalog-canary\n"


@pytest.mark.parametrize("argv", [["--show", "catalog", "30"], ["--show", "catalog", "--reset"]])
def test_show_changes_nothing_so_takes_no_share(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv, io.StringIO(), io.StringIO())
    assert refused.value.code == 2
