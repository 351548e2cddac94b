"""Test helpers: run a chassis server in-process or as a subprocess on a free port, and wait for it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import reprlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import grpc
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import RETRY_PUSHBACK
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.migrations import alembic_config
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.sockets import connected_to_a_server

T = TypeVar("T")


# `make run`'s fixed gRPC ports (shopmesh_platform.topology), the only fixed local ports inside the kernel's
# ephemeral range (32768-60999), where a free port comes from. A test handed one of them fails to bind while a
# README walkthrough (on pytest-xdist's other worker) or a developer's own `make run` holds it.
LOCAL_STACK_PORTS = range(50050, 50058)


# A port free_ports hands out is free a moment ago, and bound seconds later (a child process starting): meanwhile
# another process (pytest-xdist's other worker, another checkout's tests, `make run --free-ports`) must not get it.
# Each one handed out is claimed for CLAIM_SECONDS by a file named after it here, one folder per user.
CLAIMS = Path(tempfile.gettempdir()) / f"shopmesh-free-ports-{os.getuid()}"
CLAIM_SECONDS = 120.0


def _claim(port: int) -> bool:
    """Claim `port` for this account: False when another free_ports call handed it out less than CLAIM_SECONDS ago."""
    path = CLAIMS / str(port)
    try:
        CLAIMS.mkdir(mode=0o700, exist_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            if time.time() - path.stat().st_mtime < CLAIM_SECONDS:
                return False
            os.utime(path)  # an old claim: the port's user bound it long ago, or never will
    except OSError:
        pass  # nowhere to claim (a read-only /tmp): the OS's pick alone
    return True


def _reusable_picks_end() -> int:
    """Where the ports Linux gives a bind to port 0 with SO_REUSEADDR end: gRPC's servers, Envoy's listeners and
    Python's HTTP servers, asked for any port, get one of the lower half of the ephemeral range only."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 0
    return low + (((high + 1 - low) >> 2) << 1)


def free_ports(count: int, host: str = "127.0.0.1", avoid: Container[int] = LOCAL_STACK_PORTS) -> list[int]:
    """`count` distinct ports that were free a moment ago (the OS picks them), none of them in `avoid`, none that
    another process's free_ports handed out lately (see CLAIMS), and none that a server asking the OS for any port
    (gRPC on port 0, in a test beside this one) could get before the caller binds it."""
    # Every socket stays bound until all are picked, so the OS cannot hand out one port twice.
    floor = _reusable_picks_end()
    # IPv6 for an IPv6 host ("::1"): an IPv4 socket cannot bind it.
    [(family, _, _, _, address), *_] = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    with contextlib.ExitStack() as held:
        picked: list[int] = []
        for _ in range(count * 100):
            if len(picked) == count:
                return picked
            sock = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind(address)
            port = int(sock.getsockname()[1])
            if port not in avoid and port >= floor and _claim(port):
                picked.append(port)
        if len(picked) == count:
            return picked
    raise RuntimeError(f"no {count} free ports on {host} after {count * 100} picks (claims in {CLAIMS})")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it), not one of `make run`'s."""
    [port] = free_ports(1, host)
    return port


class DiallingFromItsTarget(socket.socket):
    """For tests, in place of socket.socket: a socket whose connect gets, as its own end, the very port it dials:
    what Linux does once in a while to a connect to a port nobody listens on yet (it hands a connect any free port
    of the ephemeral range, where free_ports' ports lie too; a loop of connects to a free port reached itself
    after some 12,000 tries here)."""

    def connect(self, address: Any) -> None:
        self.bind(address)
        super().connect(address)

    def connect_ex(self, address: Any) -> int:
        self.bind(address)
        return super().connect_ex(address)


def accepts_connections(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a server listens on `host`:`port` (at any of its addresses, IPv4 or IPv6: "::1" is dialled over
    IPv6), asked without taking the port from a server about to bind it: a connection that reached itself counts
    as nothing listening, and is reset (`shopmesh_chassis.sockets.connected_to_a_server`)."""
    for family, _, _, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            if sock.connect_ex(address) == 0 and connected_to_a_server(sock):
                return True
    return False


async def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The grpc.health.v1 status of `service` at `address`, or None when it does not answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types the sync stub only
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
        return int(response.status)


def told_not_to_retry(error: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call came with gRFC A6's pushback "do not retry" (a negative grpc-retry-pushback-ms),
    final or not: services read finality with `grpc_errors.answered_final`, never from this."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_PUSHBACK:
            text = value.decode() if isinstance(value, bytes) else value
            return text.strip().startswith("-")
    return False


async def wait_serving(address: str, timeout: float = 20.0, service: str = "") -> None:
    """Poll health until SERVING; raises TimeoutError naming the address otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await health_status(address, service) == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{address} was not SERVING within {timeout}s")


async def refused_with_the_stream_held_open(
    channel: grpc.aio.Channel, method: str, timeout: float = 10.0
) -> grpc.aio.AioRpcError:
    """The error a streaming call of `method` ends with while the client keeps its side of the stream open
    (its headers sent, no end), as grpcurl's reflection does. A server, or a proxy, that waits for the
    request's end before refusing meets `timeout` instead: DEADLINE_EXCEEDED, not the refusal. An answer,
    where a refusal was expected, is an AssertionError."""
    held = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        # No message, before the answer or after: grpc.aio's write of one racing a trailers-only refusal
        # sometimes fails the call as INTERNAL ("Internal error from Core") in the refusal's place.
        await held.wait()
        return
        yield b""  # never reached: makes this an async generator, as a request iterator is

    # No (de)serializers: the request and the answer are raw bytes.
    raw: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
    call = raw(requests(), timeout=timeout)
    try:
        answer = await call.read()
    except grpc.aio.AioRpcError as refused:
        return refused
    finally:
        held.set()
    call.cancel()  # the answering stream is not left open until the channel closes
    raise AssertionError(f"{method} was not refused: it answered {answer!r}")


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]], what: str, *, timeout: float = ..., interval: float = ...
) -> T: ...
@overload
async def eventually(condition: Callable[[], T], what: str, *, timeout: float = ..., interval: float = ...) -> T: ...
async def eventually(condition: Callable[[], Any], what: str, *, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Call `condition` until it returns (or awaits to) something truthy, and return that.

    For outcomes that background work brings about (a relay publishing, a consumer catching up, a
    process exiting): a bounded wait, never a timing assertion, so the timeout is generous and only
    a condition that never holds fails, with AssertionError naming `what` and the last value seen.
    Exceptions from `condition` propagate; a caller that expects some (a restarting server) turns
    them into a falsy value itself."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what} (last seen: {reprlib.repr(value)})")
        await asyncio.sleep(interval)


