"""The Stack with a real nats-server and two chassis sample services as processes, as the e2e tests use it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import io
import os
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import shopmesh_platform.stack as stack_module
from shopmesh_chassis.testing import LOCAL_STACK_PORTS, eventually, free_ports, health_status
from shopmesh_platform.logsink import ConsoleSink
from shopmesh_platform.ports import PortInUse, PortPlan
from shopmesh_platform.processes import NotReady, StackError, signal_child, spawn
from shopmesh_platform.smtp_sink import read_mail
from shopmesh_platform.stack import HTTP_API, NATS, SMTP, ServiceSpec, Stack, start_waves
from shopmesh_platform.topology import SERVICES

SERVING = health_pb2.HealthCheckResponse.SERVING
# Only bound a hang: a loaded machine may take seconds to connect and answer, more than health_status's 1 s
# default. One health call, not a poll: nothing listening refuses it at once, so it still reads the state
# right after a start (which returns once SERVING) or a kill, and a start that returned early still fails.
HEALTH_CALL_SECONDS = 30
NATS_CONNECT_SECONDS = 30
# Bounds a child's (re)start: the Stack's own default startup timeout.
STARTUP_SECONDS = stack_module.DEFAULT_STARTUP_TIMEOUT * 2
SAMPLE = (sys.executable, "-m", "shopmesh_chassis.testing.sample_service")

# beta calls alpha. Before it becomes the sample service, it reports what the launcher handed it and
# refuses to start unless alpha is already SERVING: the stack must start callees first.
BETA = (
    sys.executable,
    "-c",
    "import asyncio, os, runpy, sys\n"
    "from shopmesh_chassis.testing import health_status\n"
    f"status = asyncio.run(health_status(os.environ['ALPHA_ADDRESS'], timeout={HEALTH_CALL_SECONDS}))\n"
    "print('handed', 'ALPHA_ADDRESS=' + os.environ['ALPHA_ADDRESS'], 'NATS_URL=' + os.environ['NATS_URL'],"
    " 'DATA_DIR=' + os.environ['DATA_DIR'], flush=True)\n"
    "if status != 1:\n"
    "    sys.exit(f'alpha was not SERVING when beta started: {status}')\n"
    "runpy.run_module('shopmesh_chassis.testing.sample_service', run_name='__main__', alter_sys=True)\n",
)


# A service that sends e-mail: it reports the mail server the launcher handed it, then serves.
MAILER = (
    sys.executable,
    "-c",
    "import os, runpy\n"
    "print('smtp', os.environ['SMTP_HOST'] + ':' + os.environ['SMTP_PORT'], flush=True)\n"
    "runpy.run_module('shopmesh_chassis.testing.sample_service', run_name='__main__', alter_sys=True)\n",
)


# A caller that keeps its channel to alpha open until alpha closes it as idle (GOAWAY), then serves: gRPC core
# logs that GOAWAY on the client side, at INFO unless GRPC_VERBOSITY says otherwise.
IDLE_CALLER = (
    sys.executable,
    "-c",
    "import asyncio, os, runpy, grpc\n"
    "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
    "async def idle() -> None:\n"
    "    async with grpc.aio.insecure_channel(os.environ['ALPHA_ADDRESS']) as channel:\n"
    "        health = health_pb2_grpc.HealthStub(channel)\n"
    f"        await health.Check(health_pb2.HealthCheckRequest(), timeout={HEALTH_CALL_SECONDS})\n"
    "        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 60)\n"
    "    print('closed as idle', channel.get_state(), flush=True)\n"
    "asyncio.run(idle())\n"
    "runpy.run_module('shopmesh_chassis.testing.sample_service', run_name='__main__', alter_sys=True)\n",
)


def sample_specs() -> list[ServiceSpec]:
    return [
        ServiceSpec("alpha", SAMPLE, env={"SERVICE_NAME": "alpha"}),
        ServiceSpec("beta", BETA, calls=("alpha",), env={"SERVICE_NAME": "beta"}),
    ]


def gone(pid: int | None) -> bool:
    """True when neither the process nor anything in its process group is left."""
    assert pid is not None
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# One stack for the tests that only look at it: starting one costs about two seconds.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack.for_tests(tmp_path_factory.mktemp("running") / "data", specs=sample_specs()) as stack:
        yield stack


@pytest.mark.asyncio(loop_scope="module")
async def test_every_service_answers_serving_on_its_own_port(running: Stack) -> None:
    assert running.services == ["alpha", "beta"]
    assert running.address("alpha") != running.address("beta")
    for name in running.services:
        assert await health_status(running.address(name), timeout=HEALTH_CALL_SECONDS) == SERVING
        assert running.is_running(name)


@pytest.mark.asyncio(loop_scope="module")
async def test_callees_are_serving_before_callers_start_and_callers_get_their_addresses(running: Stack) -> None:
    assert running.logs is not None
    handed = [line for line in running.logs.lines["beta"] if line.startswith("handed ")]
    assert handed == [
        f"handed ALPHA_ADDRESS={running.address('alpha')} NATS_URL={running.nats_url} DATA_DIR={running.data_dir}"
    ]


@pytest.mark.asyncio(loop_scope="module")
async def test_each_process_output_is_kept_and_written_to_its_log_file(running: Stack) -> None:
    assert running.logs is not None
    for name in ("alpha", "beta"):
        port = running.address(name).rsplit(":", 1)[1]
        assert any(f"shopmesh.sample.v1.SampleService on 127.0.0.1:{port}" in line for line in running.logs.lines[name])
        assert running.logs.path(name).read_text().splitlines() == running.logs.lines[name]
    assert any("Server is ready" in line for line in running.logs.lines[NATS])


@pytest.mark.asyncio(loop_scope="module")
async def test_nats_serves_jetstream_and_keeps_its_data_under_the_data_dir(running: Stack) -> None:
    nc = await nats.connect(running.nats_url, connect_timeout=NATS_CONNECT_SECONDS)
    try:
        js = nc.jetstream()
        await js.account_info()
        await js.add_stream(name="ORDERS", subjects=["orders.v1.>"])
        ack = await js.publish("orders.v1.order_confirmed", b"{}")
        assert ack.seq == 1
    finally:
        await nc.close()
    assert (running.data_dir / "nats" / "jetstream").is_dir()


# A stack of its own for each test that changes it.
@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(tmp_path / "data", specs=sample_specs()) as started:
        yield started


async def test_a_killed_service_restarts_on_the_same_port_and_serves_again(stack: Stack) -> None:
    address, old_pid = stack.address("alpha"), stack.pid("alpha")

    assert await stack.kill_service("alpha") == -signal.SIGKILL
    assert not stack.is_running("alpha")
    assert await health_status(address, timeout=HEALTH_CALL_SECONDS) is None
    assert await health_status(stack.address("beta"), timeout=HEALTH_CALL_SECONDS) == SERVING

    await stack.start_service("alpha")
    assert stack.address("alpha") == address
    assert stack.pid("alpha") != old_pid
    assert await health_status(address, timeout=HEALTH_CALL_SECONDS) == SERVING
    assert gone(old_pid)


async def test_a_restarted_nats_still_has_its_streams(stack: Stack) -> None:
    nc = await nats.connect(stack.nats_url, connect_timeout=NATS_CONNECT_SECONDS)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PAYMENTS", subjects=["payments.v1.>"])
        await js.publish("payments.v1.payment_captured", b"{}")
    finally:
        await nc.close()

    await stack.kill_service(NATS)
    await stack.start_service(NATS)

    nc = await nats.connect(stack.nats_url, connect_timeout=NATS_CONNECT_SECONDS)
    try:
        info = await nc.jetstream().stream_info("PAYMENTS")
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_stop_drains_callers_first_then_nats_and_leaves_no_process(tmp_path: Path) -> None:
    arrivals: list[tuple[str, str]] = []
    stack = Stack(
        tmp_path / "data",
        ports=PortPlan.free(["alpha", "beta"]),
        specs=sample_specs(),
        log_sink=lambda name, line: arrivals.append((name, line)),
    )
    await stack.start()
    pids = {name: stack.pid(name) for name in ["alpha", "beta", NATS]}

    codes = await stack.stop()

    # Every chassis service drains on SIGTERM and exits 0; nats-server shuts down cleanly too.
    assert codes == {"beta": 0, "alpha": 0, NATS: 0}
    assert all(gone(pid) for pid in pids.values())
    lines = [f"{name} | {line}" for name, line in arrivals]
    beta_stopped = next(i for i, line in enumerate(lines) if line.startswith("beta | ") and line.endswith("stopped"))
    alpha_draining = next(i for i, line in enumerate(lines) if line.startswith("alpha | ") and "SIGTERM" in line)
    nats_trapped = next(i for i, line in enumerate(lines) if line.startswith("nats | ") and "Trapped" in line)
    assert beta_stopped < alpha_draining < nats_trapped


async def test_a_service_exiting_during_startup_fails_start_with_its_prefixed_output(tmp_path: Path) -> None:
    console = io.StringIO()
    early = (sys.executable, "-c", "import sys; print('boom: no database'); sys.exit(3)")
    stack = Stack(
        tmp_path / "data",
        ports=PortPlan.free(["alpha", "early"]),
        specs=[
            ServiceSpec("alpha", SAMPLE, env={"SERVICE_NAME": "alpha"}),
            ServiceSpec("early", early, calls=("alpha",)),
        ],
        log_sink=ConsoleSink(stream=console),
    )

    with pytest.raises(StackError, match="early exited with status 3 before it was ready") as failure:
        await stack.start()

    assert "early | boom: no database" in str(failure.value)
    assert "early | boom: no database\n" in console.getvalue()
    assert "alpha | " in console.getvalue()
    assert gone(stack.pid("alpha"))
    assert gone(stack.pid(NATS))


async def test_a_service_writes_no_grpc_core_info_line_when_a_callee_closes_its_idle_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC core writes its INFO lines as plain text to stderr: in a JSON log stream, each is a line no log
    # pipeline parses. The launcher sets GRPC_VERBOSITY=ERROR for every service, as the images do.
    specs = [
        ServiceSpec("alpha", SAMPLE, env={"SERVICE_NAME": "alpha", "GRPC_MAX_CONNECTION_IDLE_SECONDS": "0.2"}),
        ServiceSpec("caller", IDLE_CALLER, calls=("alpha",), env={"SERVICE_NAME": "caller"}),
    ]
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    async with Stack.for_tests(tmp_path / "data", specs=specs) as stack:
        assert stack.logs is not None
        caller = stack.logs.lines["caller"]
    assert any(line.startswith("closed as idle") for line in caller), caller
    assert not [line for line in caller if "chttp2_transport" in line or "goaway" in line.lower()]


def test_an_operators_own_grpc_verbosity_reaches_every_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # To debug a connection, GRPC_VERBOSITY=INFO `make run` must show gRPC core's lines again.
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")
    stack = Stack.for_tests(tmp_path / "data", specs=sample_specs())
    assert {name: child.env["GRPC_VERBOSITY"] for name, child in stack._children.items()} == {
        "alpha": "INFO",
        "beta": "INFO",
    }


async def test_a_taken_port_fails_start_naming_it_before_anything_runs(tmp_path: Path) -> None:
    plan = PortPlan.free(["alpha", "beta"])
    stack = Stack(tmp_path / "data", ports=plan, specs=sample_specs(), log_sink=lambda name, line: None)
    with socket.socket() as squatter:
        squatter.bind((plan.host, plan.services["beta"].grpc))
        squatter.listen()
        with pytest.raises(PortInUse, match=rf"port {plan.services['beta'].grpc} \(beta gRPC\) is already in use"):
            await stack.start()
    assert stack.pid(NATS) is None
    assert stack.pid("alpha") is None


def _ports_in(value: object) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, Mapping):
        return set().union(*(_ports_in(item) for item in value.values()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return set().union(*(_ports_in(getattr(value, f.name)) for f in dataclasses.fields(value)))
    return set()


def test_a_free_port_is_never_one_of_make_runs_fixed_ports() -> None:
    """A free port (the tests', `make run --free-ports`') comes from the kernel's ephemeral range; the fixed ports
    of `make run` (with the mesh and any canary) that lie there are the ones free_ports() never hands out, so a
    stack on free ports runs beside `make run`, or beside a README walkthrough on pytest-xdist's other worker."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    plans = [PortPlan.local(), *(PortPlan.local(mesh=True, canary=name) for name in SERVICES)]
    fixed = set().union(*(_ports_in(plan) for plan in plans))
    assert {port for port in fixed if low <= port <= high} <= set(LOCAL_STACK_PORTS)


