"""The launcher's command line: its port plan (the HTTP API's port, the trace sink's, a taken port), what it
refuses, and what `--help` says.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from shopmesh_platform import run
from shopmesh_platform.ports import Canary
from shopmesh_platform.processes import failure_message
from shopmesh_platform.stack import Stack


def test_spans_go_to_your_collector_instead_when_you_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert run.port_plan(free=False).traces is not None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert run.port_plan(free=False).traces is None
    assert run.port_plan(free=True).traces is None


def test_the_http_api_port_can_be_moved_or_left_out_when_8080_is_taken() -> None:
    assert run.port_plan(free=False).http == 8080
    assert run.port_plan(free=False, http_port=18080).http == 18080
    assert run.port_plan(free=False, http_port=0).http is None
    assert run.port_plan(free=True).http not in (None, 8080)
    assert run.port_plan(free=True, http_port=0).http is None
    assert run.parse_args(["--http-port", "0"]).http_port == 0


@pytest.mark.parametrize(
    "args", [["--http-port", "70000"], ["--http-port", "web"], ["--free-ports", "--http-port", "18080"]]
)
def test_an_http_port_that_cannot_be_honoured_is_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.parse_args(args)
    assert exited.value.code == 2
    assert "--http-port" in capsys.readouterr().err


@pytest.mark.parametrize("free_ports", [False, True])
def test_a_taken_port_says_how_to_start_beside_it_on_free_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], free_ports: bool
) -> None:
    """A port of the table taken: the error named it and asked "is another `make run` still running?", but not
    the README's way out, `RUN_ARGS=--free-ports`; it says it now (not to a launcher already on free ports). The
    plan is free ports either way: the table's own may be another stack's."""
    plan = run.port_plan(free=True, http_port=0)
    monkeypatch.setattr(run, "port_plan", lambda *args, **kwargs: plan)
    argv = ["--data-dir", str(tmp_path / "data"), "--services", "catalog", "--http-port", "0"]
    with socket.socket() as squatter:
        squatter.bind((plan.host, plan.services["catalog"].grpc))
        squatter.listen()
        assert run.main([*argv, *(["--free-ports"] if free_ports else [])]) == 1
    error = capsys.readouterr().err
    assert f"error: port {plan.services['catalog'].grpc} (catalog gRPC) is already in use" in error
    way_out = "; or start beside it on ports the OS picks: make run RUN_ARGS=--free-ports\n"
    assert error.endswith(way_out) != free_ports, error


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-5"])
def test_a_startup_timeout_that_never_or_always_expires_is_refused(timeout: str) -> None:
    # nan compares false with every deadline: a process that never got ready was waited for for ever.
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--startup-timeout", timeout])
    assert exited.value.code == 2


def test_canary_option_takes_a_service_and_an_optional_weight() -> None:
    assert run.parse_args(["--mesh", "envoy", "--canary", "catalog:25"]).canary == Canary("catalog", 25)
    assert run.parse_args(["--mesh", "envoy", "--canary", "catalog"]).canary == Canary("catalog", 10)
    for wrong in ("catalog:a-quarter", "nothing", "catalog-canary"):
        with pytest.raises(SystemExit):
            run.parse_args(["--mesh", "envoy", "--canary", wrong])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--canary", "catalog:20", "--canary", "orders"],
            "argument --canary: given twice: the local mesh runs one canary at a time",
        ),
        (["--canary", "catalog:101"], "argument --canary: 'catalog:101': the weight is a percentage (0-100), not 101"),
        (["--canary", "catalog:-1"], "argument --canary: 'catalog:-1': the weight is a percentage (0-100), not -1"),
        (
            ["--canary", "gateway"],
            "argument --canary: 'gateway': not of gateway: its callers are clients outside the mesh, whose calls no "
            "sidecar splits",
        ),
        (["--canary", "orders:"], "argument --canary: 'orders:': expected SERVICE or SERVICE:WEIGHT (a percentage)"),
    ],
    ids=["twice", "weight-101", "weight-negative", "gateway", "empty-weight"],
)
def test_a_canary_the_local_mesh_cannot_honour_is_refused_by_the_command_line(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused when the arguments are read, before --postgres starts its server and runs initdb (the stack
    refused a weight of 101 or the gateway only after that); a second --canary was silently taken for the
    first (the local mesh runs one), and `orders:` for orders at the default weight."""
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--postgres", "--mesh", "envoy", *argv])
    assert exited.value.code == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error.endswith(said), error


