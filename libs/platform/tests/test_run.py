"""`python -m shopmesh_platform.run`, the command behind `make run`, as a developer runs it.

It adapts to what is installed: with the catalog package it runs the catalog and proves it SERVING
and the printed grpcurl commands working; without it, NATS alone, and the table says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import nats
import pytest
from grpc_health.v1 import health_pb2

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_chassis.testing import eventually, health_status
from shopmesh_chassis.testing.postgres import postgres_bin
from shopmesh_platform import run
from shopmesh_platform.mesh.faults import current_fault
from shopmesh_platform.ports import Canary, PortPlan
from shopmesh_platform.processes import StackError
from shopmesh_platform.stack import DEFAULT_STOP_TIMEOUT, SOCKETS_PREFIX, Stack, sidecar_name
from shopmesh_platform.topology import SERVICES
from shopmesh_platform.traces import load

REPOSITORY = Path(__file__).resolve().parents[3]
CATALOG_INSTALLED = importlib.util.find_spec("shopmesh_catalog") is not None
# Only bound a hang: a loaded machine may take seconds to connect and answer, more than health_status's 1 s
# default. One health call, not a poll: nothing listening refuses it at once, so it still reads the state the
# launcher's "ready" claims.
HEALTH_CALL_SECONDS = 30
NATS_CONNECT_SECONDS = 30


def table_rows(lines: list[str]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        cells = line.split()
        names = ("nats", "smtp", "traces", *SERVICES, *(sidecar_name(name) for name in SERVICES))
        if line.startswith("  ") and cells and cells[0] in names:
            rows[cells[0]] = {"grpc": cells[1], "metrics": cells[2], "state": " ".join(cells[3:-1]), "pid": cells[-1]}
    return rows


def printed_commands(lines: list[str]) -> list[str]:
    """The indented lines under "Try:"."""
    if "Try:" not in lines:
        return []
    following = lines[lines.index("Try:") + 1 :]
    commands = [line.strip() for line in following[: following.index("")]]
    # Written as a developer copies them at the repository root (`.venv/bin/grpcurl ...`).
    grpcurl = os.path.relpath(Path(sys.executable).parent / "grpcurl", REPOSITORY)
    assert all(command.startswith(f"{grpcurl} ") for command in commands)
    return commands


def gone(pid: int) -> bool:
    """No process left in the group; an orphan that exited counts even before init reaps it."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    # Reaped between the two looks: the file is gone, or reading it fails with ESRCH; the next look says.
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return "State:\tZ" in status.read_text()
    return False


async def read_until_ready(stream: asyncio.StreamReader, lines: list[str]) -> None:
    await read_until(stream, lambda line: line == run.READY_LINE, lines, "it was ready")


async def read_until(stream: asyncio.StreamReader, done: Callable[[str], bool], lines: list[str], what: str) -> None:
    """Read the launcher's output into `lines` up to the first line `done` takes."""
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"run exited before {what}:\n" + "\n".join(lines))
        lines.append(raw.decode(errors="replace").rstrip("\n"))
        if done(lines[-1]):
            return


async def start_launcher(data_dir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shopmesh_platform.run", "--data-dir", str(data_dir), "--free-ports", *args),
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop_launcher(process: asyncio.subprocess.Process) -> None:
    """When a test fails half-way: the launcher stops its children on SIGTERM."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def launched(data_dir: Path, *args: str, ready_within: float = 90) -> AsyncIterator[tuple[Process, list[str]]]:
    """The launcher, once it said it is ready (its output so far in the list); stopped with SIGTERM on the
    way out if the test did not stop it itself."""
    process = await start_launcher(data_dir, *args)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), ready_within)
        yield process, lines
    finally:
        await stop_launcher(process)


async def ctrl_c(process: Process) -> str:
    """Ctrl-C, as in a terminal: the launcher must stop everything and exit 0; returns the rest of its output."""
    process.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, rest.decode()
    return rest.decode()


async def run_printed_command(command: str) -> str:
    argv = shlex.split(command)
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


async def test_run_serves_prints_table_and_working_commands_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Only the catalog (when installed), so that services still being written do not decide this test.
    selected = "catalog" if CATALOG_INSTALLED else ""
    async with launched(tmp_path / "data", "--services", selected) as (process, lines):
        rows = table_rows(lines)

        assert rows["nats"]["state"] == "ready"
        nc = await nats.connect(rows["nats"]["grpc"], connect_timeout=NATS_CONNECT_SECONDS)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()
        assert any(line.split(" | ")[0].strip() == "nats" and "Server is ready" in line for line in lines)
        assert rows["traces"]["state"] == "ready"

        commands = printed_commands(lines)
        if CATALOG_INSTALLED:
            assert rows["catalog"]["state"] == "SERVING"
            status = await health_status(rows["catalog"]["grpc"], timeout=HEALTH_CALL_SECONDS)
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert any(line.split(" | ")[0].strip() == "catalog" for line in lines)
            assert len(commands) == 3
            outputs = [await run_printed_command(command) for command in commands]
            assert "shopmesh.catalog.v1.CatalogService" in outputs[0].split()
            assert json.loads(outputs[1]) == {"status": "SERVING"}
            assert 1 <= len(json.loads(outputs[2])["products"]) <= 3
            # Every service exports its spans to the launcher's trace sink.
            list_products = "/shopmesh.catalog.v1.CatalogService/ListProducts"
            await eventually(
                lambda: any(t.roots[0]["name"] == list_products for t in load(tmp_path / "data" / "traces")),
                "the ListProducts span in the trace sink",
            )
        else:
            assert commands == []
            assert rows["catalog"]["state"].startswith("absent (no package shopmesh_catalog)")
        for name, service in SERVICES.items():
            if name != "catalog" or not CATALOG_INSTALLED:
                assert rows[name]["state"] in ("not started (--services)", f"absent (no package {service.module})")

        assert "stopped cleanly" in await ctrl_c(process)
    pids = [int(row["pid"]) for row in rows.values() if row["pid"] != "-"]
    assert pids
    assert all(gone(pid) for pid in pids)
    # Everything a run wrote there is the stack's: --reset takes it all (and refuses only a stranger's file).
    run.reset_data_dir(tmp_path / "data")
    assert not (tmp_path / "data").exists()


async def test_the_launcher_says_which_wave_it_starts_and_when_it_serves_in_lines_of_its_own(tmp_path: Path) -> None:
    """Without these lines a loaded machine showed only NATS' output for half a minute. They are the launcher's
    own lines, beside the services' JSON ones (each still one JSON document after its prefix)."""
    async with launched(tmp_path / "data", "--services", "catalog", "--http-port", "0", "--log-format", "json") as (
        process,
        lines,
    ):
        started = lines.index("starting catalog ...")
        [serving] = [i for i, line in enumerate(lines) if re.fullmatch(r"  \.\.\. serving \(\d+\.\d s\)", line)]
        catalog = [i for i, line in enumerate(lines) if said_by("catalog")(line)]
        assert catalog
        assert started < catalog[0] < serving < lines.index(run.READY_LINE)
        for i in catalog:
            assert isinstance(json.loads(lines[i].split(" | ", 1)[1]), dict), lines[i]
        await ctrl_c(process)


async def test_no_child_outlives_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    """Nor does its stack file mislead: left behind, it names a launcher that is gone, and the tools say they
    ignore it and use the local defaults."""
    process = await start_launcher(tmp_path / ".data", "--services", "")
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 60)
        nats_pid = int(table_rows(lines)["nats"]["pid"])

        process.kill()  # no chance to stop anything itself
        await process.wait()
    finally:
        await stop_launcher(process)

    # The kernel sends the orphan SIGTERM (PR_SET_PDEATHSIG); it shuts down on its own.
    await eventually(lambda: gone(nats_pid), "nats-server gone after its launcher was killed", timeout=15)
    assert json.loads((tmp_path / ".data" / "stack.json").read_text())["pid"] == process.pid
    code, out, err = await run_tool(tmp_path, "-m", "shopmesh_platform.traces")
    assert (code, out) == (0, "no traces yet (`make run` records them; call a service first)\n")
    assert err == f"ignoring .data/stack.json: its launcher (pid {process.pid}) is gone; using the local ports\n"
    # It is the stack's own: --reset takes it with the rest.
    run.reset_data_dir(tmp_path / ".data")
    assert not (tmp_path / ".data").exists()