async def test_a_port_held_only_by_a_connection_is_waited_for_not_refused(tmp_path: Path) -> None:
    # The local ports of `make run` lie in the kernel's ephemeral range: a client connection may hold
    # one (for a minute after it closes, in TIME_WAIT) although no server listens there.
    plan = PortPlan.free(["alpha"])
    lines: list[tuple[str, str]] = []
    stack = Stack(
        tmp_path / "data", ports=plan, specs=sample_specs()[:1], log_sink=lambda name, line: lines.append((name, line))
    )
    port = plan.services["alpha"].grpc
    with socket.socket() as server:
        server.bind((plan.host, 0))
        server.listen()
        client = take_port_with_connection(plan.host, port, server)
        starting = asyncio.create_task(stack.start())

        def says_it_waits() -> bool:
            # Other ports of the plan may be named too: on CI the other test worker's outgoing connections take
            # ports of the ephemeral range, a planned one among them now and then.
            if starting.done():
                raise AssertionError(f"the start ended before it waited: {starting.exception()!r}")
            return any(
                who == "launcher"
                and line.startswith("port(s) ")
                and f"{port} (alpha gRPC)" in line
                and line.endswith("held by a client connection (open, or closed and in TIME_WAIT); waiting")
                for who, line in lines
            )

        await eventually(says_it_waits, "the launcher saying it waits")
        assert stack.pid(NATS) is None
        close_without_time_wait(client)
        try:
            await asyncio.wait_for(starting, 60)
            assert await health_status(stack.address("alpha"), timeout=HEALTH_CALL_SECONDS) == SERVING
        finally:
            await stack.stop()