def test_a_canary_without_the_mesh_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    """`make run RUN_ARGS="--postgres --canary catalog:20"` (make help's example, without MESH=envoy) started a
    throwaway PostgreSQL server, ran its initdb, and only then refused the canary, naming `--mesh envoy`, which
    make spells MESH=envoy. The command line refuses it now, before anything starts, in make's words too."""
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--postgres", "--canary", "catalog:20"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--canary needs --mesh envoy" in error, error
    assert "make run MESH=envoy" in error, error


def test_an_unknown_service_exits_1_naming_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--data-dir", str(tmp_path), "--services", "catalog,warehouse"]) == 1
    error = capsys.readouterr().err
    assert "unknown service(s) warehouse" in error
    assert "gateway, users, catalog" in error


def test_a_mistyped_service_leaves_no_data_directory_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--data-dir /tmp/x/sub --services nosuch` was refused only once the data directory, and its parents, were
    made (and locked): the names are checked first now."""
    assert run.main(["--data-dir", str(tmp_path / "x" / "sub"), "--services", "nosuch"]) == 1
    assert "unknown service(s) nosuch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_default_of_every_option_that_takes_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` is where a user looks for what happens without an option: --startup-timeout's 60 s, the mesh's
    and the log format's defaults were in the code alone."""
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--help"])
    assert exited.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1]
    # One block per option, its help folded over several lines: as a reader sees it, whitespace aside.
    blocks = {block.split()[0]: " ".join(block.split()) for block in re.split(r"\n  (?=-)", options.strip("\n"))}
    flags = {"-h,", "--reset", "--free-ports", "--postgres"}  # on or off: their default is off
    assert set(blocks) - flags == {
        "--data-dir",
        "--services",
        "--mesh",
        "--canary",
        "--http-port",
        "--host",
        "--log-format",
        "--startup-timeout",
    }, "a new option: say its default in its help, then add it here"
    for option, default in {
        "--data-dir": "(default: .data)",
        "--services": "(default: every service whose package is installed)",
        "--mesh": "(default: none)",
        "--canary": "(default: none)",
        "--http-port": "(default: 8080; 0: not served)",
        "--host": "(default: 127.0.0.1)",
        "--log-format": "(default: text)",
        "--startup-timeout": "(default: 60)",
    }.items():
        assert default in blocks[option], blocks[option]


def test_a_process_not_ready_in_time_names_the_option_that_gives_it_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a busy machine every service of a wave still imported its packages when the 60 s ran out: the error
    said "payments was not SERVING ... within 60s; its last 0 output lines: (no output)", and nowhere that
    --startup-timeout moves the 60 s. It says so now. Nothing gets ready here, whatever the machine's speed."""

    async def never_ready(self: Stack, child: object) -> bool:
        return False

    monkeypatch.setattr(Stack, "_ready", never_ready)
    argv = ["--data-dir", str(tmp_path / "data"), "--free-ports", "--services", "", "--http-port", "0"]
    assert run.main([*argv, "--startup-timeout", "0.5"]) == 1
    error = capsys.readouterr().err
    assert "was not accepting connections at " in error
    assert error.endswith(
        "(each process has --startup-timeout, 0.5 s, to get ready; on a busy machine give it longer: "
        'make run RUN_ARGS="--startup-timeout 180", beside your other RUN_ARGS)\n'
    ), error


def test_a_failure_says_what_the_process_printed_in_words_that_fit_how_much() -> None:
    assert failure_message("payments", "was not SERVING", []) == "payments was not SERVING; it printed nothing"
    assert failure_message("nats", "exited", ["bye"]) == "nats exited; its last output line:\n  nats | bye"
    two = failure_message("nats", "exited", ["a", "b"])
    assert two == "nats exited; its last 2 output lines:\n  nats | a\n  nats | b"