def tool_env() -> dict[str, str]:
    """The environment `make` runs the tools in: no NATS_URL (`make deadletters` unsets it), nor a Secret's."""
    return {name: value for name, value in os.environ.items() if name not in ("NATS_URL", "SECRETS_DIR")}


async def run_tool(cwd: Path, *argv: str) -> tuple[int, str, str]:
    """One of the local stack's tools as `make` runs it, from the directory whose .data the launcher uses."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=cwd, env=tool_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_tools_reach_a_free_ports_stack_without_being_told_where(tmp_path: Path) -> None:
    """`make deadletters`, `make shoppers`, `make fault` and `make traces` under `--free-ports` needed each
    address copied from the launcher's table (the NATS URL, the gateway, each sidecar's admin port): they read
    .data/stack.json, which the launcher writes once the stack serves and removes when it stops."""
    data = tmp_path / ".data"
    async with launched(data, "--services", "users,catalog,gateway", "--mesh", "envoy") as (process, lines):
        rows = table_rows(lines)
        said = f"the local stack of .data/stack.json (launcher pid {process.pid})"
        stack = json.loads((data / "stack.json").read_text())
        assert stack["pid"] == process.pid

        code, out, err = await run_tool(tmp_path, "-m", "shopmesh_chassis.deadletters_cli", "list", "--json")
        assert (code, json.loads(out)) == (0, []), err
        assert err == f"NATS at {rows['nats']['grpc']}: {said}\n"

        shoppers = ("--shoppers", "1", "--duration", "1", "--think", "0.01,0.05", "--json")
        code, out, err = await run_tool(tmp_path, "-m", "shopmesh_platform.shoppers", *shoppers)
        assert code == 0, err
        assert err.splitlines()[0] == f"the gateway at {rows['gateway']['grpc']}: {said}"
        assert json.loads(out)["Register"].get("OK") == 1, out

        admin = rows["catalog-sidecar"]["metrics"].removesuffix("/stats/prometheus")
        faults = ("-m", "shopmesh_platform.mesh.faults")
        code, out, err = await run_tool(tmp_path, *faults, "catalog", "--delay", "250ms")
        assert (code, out, err) == (0, "catalog: delay 250 ms on 100 % of calls\n", f"sidecars of {said}\n")
        assert str(current_fault(admin)) == "delay 250 ms on 100 % of calls"
        code, out, err = await run_tool(tmp_path, *faults, "catalog", "--clear")
        assert code == 0, err
        assert str(current_fault(admin)) == "none"

        async def listed() -> tuple[int, str, str] | None:
            """The trace list once the shoppers' calls are in it (spans are exported in batches): traces through
            the gateway, rooted at its sidecar's span."""
            listing = await run_tool(tmp_path, "-m", "shopmesh_platform.traces", "--last", "1000")
            return listing if "gateway-sidecar: " in listing[1] else None

        listing = await eventually(listed, "the shoppers' traces listed", timeout=60, interval=0.5)
        assert listing is not None
        code, out, err = listing
        assert (code, err) == (0, f"traces in {data.absolute() / 'traces'}: {said}\n")

        assert "stopped cleanly" in await ctrl_c(process)
    assert not (data / "stack.json").exists()


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


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-5"])
def test_a_startup_timeout_that_never_or_always_expires_is_refused(timeout: str) -> None:
    # nan compares false with every deadline: a process that never got ready was waited for for ever.
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--startup-timeout", timeout])
    assert exited.value.code == 2


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
        "--log-format",
        "--startup-timeout",
    }, "a new option: say its default in its help, then add it here"
    for option, default in {
        "--data-dir": "(default: .data)",
        "--services": "(default: every service whose package is installed)",
        "--mesh": "(default: none)",
        "--canary": "(default: none)",
        "--http-port": "(default: 8080; 0: not served)",
        "--log-format": "(default: text)",
        "--startup-timeout": "(default: 60)",
    }.items():
        assert default in blocks[option], blocks[option]