def take_port_with_connection(host: str, port: int, server: socket.socket) -> socket.socket:
    """A client connection to `server` whose local end is host:port, as an outgoing connection's ephemeral port."""
    client = socket.socket()
    client.bind((host, port))
    client.connect(server.getsockname())
    return client


def close_without_time_wait(client: socket.socket) -> None:
    # A reset (SO_LINGER 0): no TIME_WAIT, the port is free at once.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["alpha", NATS])
async def test_a_child_whose_port_a_connection_takes_as_it_starts_is_started_again_once_the_port_is_free(
    tmp_path: Path, name: str
) -> None:
    # The ports are checked before anything starts (or were just freed by the child itself), yet an outgoing
    # connection (the launcher's own probes among them) may get one as its local end before the child binds it:
    # a CI run lost a sidecar so. Here a restart loses the race the same way.
    plan = PortPlan.free(["alpha"])
    lines: list[tuple[str, str]] = []
    stack = Stack(
        tmp_path / "data", ports=plan, specs=sample_specs()[:1], log_sink=lambda who, line: lines.append((who, line))
    )
    port = plan.services["alpha"].grpc if name == "alpha" else plan.nats
    async with stack:
        await stack.kill_service(name)
        with socket.socket() as server:
            server.bind((plan.host, 0))
            server.listen()
            client = take_port_with_connection(plan.host, port, server)
            restarting = asyncio.create_task(stack.start_service(name))
            try:
                await eventually(
                    lambda: any(
                        who == "launcher"
                        and line.startswith(f"{name} could not listen: a client connection took port(s) {port} ")
                        and line.endswith("starting it again once free (2 of 3)")
                        for who, line in lines
                    ),
                    "the launcher saying it starts the child again once the port is free",
                    # A Python child's start alone takes many seconds on a loaded machine.
                    timeout=STARTUP_SECONDS,
                )
                assert not restarting.done()
            finally:
                close_without_time_wait(client)
            await asyncio.wait_for(restarting, STARTUP_SECONDS)
        assert stack.is_running(name)
        # In one line, as README says: not that one and then the wait's own "held by a client connection".
        said = [line for who, line in lines if who == "launcher"]
        assert len(said) == 1, said
        if name == "alpha":
            assert await health_status(stack.address("alpha"), timeout=HEALTH_CALL_SECONDS) == SERVING


