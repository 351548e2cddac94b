"""The banner the launcher prints once the stack is ready: its curl, grpcurl and traces commands."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from shopmesh_platform import run
from shopmesh_platform.ports import Canary, PortPlan
from shopmesh_platform.stack import Stack


def test_without_a_gateway_the_banner_offers_no_http_commands(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=run.port_plan(free=True), services=["catalog"])
    text = run.banner(stack, ["catalog"])
    assert "HTTP/JSON" not in text
    assert "only NATS runs" not in text


@pytest.mark.parametrize(
    ("service", "said"), [("orders", "50% of orders' calls"), ("catalog", "50% of catalog's calls")]
)
def test_the_banners_canary_row_says_whose_calls_it_gets_in_english(tmp_path: Path, service: str, said: str) -> None:
    """It said "50% of orders's calls"."""
    canary = Canary(service, 50)
    plan = run.port_plan(free=True, mesh=True, canary=canary)
    database = {service: {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}}
    stack = Stack(tmp_path, ports=plan, services=["gateway", service], canary=canary, env=database)
    [row] = [line for line in run.banner(stack, None).splitlines() if line.strip().startswith(f"{service}-canary ")]
    assert f"SERVING, {said}" in row, row


def test_the_banners_curl_commands_end_their_reply_with_a_newline(tmp_path: Path) -> None:
    """The API's JSON has no newline of its own: without curl's, the shell's prompt ran into it. Each printed
    command, as a shell splits it, runs the real curl on a reply without one (a file in place of the URL)."""
    reply = tmp_path / "reply.json"
    reply.write_text('{"products": []}')
    stack = Stack(tmp_path, ports=run.port_plan(free=True), services=["gateway"])
    commands = [line.strip() for line in run.banner(stack, ["gateway"]).splitlines() if line.startswith("  curl ")]
    assert len(commands) == 4
    for command in commands:
        argv = [*shlex.split(command)[:-1], reply.as_uri()]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
        assert out.endswith('{"products": []}\n'), (command, out)


def test_the_printed_grpcurl_command_names_the_socket_through_the_link_when_short_else_its_own_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the repository the banner shows README's `.data/mesh/sockets/<svc>.sock`; a deep data directory
    elsewhere, whose linked path is too long to connect to, gets the socket's own short path."""
    checkout = tmp_path / ("d" * 100)
    stack = Stack(checkout / ".data", ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    stack.write_mesh()
    try:
        monkeypatch.chdir(tmp_path)
        [listing, *_] = run.grpcurl_commands(stack)
        assert f" -unix {stack.app_socket('catalog')} " in listing
        monkeypatch.chdir(checkout)
        [listing, *_] = run.grpcurl_commands(stack)
        assert " -unix .data/mesh/sockets/catalog.sock " in listing
    finally:
        stack.remove_sockets()


def traces_line(stack: Stack) -> str:
    return next(line for line in run.banner(stack, ["catalog"]).splitlines() if line.startswith("Traces:"))


def test_the_banners_traces_command_reads_where_the_sink_writes_with_another_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run RUN_ARGS="--data-dir /tmp/x"`: the sink writes /tmp/x/traces, but `make traces` reads
    .data/traces of the repository root, and says "no traces yet". The banner must name a command that reads
    the sink's directory."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    stack = Stack(tmp_path / "elsewhere", ports=run.port_plan(free=True), services=["catalog"])
    line = traces_line(stack)
    assert f"--dir {stack.traces_dir}" in line, line


def test_the_banner_keeps_make_traces_for_the_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    stack = Stack(".data", ports=run.port_plan(free=True), services=["catalog"])
    assert "`make traces`" in traces_line(stack)


def test_the_banners_traces_line_is_not_glued_to_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--services catalog,inventory` runs no SMTP sink, whose paragraph the Traces line used to end: it came
    right under the table's last row."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    stack = Stack(tmp_path, ports=run.port_plan(free=True), services=["catalog"])
    lines = run.banner(stack, ["catalog"]).splitlines()
    assert lines[lines.index(traces_line(stack)) - 1] == ""