def test_without_a_gateway_the_banner_offers_no_http_commands(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=run.port_plan(free=True), services=["catalog"])
    text = run.banner(stack, ["catalog"])
    assert "HTTP/JSON" not in text
    assert "only NATS runs" not in text


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


def test_an_unknown_service_exits_1_naming_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--data-dir", str(tmp_path), "--services", "catalog,warehouse"]) == 1
    error = capsys.readouterr().err
    assert "unknown service(s) warehouse" in error
    assert "gateway, users, catalog" in error


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


def test_reset_wipes_a_data_directory_but_refuses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    (data / "catalog.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)

    run.reset_data_dir(Path("data"))
    assert not data.exists()
    with pytest.raises(StackError, match="refusing to --reset"):
        run.reset_data_dir(Path("."))
    assert tmp_path.exists()


def test_reset_also_removes_the_sockets_folder_a_killed_launcher_left_outside_the_data_directory(
    tmp_path: Path,
) -> None:
    """The sockets' folder is in /tmp, behind `mesh/sockets`: deleting the data directory alone would leave it."""
    left = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX, dir="/tmp"))
    try:
        (left / "catalog.sock").touch()
        data = tmp_path / "data"
        (data / "mesh").mkdir(parents=True)
        (data / "mesh" / "sockets").symlink_to(left)
        run.reset_data_dir(data)
        assert not data.exists()
        assert not left.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)


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


def test_reset_says_what_it_deleted(tmp_path: Path) -> None:
    """A new user's orders, accounts and e-mails vanished without a word: the line names what went."""
    data = tmp_path / "data"
    for folder in ("nats", "mail", "traces"):
        (data / folder).mkdir(parents=True)
    for name in ("catalog.db", "catalog.db-wal", "orders.db", "orders.fingerprint-key", "stack.json"):
        (data / name).write_bytes(b"")

    said = run.reset_data_dir(data)
    assert not data.exists()
    assert said == (
        f"--reset: deleted {data} (the SQLite databases of catalog, orders; the idempotency keys of orders; "
        "mail, nats, stack.json, traces)"
    )
    assert run.reset_data_dir(data) == f"--reset: {data} does not exist yet; nothing to delete"


async def test_the_launcher_says_what_reset_deleted_before_it_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mail").mkdir(parents=True)
    (data / "catalog.db").write_bytes(b"")
    async with launched(data, "--services", "", "--http-port", "0", "--reset") as (process, lines):
        said = f"--reset: deleted {data} (the SQLite databases of catalog; mail)"
        assert said in lines, lines[:5]
        assert lines.index(said) < next(i for i, line in enumerate(lines) if line.startswith("starting "))
        await ctrl_c(process)