@pytest.mark.timeout(300)
async def test_a_restart_that_moves_the_metrics_port_is_started_again_once_a_connection_frees_the_new_one(
    tmp_path: Path,
) -> None:
    # The ports a failed start waits for are the ones this start listens on: `env` moved METRICS_PORT, so
    # the child's planned metrics port is free and the new one is the one the connection holds.
    plan = PortPlan.free(["alpha"])
    lines: list[tuple[str, str]] = []
    stack = Stack(
        tmp_path / "data",
        ports=plan,
        specs=sample_specs()[:1],
        log_sink=lambda who, line: lines.append((who, line)),
        # Only bounds a hang: on a loaded machine a Python child may print nothing for a minute.
        startup_timeout=STARTUP_SECONDS,
    )
    [moved] = free_ports(1, plan.host)
    async with stack:
        await stack.kill_service("alpha")
        with socket.socket() as server:
            server.bind((plan.host, 0))
            server.listen()
            client = take_port_with_connection(plan.host, moved, server)
            restarting = asyncio.create_task(stack.start_service("alpha", env={"METRICS_PORT": str(moved)}))
            try:
                await eventually(
                    # A start that gave up says nothing more: its failure is what the test shows then.
                    lambda: (
                        restarting.done()
                        or any(
                            who == "launcher"
                            and line.startswith(f"alpha could not listen: a client connection took port(s) {moved} ")
                            for who, line in lines
                        )
                    ),
                    "the launcher saying it starts alpha again once its new metrics port is free",
                    # A Python child's start alone takes many seconds on a loaded machine.
                    timeout=STARTUP_SECONDS,
                )
                assert not restarting.done(), restarting.exception()
            finally:
                close_without_time_wait(client)
            await asyncio.wait_for(restarting, STARTUP_SECONDS)
        assert stack.metrics_url("alpha") == f"http://{plan.host}:{moved}/metrics"
        assert await health_status(stack.address("alpha"), timeout=HEALTH_CALL_SECONDS) == SERVING


@pytest.mark.timeout(300)
async def test_a_child_whose_port_another_process_binds_as_it_starts_is_started_again_when_the_port_is_free(
    tmp_path: Path,
) -> None:
    # Free ports are picked before the child binds them: another process on the machine (a test picking its own
    # free port) may bind one in between and be gone by the time the launcher looks. No connection holds the port
    # then, nothing listens there, yet the child died on the chassis' "cannot listen on": a README walkthrough
    # lost a service so, with no second start.
    plan = PortPlan.free(["alpha"])
    port = plan.services["alpha"].grpc
    lines: list[tuple[str, str]] = []
    # No SO_REUSEADDR / SO_REUSEPORT: the child's bind fails, as against a port another process has bound.
    holder = socket.socket()

    def sink(who: str, line: str) -> None:
        lines.append((who, line))
        # That process lets the port go as the child gives up: the launcher finds it free.
        if who == "alpha" and "cannot listen on" in line:
            holder.close()

    stack = Stack(tmp_path / "data", ports=plan, specs=sample_specs()[:1], log_sink=sink)
    try:
        async with stack:
            await stack.kill_service("alpha")
            holder.bind((plan.host, port))
            await asyncio.wait_for(stack.start_service("alpha"), STARTUP_SECONDS)
            assert await health_status(stack.address("alpha"), timeout=HEALTH_CALL_SECONDS) == SERVING
    finally:
        holder.close()
    said = [line for who, line in lines if who == "launcher"]
    assert len(said) == 1, said
    assert said[0].startswith(f"alpha could not listen: another process had port(s) {port} as it started; "), said
    assert said[0].endswith("starting it again (2 of 3)"), said