async def schema_differences(database: Database, metadata: MetaData) -> list[Any]:
    """What a migrated database has other than `metadata` declares (Alembic's autogenerate comparison):
    empty when the migrations build the tables, columns and indexes the store's code relies on. Only
    `metadata`'s tables are compared: the other branch's tables (the chassis', a service's) share the
    database."""

    def ours(name: str | None, kind: str, parents: Mapping[str, str | None]) -> bool:
        return kind != "table" or name in metadata.tables

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"include_name": ours})
        return list(compare_metadata(context, metadata))

    async with database.read() as connection:
        return await connection.run_sync(compare)


async def migrate_to(database: Database, versions_dir: Path, service_revision: str) -> None:
    """The database as a previous release left it: the service's migrations up to `service_revision` and the
    chassis' to their head, each run as migrate() runs it (on PostgreSQL one transaction per migration, on a
    connection of its own: a migration may build an index concurrently)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config(versions_dir)
        config.attributes["connection"] = connection
        config.attributes["transaction_per_migration"] = connection.dialect.name == "postgresql"
        command.upgrade(config, service_revision)
        command.upgrade(config, "chassis@head")

    if database.dialect == "postgresql":
        async with database.dedicated_connection() as dedicated:
            await dedicated.run_sync(upgrade)
            await dedicated.commit()
    else:
        async with database.sqlite_schema_transaction() as connection:
            await connection.run_sync(upgrade)


async def cut_off_midway(stop: Coroutine[Any, Any, object], *, after: float = 0.05, timeout: float = 5.0) -> None:
    """Run `stop` (a shutdown hook, or a `stop` one awaits) and cancel it `after` seconds in, as
    app.run_shutdown_hooks cancels a hook that overran its time. AssertionError unless the cancellation
    propagated (a stop that swallows it carries on past the hooks' budget) within `timeout`."""
    task = asyncio.ensure_future(stop)
    await asyncio.sleep(after)
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    if task.cancelled():
        return
    task.cancel()  # again, as the event loop does at exit
    outcome = "returned" if task.done() and task.exception() is None else "raised" if task.done() else "carried on"
    raise AssertionError(f"the stop swallowed its cancellation and {outcome}")


@contextlib.asynccontextmanager
async def serve_in_process(
    settings: ServiceSettings,
    bindings: Sequence[ServiceBinding],
    *,
    tracer_provider: TracerProvider | None = None,
    metrics: ServerMetrics | None = None,
) -> AsyncIterator[ChassisServer]:
    """A started ChassisServer in this event loop; drained on exit. `metrics`: the service's own, as `app.serve`
    takes them (else the server makes its own)."""
    server = ChassisServer(settings, bindings, tracer_provider=tracer_provider, metrics=metrics)
    await server.start()
    try:
        yield server
    finally:
        await server.drain()


@dataclass
class ServiceProcess:
    """A service running as its own process, its output captured to a log file."""

    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_process(
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> ServiceProcess:
    """Start `argv` (e.g. [sys.executable, "-m", "pkg"]) with GRPC_PORT=port; does not wait for health."""
    full_env: dict[str, Any] = {**os.environ, "GRPC_HOST": host, "GRPC_PORT": str(port), **(env or {})}
    log_file = log_path.open("wb")
    process = subprocess.Popen(list(argv), env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return ServiceProcess(process=process, address=f"{host}:{port}", log_path=log_path)


async def start_process_serving(
    argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> ServiceProcess:
    """Start a service process on a free port and wait until it is SERVING (or fail with its log).

    The timeout only bounds a start that hangs: beside other test workers on two cores a start's imports alone
    took over 20 s once."""
    host, port = "127.0.0.1", free_port()
    proc = start_process(argv, port=port, log_path=log_path, env=env, host=host)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{argv} exited with {proc.process.returncode}:\n{proc.output()}")
            # gRPC's connects could reach themselves as well: none before the service listens (accepts_connections).
            listens = await asyncio.to_thread(accepts_connections, host, port)
            if listens and await health_status(proc.address) == health_pb2.HealthCheckResponse.SERVING:
                return proc
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{argv} not SERVING within {timeout}s:\n{proc.output()}")
    except BaseException:
        proc.stop()
        raise


PYTHON = sys.executable