def test_reset_refuses_a_directory_that_holds_more_than_the_stacks_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run RUN_ARGS="--reset --data-dir docs"` (or `/tmp`, a typo for `/tmp/shop`): a folder of someone's
    # files, neither the working directory, nor a parent, nor home, nor a repository root. --reset deletes
    # the stack's data; it must not delete a folder the stack never wrote.
    (tmp_path / ".git").mkdir()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "architecture.md").write_text("# the only copy\n")
    (docs / "notes").mkdir()
    (docs / "notes" / "ideas.txt").write_text("unsaved work\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(StackError, match="refusing to --reset"):
        run.reset_data_dir(Path("docs"))
    assert (docs / "architecture.md").read_text() == "# the only copy\n"


async def test_a_second_launcher_on_the_data_of_one_that_still_runs_is_refused_and_resets_nothing(
    tmp_path: Path,
) -> None:
    """Under --free-ports no port told a second launcher that another still ran on the same data directory: it
    started beside it on the same NATS store and SQLite files, wrote its stack.json over the first's (the tools
    then lost the first stack when it stopped), and with --reset deleted that data under it. The first
    launcher's stack.json says it still runs: the second is refused, in one line, and touches nothing."""
    data = tmp_path / ".data"
    data.mkdir()
    (data / "catalog.db").write_bytes(b"the running stack's")
    # A live process that is not this test's launcher, standing for the first one.
    first = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(300)")
    try:
        write_stack_file(LocalStack(path=stack_file(data), pid=first.pid, nats_url="nats://127.0.0.1:1"))
        process = await start_launcher(data, "--services", "", "--reset", "--http-port", "0")
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await stop_launcher(process)
        assert process.returncode == 1, out.decode()
        assert out.decode().splitlines()[-1] == (
            f"error: a launcher still runs on {data} (pid {first.pid}, named by {stack_file(data)}): stop it "
            "(Ctrl-C in its terminal), or choose another --data-dir"
        )
        assert sorted(path.name for path in data.iterdir()) == ["catalog.db", "stack.json"]
        assert (data / "catalog.db").read_bytes() == b"the running stack's"
        assert json.loads(stack_file(data).read_text())["pid"] == first.pid
    finally:
        first.kill()
        await first.wait()


async def test_run_on_postgres_gives_each_service_a_database_on_a_throwaway_server(tmp_path: Path) -> None:
    async with launched(tmp_path / "data", "--services", "catalog", "--postgres", ready_within=120) as (process, lines):
        [said] = [line for line in lines if line.startswith("Databases: ")]
        port = int(said.split("127.0.0.1:")[1].split()[0])
        assert table_rows(lines)["catalog"]["state"] == "SERVING"
        products = json.loads(await run_printed_command(printed_commands(lines)[2]))["products"]
        assert products, "the catalog seeded its PostgreSQL database"
        assert not (tmp_path / "data" / "catalog.db").exists(), "the catalog used SQLite"
        await ctrl_c(process)
    assert not accepting(port), "the throwaway PostgreSQL outlived the launcher"


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop_left_behind(launcher: int, port: int) -> None:
    """After a failed test: the throwaway server the killed `launcher` left behind, still on `port`, and its folder
    (named after the launcher: never another launcher's, nor the `postgres` fixture's of this or another session,
    whose folders start shopmesh-pg-). A server that stopped leaves its folder for the next launcher to remove."""
    if not accepting(port):
        return
    for data_dir in Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{launcher}-*"):
        options = data_dir / "postmaster.opts"
        if options.exists() and f'"-p" "{port}"' in options.read_text():
            pg_ctl = [str(postgres_bin() / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]
            subprocess.run(["runuser", "-u", "postgres", "--", *pg_ctl], check=False, capture_output=True)
            shutil.rmtree(data_dir, ignore_errors=True)


async def test_no_throwaway_postgres_outlives_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    process = await start_launcher(tmp_path / "data", "--services", "", "--postgres")
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 120)
        [said] = [line for line in lines if line.startswith("Databases: ")]
        port = int(said.split("127.0.0.1:")[1].split()[0])
        assert accepting(port)
        process.kill()  # no chance to stop anything itself
        await process.wait()
    finally:
        await stop_launcher(process)
    try:
        # The kernel sends the orphaned server SIGINT (PR_SET_PDEATHSIG): PostgreSQL's fast shutdown.
        await eventually(lambda: not accepting(port), "the throwaway PostgreSQL gone with its launcher", timeout=15)
    finally:
        await asyncio.to_thread(stop_left_behind, process.pid, port)
    assert_next_launcher_removes_the_folder_of(process.pid)


def test_a_gone_launchers_folder_of_another_account_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's launcher, or one in another container sharing /tmp, may look gone from here."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = tmp_path / f"shopmesh-run-pg-{gone.pid}-abc"
    folder.mkdir()
    odd = tmp_path / "shopmesh-run-pg-\u00b2-abc"  # a superscript two: isdigit(), yet not a process id
    odd.mkdir()
    monkeypatch.setattr(run, "_data_dir_owner", lambda: os.geteuid() + 1)
    assert run.remove_orphaned_data_dirs(tmp_path) == []
    assert folder.exists()
    assert odd.exists()
    monkeypatch.setattr(run, "_data_dir_owner", os.geteuid)
    assert run.remove_orphaned_data_dirs(tmp_path) == [folder]
    assert odd.exists(), "not a launcher's folder: its name has no process id"


def assert_next_launcher_removes_the_folder_of(killed: int) -> None:
    """The throwaway server's folder stays behind a launcher killed with -9; the next `run --postgres`
    removes it, and no running launcher's."""
    [left] = Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{killed}-*")
    running = Path(tempfile.mkdtemp(prefix=f"shopmesh-run-pg-{os.getpid()}-"))
    try:
        assert left in run.remove_orphaned_data_dirs()
        assert not left.exists()
        assert running.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)
        running.rmdir()


async def test_a_launcher_signalled_while_postgres_starts_stops_it_and_exits_cleanly(tmp_path: Path) -> None:
    process = await start_launcher(tmp_path / "data", "--services", "", "--postgres")
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first.decode().startswith("starting a throwaway PostgreSQL server")
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
        assert await process.wait() == 0, output
    finally:
        await stop_launcher(process)
    assert "stopped while starting PostgreSQL" in output


async def test_run_with_the_envoy_mesh_puts_the_service_behind_its_sidecar_and_prints_a_call_that_works(
    tmp_path: Path,
) -> None:
    async with launched(tmp_path / "data", "--services", "catalog", "--mesh", "envoy") as (process, lines):
        rows = table_rows(lines)
        assert rows["catalog"]["state"] == "SERVING"
        assert rows["catalog-sidecar"]["state"] == "ready"
        # Plaintext reaches the service only where it listens behind its sidecar (the sidecar's row: its Unix
        # socket, no TCP port), not at its address.
        assert rows["catalog-sidecar"]["grpc"].startswith("unix:")
        assert await health_status(rows["catalog"]["grpc"], timeout=HEALTH_CALL_SECONDS) is None
        status = await health_status(rows["catalog-sidecar"]["grpc"], timeout=HEALTH_CALL_SECONDS)
        assert status == health_pb2.HealthCheckResponse.SERVING
        [intro] = [line for line in lines if line.startswith("Call catalog as gateway")]
        command = lines[lines.index(intro) + 1].strip()
        assert json.loads(await run_printed_command(command)) == {"status": "SERVING"}
        # And the refusal it shows: a method the gateway does not call, refused by the sidecar (grpcurl exits 7).
        [refusal] = [line for line in lines if line.startswith("A method gateway does not call")]
        command = lines[lines.index(refusal) + 1].strip()
        assert command.endswith(" shopmesh.catalog.v1.CatalogService/BatchGetProducts")
        refused = await asyncio.create_subprocess_exec(
            *shlex.split(command), cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        assert "Code: PermissionDenied" in err.decode()
        assert "RBAC: access denied" in err.decode()
        # The plain commands under "Try:" work too: they go to the catalog's own socket (grpcurl -unix).
        tried = [await run_printed_command(printed) for printed in printed_commands(lines)]
        assert json.loads(tried[1]) == {"status": "SERVING"}
        assert "stopped cleanly" in await ctrl_c(process)
    assert all(gone(int(row["pid"])) for row in rows.values() if row["pid"] != "-")


def test_the_local_gateway_lets_the_readmes_crowd_of_shoppers_sign_up_from_its_one_address() -> None:
    """Every `make run` client is 127.0.0.1: with the gateway's default password bucket (5 at once), most of
    `make shoppers` (a Register and a Login each, all at once) were refused RATE_LIMITED and never shopped."""
    example = re.search(r"--shoppers (\d+)", (REPOSITORY / "README.md").read_text())
    assert example, "README.md no longer shows a crowd of shoppers"
    shoppers = int(example[1])
    gateway = run.local_env(["gateway", "users"], None, run.port_plan(free=False))["gateway"]
    assert int(gateway["PASSWORD_RATE_LIMIT_BURST"]) >= 2 * shoppers
    assert "gateway" not in run.local_env(["catalog"], None, run.port_plan(free=False)), (
        "env for a service it does not run: refused"
    )


@pytest.mark.parametrize("mesh", [False, True], ids=["direct", "mesh-envoy"])
def test_the_local_gateway_trusts_the_edge_in_front_of_it_to_decide_what_is_traced(mesh: bool) -> None:
    """Untrusted, the gateway drew each traced HTTP call again at OTEL_TRACES_SAMPLER_RATIO: below 1, most
    left only the edge's span. The edge reaches the gateway at its planned address; under MESH=envoy it
    calls the gateway's sidecar, which forwards on the gateway's Unix socket, whose only peer it is: trusted
    as `unix`, and no TCP peer with it (any local client comes from the plan's host)."""
    ports = run.port_plan(free=False, mesh=mesh)
    trusted = run.local_env(["gateway"], None, ports)["gateway"]["TRUSTED_PROXIES"].split(",")
    if mesh:
        assert trusted == ["unix"]
    else:
        edge_connects_from = ipaddress.ip_address(ports.address("gateway").rsplit(":", 1)[0])
        assert any(edge_connects_from in ipaddress.ip_network(network) for network in trusted)
    without_proxies = run.port_plan(free=False, http_port=0)
    assert "TRUSTED_PROXIES" not in run.local_env(["gateway"], None, without_proxies)["gateway"], (
        "no edge, no sidecar: every peer is a client"
    )


def test_canary_option_takes_a_service_and_an_optional_weight() -> None:
    assert run.parse_args(["--mesh", "envoy", "--canary", "catalog:25"]).canary == Canary("catalog", 25)
    assert run.parse_args(["--canary", "catalog"]).canary == Canary("catalog", 10)
    for wrong in ("catalog:a-quarter", "nothing", "catalog-canary"):
        with pytest.raises(SystemExit):
            run.parse_args(["--canary", wrong])


@pytest.mark.timeout(300)  # the start's and the stop's bounds, which decide first
async def test_a_child_that_dies_while_the_stack_runs_is_restarted_or_ends_the_launcher_with_a_failure(
    tmp_path: Path,
) -> None:
    # The banner said NATS was ready; a crash later (OOM killer, a bug) must not leave the developer with a
    # launcher that runs on for ever around a dead process and then says "exit 0": either the launcher brings
    # the process back, or it stops everything and exits non-zero, as a process manager does.
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        rows = table_rows(lines)
        nats_pid, nats_address = int(rows["nats"]["pid"]), rows["nats"]["grpc"]
        host, port = nats_address.removeprefix("nats://").rsplit(":", 1)
        os.kill(nats_pid, signal.SIGKILL)
        await eventually(lambda: gone(nats_pid), "the killed nats-server gone")

        def back_or_ended() -> bool:
            if process.returncode is not None:
                return True
            with socket.socket() as probe:
                return probe.connect_ex((host, int(port))) == 0

        # Ending takes stopping the rest first, and a process that outlives its SIGTERM is SIGKILLed only after
        # the stop timeout (a loaded CI run once met a trace sink that stopped serving but not exiting).
        ends_within = DEFAULT_STOP_TIMEOUT + 30
        with contextlib.suppress(AssertionError):
            await eventually(back_or_ended, "NATS restarted, or the launcher ended", timeout=ends_within)
        if process.returncode is None and not back_or_ended():
            # Neither: the launcher ran on with NATS dead. How it ends after that must say so.
            process.send_signal(signal.SIGINT)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
            raise AssertionError(
                f"NATS stayed dead for {ends_within:g} s while the launcher ran on; Ctrl-C then exited "
                f"{process.returncode}:\n{rest.decode()}"
            )
        if process.returncode is not None:
            assert process.returncode != 0, "the launcher ended after NATS crashed, yet exited 0"


async def test_a_crash_stops_the_rest_and_exits_1_naming_the_process_and_its_last_lines(tmp_path: Path) -> None:
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        rows = table_rows(lines)
        os.kill(int(rows["traces"]["pid"]), signal.SIGKILL)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "traces exited unexpectedly (killed by SIGKILL): stopping the services" in said
    assert "error: traces exited unexpectedly (killed by SIGKILL); its last" in said
    assert "traces | " in said.split("error: ", 1)[1]
    assert all(gone(int(row["pid"])) for row in rows.values() if row["pid"] != "-")


async def test_a_crash_that_coincides_with_ctrl_c_still_exits_1_naming_the_process(tmp_path: Path) -> None:
    """Ctrl-C in the moment a child dies: the stop that follows must not hide the crash behind exit 0."""
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        traces = int(table_rows(lines)["traces"]["pid"])
        # The launcher held (SIGSTOP) while the sink is killed and Ctrl-C comes: it finds both waiting when it
        # goes on (the sink dead, or still dying), and may handle either first.
        process.send_signal(signal.SIGSTOP)
        try:
            os.kill(traces, signal.SIGKILL)
            await eventually(lambda: gone(traces), "the killed trace sink a zombie")
            process.send_signal(signal.SIGINT)
        finally:
            process.send_signal(signal.SIGCONT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "error: traces exited unexpectedly (killed by SIGKILL); its last" in said


def database_port(lines: list[str]) -> int:
    [said] = [line for line in lines if line.startswith("Databases: ")]
    return int(said.split("127.0.0.1:")[1].split()[0])


def throwaway_folders(launcher: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{launcher}-*"))


def postmaster_of(launcher: int) -> int:
    """The process id of the launcher's throwaway PostgreSQL server, from the pid file it keeps in its folder."""
    [folder] = throwaway_folders(launcher)
    return int((folder / "postmaster.pid").read_text().split()[0])


async def test_a_postgresql_server_that_dies_while_the_stack_runs_ends_the_launcher_with_exit_1_naming_it(
    tmp_path: Path,
) -> None:
    """The services' databases gone: the stack must not run on around them."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    async with launched(tmp_path / "data", *args, ready_within=120) as (process, lines):
        port = database_port(lines)
        try:
            os.kill(postmaster_of(process.pid), signal.SIGKILL)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await asyncio.to_thread(stop_left_behind, process.pid, port)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "PostgreSQL exited unexpectedly (killed by SIGKILL): stopping the services" in said
    assert "error: PostgreSQL exited unexpectedly (killed by SIGKILL); its last" in said
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"


async def test_a_postgresql_server_that_dies_while_ctrl_c_stops_the_rest_still_exits_1_naming_it(
    tmp_path: Path,
) -> None:
    """PostgreSQL is stopped last, after the stack: one that died after Ctrl-C, before its turn, is a crash
    as a service's would be, not a stop that went cleanly."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    async with launched(tmp_path / "data", *args, ready_within=120) as (process, lines):
        assert process.stdout is not None
        port = database_port(lines)
        traces, postmaster = int(table_rows(lines)["traces"]["pid"]), postmaster_of(process.pid)
        try:
            # The sink held (SIGSTOP) cannot end on the stop's SIGTERM: the stop waits at it while the server
            # is killed, which therefore dies after Ctrl-C and before its own turn.
            os.kill(traces, signal.SIGSTOP)
            try:
                process.send_signal(signal.SIGINT)
                await asyncio.wait_for(
                    read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
                )
                os.kill(postmaster, signal.SIGKILL)
                await eventually(lambda: gone(postmaster), "the killed PostgreSQL server gone")
            finally:
                os.kill(traces, signal.SIGCONT)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await asyncio.to_thread(stop_left_behind, process.pid, port)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "stopped cleanly" not in said, said
    assert "error: PostgreSQL exited unexpectedly (killed by SIGKILL); its last" in said
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"


async def test_a_second_ctrl_c_during_the_stop_kills_the_rest_and_blames_no_process(tmp_path: Path) -> None:
    """Ctrl-C twice: the second kills every process still running, NATS too before its turn to stop; those
    SIGKILLs are the launcher's own, not crashes (exit 0, no "exited unexpectedly")."""
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        assert process.stdout is not None
        traces = int(table_rows(lines)["traces"]["pid"])
        # The sink held (SIGSTOP) cannot end on the stop's SIGTERM: the stop waits at it (up to its timeout),
        # so the second Ctrl-C, sent once the launcher said it stops, lands before NATS's turn.
        os.kill(traces, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(
            read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
        )
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert "SIGINT again: killing what still runs of the stack now" in said, said
    assert "exited unexpectedly" not in said, said
    assert process.returncode == 0, said


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


# The launcher, with PostgreSQL's fast shutdown given an hour before the SIGKILL: a test that finds the server
# gone meanwhile proves something else killed it, whatever the machine's speed.
PATIENT_LAUNCHER = (
    "import sys\n"
    "from shopmesh_platform import run\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


def pending_signals(pid: int) -> set[signal.Signals]:
    """The signals sent to the process that it has not taken yet (held by SIGSTOP, say)."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return {sig for sig in signal.Signals if pending & (1 << (sig - 1))}


@pytest.mark.parametrize("during", ["the stack's stop", "PostgreSQL's stop"])
async def test_a_second_ctrl_c_kills_the_throwaway_postgresql_too_rather_than_wait_for_its_shutdown(
    tmp_path: Path, during: str
) -> None:
    """Ctrl-C twice with --postgres: the second kills the server at once as well, before its turn to stop or
    while the stop waits for its fast shutdown; the SIGKILL is the launcher's own, not a crash. It reaches the
    server alone (PostgreSQL puts each of its children in a session of its own): its backends, a client's
    among them, end by themselves once it is gone."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=PATIENT_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    held: list[int] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 120)
        port = database_port(lines)
        postmaster = postmaster_of(process.pid)
        client = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
        backend = await client.fetchval("SELECT pg_backend_pid()")
        started = descendants(process.pid)
        assert backend in started, "the client's backend is not the server's child"
        # PostgreSQL's own setsid(): no signal to the server's process group reaches the backend.
        assert (_stat(backend) or [])[2:4] == [str(backend)] * 2, "the backend is in the server's process group"
        try:
            # A server held (SIGSTOP) cannot shut down, fast or not: only a SIGKILL ends it.
            os.kill(postmaster, signal.SIGSTOP)
            held.append(postmaster)
            if during == "the stack's stop":
                # The sink held as well: the stop waits at it, before PostgreSQL's turn.
                traces = int(table_rows(lines)["traces"]["pid"])
                os.kill(traces, signal.SIGSTOP)
                held.append(traces)
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(
                read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
            )
            if during == "PostgreSQL's stop":
                await eventually(
                    lambda: signal.SIGINT in pending_signals(postmaster), "the stop's SIGINT waiting at the server"
                )
            process.send_signal(signal.SIGINT)
            await eventually(lambda: gone(postmaster), "the held PostgreSQL server killed by the second Ctrl-C")
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            for pid in held:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            await asyncio.to_thread(stop_left_behind, process.pid, port)
            client.terminate()
    finally:
        await stop_launcher(process)
    said = rest.decode()
    assert "SIGINT again: killing what still runs of the stack and PostgreSQL now" in said, said
    assert "exited unexpectedly" not in said, said
    assert process.returncode == 0, said
    await assert_nothing_left(process, started)


# The launcher with two seams: PostgreSQL's fast shutdown given an hour (PATIENT_LAUNCHER's), and a server it
# never finds accepting connections, which holds it in PostgreSQL's start for as long as a test needs.
NEVER_READY_POSTGRES_LAUNCHER = (
    "import asyncio, sys\n"
    "from shopmesh_platform import run\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "async def never_accepting(server, process, output):\n"
    "    print(f'PostgreSQL spawned as {process.pid}', flush=True)\n"
    "    await asyncio.Event().wait()\n"
    "run._until_accepting = never_accepting\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _living(pid: int, started: str) -> bool:
    """Whether that process (`started`: its start time, which tells it from a later one given the number) runs;
    an orphan that exited counts as gone even before init reaps it."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def descendants(root: int) -> dict[int, str]:
    """Every living descendant of `root`, with its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, str] = {}
    waiting = [root]
    while waiting:
        for pid, started in children.get(waiting.pop(), []):
            found[pid] = started
            waiting.append(pid)
    return found


def commands(processes: dict[int, str]) -> list[str]:
    names = []
    for pid in processes:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def left_in_session(session: int) -> list[int]:
    """Living processes of `session` (the launcher's own, started with start_new_session): what the launcher
    started and did not stop, whenever it started it; PostgreSQL's backends, which leave it, die with their
    server."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None
        if fields[0] != "Z" and int(fields[3]) == session
    ]


async def launcher(data_dir: Path, *args: str, script: str | None = None) -> Process:
    """The launcher in a session of its own, so that whatever it leaves running can be found."""
    command = ("-m", "shopmesh_platform.run") if script is None else ("-c", script)
    return await asyncio.create_subprocess_exec(
        *(sys.executable, *command, "--data-dir", str(data_dir), "--free-ports", *args),
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


@contextlib.asynccontextmanager
async def held_through_ctrl_c(
    process: Process, lines: list[str], held: int, pending: signal.Signals, waiting: str
) -> AsyncIterator[None]:
    """Holds `held` (SIGSTOP), so that a failed start's undo waits at it, until the undo has sent it `pending`;
    then Ctrl-C to the launcher, until it says it stops. The body runs with `held` still held; it goes on after."""
    assert process.stdout is not None
    try:
        os.kill(held, signal.SIGSTOP)
        await eventually(lambda: pending in pending_signals(held), waiting)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(
            read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
        )
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(held, signal.SIGCONT)


async def assert_start_failure_kept(process: Process, said: list[str], started: dict[int, str], error: str) -> None:
    """A Ctrl-C while a failed start was undone left the start's error: exit 1, its line, no "stopped while
    starting", no traceback; and nothing of what it had started runs."""
    output = "\n".join(said)
    assert process.returncode == 1, output
    assert f"error: {error}" in output, output
    assert "stopped while starting" not in output, output
    assert "Traceback" not in output, output
    await assert_nothing_left(process, started)


async def assert_nothing_left(process: Process, started: dict[int, str]) -> None:
    """No process the launcher had started when it was signalled (`started`), nor any of its session, runs."""
    await eventually(
        lambda: not [pid for pid, start in started.items() if _living(pid, start)] and not left_in_session(process.pid),
        "every process the launcher started gone",
    )
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"


def assert_stopped_in_one_line(output: list[str]) -> None:
    said = "\n".join(output)
    assert "Traceback" not in said, said
    assert "error:" not in said, said
    assert output[-1].startswith("stopped while starting"), said


def said_by(name: str) -> Callable[[str], bool]:
    """An output line of the launcher's child `name` (names are padded to the longest one)."""
    return lambda line: " | " in line and line.split(" | ", 1)[0].strip() == name


# NATS held between its spawn and its readiness: with no service to start, the stack was ready within
# milliseconds of "starting nats", and on a loaded machine the Ctrl-C sent on that line came after the start.
NATS_HELD_LAUNCHER = (
    "import asyncio, sys\n"
    "from shopmesh_platform import run, stack\n"
    "ready = stack.Stack._wait_ready\n"
    "async def held(self, child, timeout):\n"
    "    if child.name == 'nats':\n"
    "        print('nats spawned, held before it is ready', flush=True)\n"
    "        await asyncio.Event().wait()\n"
    "    await ready(self, child, timeout)\n"
    "stack.Stack._wait_ready = held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)

START_PHASES = {
    # Between its spawn and its first accepted connection (the seam holds it there).
    "PostgreSQL's": (("--services", "", "--postgres"), lambda line: line.startswith("PostgreSQL spawned as ")),
    "NATS'": (("--services", ""), lambda line: line.startswith("nats spawned, held")),
    "a service's": (("--services", "catalog"), said_by("catalog")),
    # Envoy says nothing until it stops: the sink's first line, then Envoy among the launcher's children.
    "a sidecar's (Envoy)": (("--services", "catalog", "--mesh", "envoy"), said_by("traces")),
    "a service's on PostgreSQL": (("--services", "catalog", "--postgres"), said_by("catalog")),
}


@pytest.mark.parametrize("phase", START_PHASES)
async def test_ctrl_c_during_the_start_stops_what_started_in_one_line_and_the_next_start_works(
    tmp_path: Path, phase: str
) -> None:
    """Ctrl-C before the stack is ready is a Ctrl-C as after: everything started is stopped, exit 0, no traceback."""
    args, reached = START_PHASES[phase]
    args = (*args, "--http-port", "0")
    script = {"PostgreSQL's": NEVER_READY_POSTGRES_LAUNCHER, "NATS'": NATS_HELD_LAUNCHER}.get(phase)
    process = await launcher(tmp_path / "data", *args, script=script)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stdout, reached, lines, f"{phase} start"), 120)
        if "--mesh" in args:
            await eventually(lambda: "envoy" in commands(descendants(process.pid)), "the sidecar's Envoy spawned")
        started = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    assert process.returncode == 0, "\n".join(output)
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, started)
    # Nothing locked or half-written stays behind on the data folder: the next start on it works.
    async with launched(tmp_path / "data", *args, ready_within=120) as (again, _):
        assert "stopped cleanly" in await ctrl_c(again)


@pytest.mark.parametrize("during", ["PostgreSQL's start", "the stack's start"])
async def test_a_second_ctrl_c_during_an_interrupted_start_kills_the_throwaway_postgresql_without_a_traceback(
    tmp_path: Path, during: str
) -> None:
    """Ctrl-C twice before the stack is ready, the server held so that its fast shutdown never ends: the second
    kills it, as after the start; no KeyboardInterrupt from the stop of the server."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    script = NEVER_READY_POSTGRES_LAUNCHER if during == "PostgreSQL's start" else PATIENT_LAUNCHER
    process = await launcher(tmp_path / "data", *args, script=script)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        phase = "PostgreSQL spawned as " if during == "PostgreSQL's start" else "starting nats"
        await asyncio.wait_for(read_until(process.stdout, lambda line: line.startswith(phase), lines, during), 120)
        # Spawned, the server may not have written its pid file yet; its process id is the spawned one.
        spawned = lines[-1].removeprefix("PostgreSQL spawned as ")
        postmaster = int(spawned) if spawned.isdigit() else postmaster_of(process.pid)
        started = descendants(process.pid)
        try:
            # A server held (SIGSTOP) cannot shut down, fast or not: only a SIGKILL ends it. Held before the
            # SIGINT comes: pending together, the lower-numbered SIGINT is taken first, and ends a server that
            # is still setpriv on its way to exec it.
            os.kill(postmaster, signal.SIGSTOP)
            await eventually(lambda: (_stat(postmaster) or ["?"])[0] == "T", "the server held")
            process.send_signal(signal.SIGINT)
            await eventually(
                lambda: signal.SIGINT in pending_signals(postmaster), "the stop's SIGINT waiting at the server"
            )
            process.send_signal(signal.SIGINT)
            await eventually(lambda: gone(postmaster), "the held PostgreSQL server killed by the second Ctrl-C")
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGCONT)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    said = "\n".join(output)
    assert process.returncode == 0, said
    killed = "PostgreSQL" if during == "PostgreSQL's start" else "what still runs of the stack and PostgreSQL"
    assert f"SIGINT again: killing {killed} now" in said, said
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, started)


# The launcher with a PostgreSQL server that fails its start once the test holds it (SIGSTOP): the start's
# undoing then waits at the held server's fast shutdown (given an hour), for as long as the test needs.
FAILING_POSTGRES_LAUNCHER = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "from shopmesh_platform.processes import StackError\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "async def failing_once_held(server, process, output):\n"
    "    print(f'PostgreSQL spawned as {process.pid}', flush=True)\n"
    "    stat = Path(f'/proc/{process.pid}/stat')\n"
    "    while stat.read_text().rsplit(')', 1)[1].split()[0] != 'T':\n"
    "        await asyncio.sleep(0.05)\n"
    "    raise StackError('PostgreSQL refused to start (held by the test)')\n"
    "run._until_accepting = failing_once_held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


async def test_ctrl_c_while_a_failed_start_is_undone_still_exits_1_with_the_error_once_postgresql_stopped(
    tmp_path: Path,
) -> None:
    """A Ctrl-C that comes after the start failed, while PostgreSQL shuts down, is no Ctrl-C of a start: the
    start's error and exit 1, not "stopped while starting" and 0; and the server's folder is removed only once
    the server is gone."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=FAILING_POSTGRES_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        spawned = lambda line: line.startswith("PostgreSQL spawned as ")  # noqa: E731
        await asyncio.wait_for(read_until(process.stdout, spawned, lines, "PostgreSQL's start"), 120)
        postmaster = int(lines[-1].removeprefix("PostgreSQL spawned as "))
        started = descendants(process.pid)
        # Held, the server fails its start; the stop's SIGINT that follows waits at it.
        waiting = "the failed start's stop waiting at the server"
        async with held_through_ctrl_c(process, lines, postmaster, signal.SIGINT, waiting):
            folders = throwaway_folders(process.pid)
            assert folders, "the folder was removed under a server still shutting down"
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    await assert_start_failure_kept(
        process,
        [*lines, *rest.decode(errors="replace").splitlines()],
        started,
        "PostgreSQL refused to start (held by the test)",
    )


# The launcher with a stack whose start fails once the test holds NATS (SIGSTOP), at the sink's turn: the start's
# undoing then waits at the held NATS (its stop given an hour), for as long as the test needs.
FAILING_STACK_LAUNCHER = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "from shopmesh_platform.processes import StackError\n"
    "from shopmesh_platform.stack import NATS, Stack\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "start_child = Stack._start_child\n"
    "async def failing_once_nats_held(self, child):\n"
    "    if child.name == NATS:\n"
    "        return await start_child(self, child)\n"
    "    self.stop_timeout = 3600.0\n"
    "    nats = self.pid(NATS)\n"
    "    print(f'NATS runs as {nats}', flush=True)\n"
    "    stat = Path(f'/proc/{nats}/stat')\n"
    "    while stat.read_text().rsplit(')', 1)[1].split()[0] != 'T':\n"
    "        await asyncio.sleep(0.05)\n"
    "    raise StackError('the sink refused to start (NATS held by the test)')\n"
    "Stack._start_child = failing_once_nats_held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("postgres", [False, True], ids=["on SQLite", "on PostgreSQL"])
async def test_ctrl_c_while_a_failed_stack_start_is_undone_still_exits_1_with_the_error(
    tmp_path: Path, postgres: bool
) -> None:
    """A Ctrl-C that comes after the stack's start failed, while what it started is stopped, is no Ctrl-C of a
    start: the start's error and exit 1, not "stopped while starting the stack" and 0; nothing is left."""
    args = ("--services", "", "--http-port", "0", *(["--postgres"] if postgres else []))
    process = await launcher(tmp_path / "data", *args, script=FAILING_STACK_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(
            read_until(process.stdout, lambda line: line.startswith("NATS runs as "), lines, "NATS' start"), 120
        )
        nats = int(lines[-1].removeprefix("NATS runs as "))
        started = descendants(process.pid)
        # Held, NATS fails the start; the undo's SIGTERM that follows waits at it.
        async with held_through_ctrl_c(process, lines, nats, signal.SIGTERM, "the failed start's stop waiting at NATS"):
            pass
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    await assert_start_failure_kept(
        process,
        [*lines, *rest.decode(errors="replace").splitlines()],
        started,
        "the sink refused to start (NATS held by the test)",
    )


# The launcher with initdb held until the file $SHOPMESH_TEST_RELEASE exists: PostgreSQL's start stays in
# initdb, where neither the server nor the stack exists yet, for as long as the test needs.
HELD_INITDB_LAUNCHER = (
    "import contextlib, os, sys, time\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "initialized_server = run.initialized_server\n"
    "@contextlib.contextmanager\n"
    "def held_initialized_server(prefix):\n"
    "    print('initdb held', flush=True)\n"
    "    while not Path(os.environ['SHOPMESH_TEST_RELEASE']).exists():\n"
    "        time.sleep(0.05)\n"
    "    with initialized_server(prefix) as server:\n"
    "        yield server\n"
    "run.initialized_server = held_initialized_server\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


async def test_a_second_ctrl_c_during_initdb_says_there_is_nothing_to_kill_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice while PostgreSQL's initdb runs: no server and no stack exist, so the second says it has
    nothing to kill, not that it kills everything; initdb's folder is removed once it ends, exit 0."""
    release = tmp_path / "release"
    monkeypatch.setenv("SHOPMESH_TEST_RELEASE", str(release))
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=HELD_INITDB_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stdout, lambda line: line == "initdb held", lines, "initdb"), 60)
        try:
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(
                read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
            )
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(
                read_until(process.stdout, lambda line: "SIGINT again" in line, lines, "the second Ctrl-C"), 60
            )
        finally:
            release.touch()
        rest, _ = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    said = "\n".join(output)
    assert process.returncode == 0, said
    assert "SIGINT again: nothing to kill yet (PostgreSQL's initdb prepares its folder" in said, said
    assert "killing" not in said, said
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, {})