async def test_a_child_that_fails_with_its_port_free_is_not_started_again(tmp_path: Path) -> None:
    starts: list[str] = []
    failing = (sys.executable, "-c", "import sys; print('started'); sys.exit(3)")
    stack = Stack(
        tmp_path / "data",
        ports=PortPlan.free(["early"]),
        specs=[ServiceSpec("early", failing)],
        log_sink=lambda who, line: starts.append(line) if line == "started" else None,
    )
    with pytest.raises(StackError, match="early exited with status 3 before it was ready"):
        await stack.start()
    assert starts == ["started"]


async def test_a_wave_whose_children_are_all_not_ready_in_time_fails_as_not_ready() -> None:
    """A wave's children start together with the same --startup-timeout: on a busy machine several run out of it
    in the same turn of the loop. Their errors were merged into a plain StackError, and make run left out its
    advice for a NotReady (give --startup-timeout longer)."""

    async def not_ready(name: str) -> None:
        raise NotReady(f"{name} was not SERVING at 127.0.0.1:1 within 60s; it printed nothing")

    with pytest.raises(NotReady) as failed:
        await stack_module._all([not_ready("payments"), not_ready("inventory")])
    assert str(failed.value) == (
        "payments was not SERVING at 127.0.0.1:1 within 60s; it printed nothing\n\n"
        "inventory was not SERVING at 127.0.0.1:1 within 60s; it printed nothing"
    )


async def test_children_start_whole_while_the_launcher_has_grpc_calls_in_flight() -> None:
    # A launcher health-checks some children over gRPC while it starts others, and a test drives traffic
    # while it restarts a service: a child must not die between fork and exec in gRPC's fork handlers
    # (about one child in ten did, with SIGSEGV or SIGABRT, before the launcher stopped using fork()).
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    calling = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def traffic() -> None:
            while calling:
                await stub.Check(health_pb2.HealthCheckRequest())

        callers = [asyncio.create_task(traffic()) for _ in range(16)]
        try:
            codes = []
            for _ in range(150):
                child = await spawn(["/bin/true"], os.environ)
                await child.communicate()
                codes.append(child.returncode)
        finally:
            calling = False
            await asyncio.gather(*callers)
            await server.stop(None)
    assert set(codes) == {0}, Counter(codes)


def test_topology_services_start_after_every_service_they_call() -> None:
    specs = [ServiceSpec(name, (), calls=service.calls) for name, service in SERVICES.items()]
    waves = start_waves(specs)
    wave_of = {name: index for index, wave in enumerate(waves) for name in wave}
    assert sorted(wave_of) == sorted(SERVICES)
    for name, service in SERVICES.items():
        assert all(wave_of[callee] < wave_of[name] for callee in service.calls), name
    assert waves[-1] == ["gateway"]


def test_a_call_cycle_is_refused() -> None:
    with pytest.raises(StackError, match="call cycle among a, b"):
        start_waves([ServiceSpec("a", (), calls=("b",)), ServiceSpec("b", (), calls=("a",)), ServiceSpec("c", ())])


def test_console_lines_are_prefixed_with_the_padded_name_and_coloured_only_when_asked() -> None:
    plain, coloured = io.StringIO(), io.StringIO()
    ConsoleSink(["nats", "inventory"], stream=plain)("nats", "ready")
    ConsoleSink(["nats"], stream=coloured, colour=True)("nats", "ready")
    assert plain.getvalue() == "nats      | ready\n"
    assert coloured.getvalue() == "\033[36mnats |\033[0m ready\n"


async def send_email(address: str, message_id: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "shop@shopmesh.example", "ada@example.com", "Hello"
    message["Message-ID"] = message_id
    message.set_content("Hello")
    host, port = address.rsplit(":", 1)

    def deliver() -> None:
        with smtplib.SMTP(host, int(port), timeout=5) as client:
            client.send_message(message)

    await asyncio.to_thread(deliver)


async def test_a_service_that_sends_email_gets_an_smtp_sink_that_stores_mail_and_restarts_like_nats(
    tmp_path: Path,
) -> None:
    spec = ServiceSpec("mailer", MAILER, env={"SERVICE_NAME": "mailer"}, uses_smtp=True)
    stack = Stack.for_tests(tmp_path / "data", specs=[spec])
    await stack.start()
    try:
        assert stack.smtp_address is not None
        assert stack.logs is not None
        assert f"smtp {stack.smtp_address}" in stack.logs.lines["mailer"]
        await send_email(stack.smtp_address, "<evt_1@shopmesh.notifications>")

        assert await stack.kill_service(SMTP) == -signal.SIGKILL
        await stack.start_service(SMTP)
        await send_email(stack.smtp_address, "<evt_2@shopmesh.notifications>")

        assert [m["Message-ID"] for m in read_mail(stack.smtp_dir)] == [
            "<evt_1@shopmesh.notifications>",
            "<evt_2@shopmesh.notifications>",
        ]
        logs = stack.logs
        await eventually(
            lambda: any("stored evt_2@shopmesh.notifications.eml" in line for line in logs.lines[SMTP]),
            "the restarted sink's log line for evt_2",
        )
    finally:
        codes = await stack.stop()
    assert codes == {"mailer": 0, SMTP: 0, NATS: 0}


# A service with a database: it writes its SQLite file under the data directory, as the shop's services do
# (users.db holds the users' signing keys), then serves and sends e-mail like MAILER.
DB_MAILER = (
    sys.executable,
    "-c",
    "import os, runpy, sqlite3\n"
    "db = sqlite3.connect(os.path.join(os.environ['DATA_DIR'], 'mailer.db'))\n"
    "db.execute('CREATE TABLE secrets (key TEXT)')\n"
    "db.commit()\n"
    "db.close()\n"
    "print('db written', flush=True)\n"
    "runpy.run_module('shopmesh_chassis.testing.sample_service', run_name='__main__', alter_sys=True)\n",
)


def shared_with_others(path: Path) -> int:
    """The permission bits of `path` its group and other accounts have: 0 when only its owner may use it."""
    return path.stat().st_mode & 0o077


async def test_the_data_directory_and_the_files_the_stack_writes_in_it_are_private_to_this_user(
    tmp_path: Path,
) -> None:
    # The usual umask (022), under which a plain mkdir or open leaves everything readable by every account,
    # and a data directory made earlier with it: the stack must not rely on either.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        spec = ServiceSpec("mailer", DB_MAILER, env={"SERVICE_NAME": "mailer"}, uses_smtp=True)
        stack = Stack.for_tests(data_dir, specs=[spec])
        await stack.start()
        try:
            assert stack.smtp_address is not None
            await send_email(stack.smtp_address, "<evt_1@shopmesh.notifications>")
            assert stack.logs is not None
            logs = stack.logs
            await eventually(lambda: any("db written" in line for line in logs.lines["mailer"]), "the db's line")
            assert len(read_mail(stack.smtp_dir)) == 1
        finally:
            await stack.stop()
    finally:
        os.umask(old_umask)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    [mail] = stack.smtp_dir.glob("*.eml")
    written = [data_dir / "mailer.db", stack.logs.path("mailer"), mail, stack.smtp_dir, stack.logs.directory]
    assert {str(path): shared_with_others(path) for path in written} == {str(path): 0 for path in written}


def test_database_url_is_the_given_one_else_the_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://shop@db:5432/orders"
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES)), env={"orders": {"DATABASE_URL": url}})
    assert stack.database_url("orders") == url
    assert stack.database_url("users") == f"sqlite:///{tmp_path.absolute() / 'users'}.db"
    assert stack.database_url("gateway") is None


def test_without_a_service_that_sends_email_no_smtp_sink_is_planned_to_run(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=PortPlan.free(["alpha", "beta"]), specs=sample_specs())
    assert stack.smtp_address is None
    with pytest.raises(StackError, match="'smtp' is not part of this stack"):
        stack.pid(SMTP)


async def test_a_process_that_dies_on_its_own_is_a_crash_but_one_the_stack_stops_or_restarts_is_not(
    stack: Stack,
) -> None:
    watching = asyncio.ensure_future(stack.crashed())
    await asyncio.sleep(0)  # one turn of the loop: the watch is on alpha's process before the stack stops it
    # The stack's own stop exits 0 (SIGTERM), the crash below is a SIGKILL: a stop taken for a crash is then
    # the first exit reported, and the summary says so, whenever the watch got round to it. (A pause to see
    # that the watch stayed quiet proves nothing on a machine too loaded to run it within the pause.)
    await stack.stop_service("alpha")
    await stack.start_service("alpha")
    assert not watching.done(), watching.result().summary

    # The restarted alpha is watched too: the OOM killer, a segfault, `kill -9` from a terminal.
    os.kill(stack.pid("alpha") or 0, signal.SIGKILL)
    crash = await asyncio.wait_for(watching, 15)
    assert crash.summary == "alpha exited unexpectedly (killed by SIGKILL)"
    assert "alpha | " in str(crash)
    assert "last" in str(crash)


async def test_processes_the_stack_restarts_together_are_not_crashes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crashed`: "The stack's own stops and restarts (stop_service, start_service) are not crashes". Were
    `_launch` to clear `stopping` before it awaits the spawn, then while one restart is spawning (a loaded
    machine: here alpha's takes 0.3 s), another's launch would wake `crashed`, which would then wait on the
    first one's old, already stopped process and report it."""
    real_spawn = stack_module.spawn

    async def slow_for_alpha(argv: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> asyncio.subprocess.Process:
        if env.get("SERVICE_NAME") == "alpha":
            await asyncio.sleep(0.3)
        return await real_spawn(argv, env, **kwargs)

    monkeypatch.setattr(stack_module, "spawn", slow_for_alpha)
    watching = asyncio.ensure_future(stack.crashed())
    # Stopped as the stack stops them (both exit 0), then alpha crashes with SIGKILL: the old alpha's exit,
    # reported during the restarts, would be the crash the watch returns, however late it ran.
    await stack.stop_service("alpha")
    await stack.stop_service(NATS)
    await asyncio.gather(stack.start_service(NATS), stack.start_service("alpha"))
    assert not watching.done(), watching.result().summary

    os.kill(stack.pid("alpha") or 0, signal.SIGKILL)
    crash = await asyncio.wait_for(watching, 15)
    assert crash.summary == "alpha exited unexpectedly (killed by SIGKILL)"


async def test_a_crash_is_reported_while_another_process_still_holds_the_dead_ones_output(stack: Stack) -> None:
    """The exit is the crash, not the end of its output: asyncio's `Process.wait()` (Python 3.11) returns only
    once every copy of the child's stdout pipe is closed too, so a watch built on it stays quiet for as long as
    anything else holds that pipe (a process the child started in a session of its own, which its group's
    SIGKILL misses; here a copy opened through /proc), and `make run` runs on around a dead NATS."""
    watching = asyncio.ensure_future(stack.crashed())
    nats = stack.pid(NATS)
    assert nats is not None
    # A second writer of NATS' output pipe that outlives it.
    holder = os.open(f"/proc/{nats}/fd/1", os.O_WRONLY)
    try:
        os.kill(nats, signal.SIGKILL)
        crash = await asyncio.wait_for(asyncio.shield(watching), 30)
    finally:
        os.close(holder)
    assert crash.summary == "nats exited unexpectedly (killed by SIGKILL)"


async def test_a_stop_ends_once_the_process_exits_while_another_process_still_holds_its_output(stack: Stack) -> None:
    """The same for a stop: waiting on `Process.wait()`, it took a process that had exited at once for one that
    outlived its SIGTERM, waited out stop_timeout and sent a SIGKILL to a process already gone."""
    nats = stack.pid(NATS)
    assert nats is not None
    holder = os.open(f"/proc/{nats}/fd/1", os.O_WRONLY)
    try:
        code = await asyncio.wait_for(stack.stop_service(NATS), stack.stop_timeout + 30)
    finally:
        os.close(holder)
    assert code == 0
    assert "still running" not in "\n".join(stack.recent_lines(NATS))


# The kernel's last process number handed out in this pid namespace: the next process gets the one after.
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
# Holds SIGTERM blocked, so that one sent to it stays pending; says "ready" once it does, and at end of input
# the signals pending, as the last line.
SIGNAL_RECORDER = (
    "import signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
    "print(sorted(s.name for s in signal.sigpending()), flush=True)\n"
)


def until_reaped(pidfd: int) -> None:
    """Wait, without giving the event loop a turn, until asyncio's child watcher thread has reaped the
    process of `pidfd` (from then on it is no child of ours)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            raise AssertionError("asyncio's child watcher never reaped the killed child")
        time.sleep(0.01)


def signal_recorder_with_pid(pid: int) -> subprocess.Popen[str] | None:
    """A process of the test's own, leading its own process group, given the number `pid`, once it holds
    SIGTERM blocked; None when another process or thread on the machine holds the number now."""
    for _ in range(50):
        try:
            NS_LAST_PID.write_text(str(pid - 1))
        except OSError as error:
            pytest.fail(f"choosing the next process number needs root or CAP_CHECKPOINT_RESTORE: {error}")
        recorder = subprocess.Popen(
            [sys.executable, "-c", SIGNAL_RECORDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            process_group=0,
        )
        if recorder.pid == pid:
            assert recorder.stdout is not None
            assert recorder.stdout.readline() == "ready\n"
            return recorder
        # Another process on the machine took the number first: that one is not ours to wait for.
        recorder.kill()
        recorder.wait()
        if Path(f"/proc/{pid}").exists():  # and keeps it (threads have numbers and /proc entries too)
            return None
    raise AssertionError(f"the number {pid} was taken by other processes 50 times over")


def kernel_before_6_9(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Linux before 6.9: pidfd_send_signal takes no flags (EINVAL), PIDFD_SIGNAL_PROCESS_GROUP included."""
    send = signal.pidfd_send_signal

    def without_flags(pidfd: int, sig: int, siginfo: None = None, flags: int = 0) -> None:
        if flags != 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        send(pidfd, sig, siginfo, flags)

    monkeypatch.setattr(signal, "pidfd_send_signal", without_flags)


@pytest.mark.parametrize(
    ("sig", "kernel"), [(signal.SIGTERM, "6.9+"), (signal.SIGKILL, "6.9+"), (signal.SIGKILL, "before 6.9")]
)
async def test_a_signal_for_a_reaped_child_never_reaches_a_process_given_its_number_since(
    sig: signal.Signals, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher signals a child in the instant after asyncio's watcher thread reaped it and before the event
    loop heard so (returncode still None), and its number has gone to another process meanwhile, which leads a
    process group of its own: the signal, SIGKILL to the group included, reaches nothing and raises nothing;
    on a kernel that cannot signal a group through a pidfd too."""
    if kernel == "before 6.9":
        kernel_before_6_9(monkeypatch)
    # A number another process took between the reaping and the recorder's start (in CI, the other test
    # worker's) stays taken: the scenario starts over with a new child.
    for _ in range(10):
        child = await spawn(["sleep", "60"], os.environ)
        pidfd = os.pidfd_open(child.pid)
        try:
            os.kill(child.pid, signal.SIGKILL)  # from outside the launcher, as a crash
            # No await from here on: the event loop must not hear of the exit before the signal.
            until_reaped(pidfd)
            assert child.returncode is None
            recorder = signal_recorder_with_pid(child.pid)
            if recorder is not None:
                try:
                    signal_child(child, sig)
                finally:
                    said, _ = recorder.communicate("", timeout=30)
                assert recorder.returncode == 0, f"the process given the child's number died ({recorder.returncode})"
                assert said.splitlines()[-1] == "[]", f"the process given the child's number was sent {said}"
        finally:
            os.close(pidfd)
        assert await child.wait() == -signal.SIGKILL
        if recorder is not None:
            return
    raise AssertionError("other processes took the killed child's number before the recorder, 10 times over")


def ended(pid: int) -> bool:
    """The process is gone, or an orphan that exited and waits for init to reap it."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


async def spawn_with_grandchild() -> tuple[asyncio.subprocess.Process, int]:
    """A child of `spawn` that starts a process of its own, in its group, and waits for it: the two pids."""
    # Not on the child's output pipe: asyncio's wait() waits for the pipe to close as well as for the child.
    child = await spawn(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!; wait"], os.environ)
    assert child.stdout is not None
    return child, int(await asyncio.wait_for(child.stdout.readline(), 30))


def without_pidfds(monkeypatch: pytest.MonkeyPatch, system: str) -> list[int]:
    """Make this process's pidfds what they are on `system`; the pidfds opened from then on."""
    opened: list[int] = []
    if system == "macOS":
        monkeypatch.delattr(os, "pidfd_open")
        return opened
    if system == "Linux 5.3":  # pidfd_open works, waitid takes no pidfd yet
        open_pidfd, waitid = os.pidfd_open, os.waitid

        def recorded(pid: int, flags: int = 0) -> int:
            opened.append(open_pidfd(pid, flags))
            return opened[-1]

        def without_p_pidfd(idtype: int, ident: int, options: int) -> os.waitid_result | None:
            if idtype == os.P_PIDFD:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return waitid(idtype, ident, options)

        monkeypatch.setattr(os, "pidfd_open", recorded)
        monkeypatch.setattr(os, "waitid", without_p_pidfd)
        return opened
    refusal = {"Linux before 5.3": errno.ENOSYS, "seccomp without pidfd_open": errno.EPERM}[system]

    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "pidfd_open", refused)
    return opened


def pidfds_among(fds: list[int]) -> list[int]:
    """Those of `fds` open as pidfds (nothing else opens pidfds here: a number reused since would be a socket
    or a pipe)."""
    return [
        fd
        for fd in fds
        if Path(f"/proc/self/fd/{fd}").exists() and os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("system", ["macOS", "Linux before 5.3", "seccomp without pidfd_open", "Linux 5.3"])
async def test_without_pidfds_spawn_returns_a_child_that_is_signalled_and_stopped_by_its_number(
    sig: signal.Signals, system: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pidfds are missing or refused, spawn still returns its child, leaves no pidfd open for it, and
    signal_child reaches it by number: the signal ends it, SIGKILL with the process it started."""
    opened = without_pidfds(monkeypatch, system)
    child, grandchild = await spawn_with_grandchild()
    try:
        assert not pidfds_among(opened), "spawn left open the pidfd it could not use"
        signal_child(child, sig)
        assert await asyncio.wait_for(child.wait(), 30) == -sig
        if sig == signal.SIGKILL:
            await eventually(lambda: ended(grandchild), "the child's own child killed with its group")
    finally:
        if child.returncode is None:
            os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


async def test_before_linux_6_9_sigkill_still_takes_the_group_of_a_child_not_yet_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without group signals through a pidfd, SIGKILL for a running child still reaches what it started."""
    kernel_before_6_9(monkeypatch)
    child, grandchild = await spawn_with_grandchild()
    try:
        signal_child(child, signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), 30) == -signal.SIGKILL
        await eventually(lambda: ended(grandchild), "the child's own child killed with its group")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.parametrize("inherited", [None, "12345"], ids=["unset", "set-in-the-launchers-environment"])
def test_only_a_service_has_a_metrics_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inherited: str | None
) -> None:
    # The stack's other processes inherit the launcher's environment: a METRICS_PORT there is nobody's.
    if inherited is None:
        monkeypatch.delenv("METRICS_PORT", raising=False)
    else:
        monkeypatch.setenv("METRICS_PORT", inherited)
    stack = Stack.for_tests(tmp_path / "data", http=True)
    assert (
        stack.metrics_url("gateway") == f"http://{stack.ports.host}:{stack.ports.ports_of('gateway').metrics}/metrics"
    )
    assert [stack.metrics_url(name) for name in (NATS, HTTP_API)] == [None, None]
