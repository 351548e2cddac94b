"""`make run`: NATS, the sinks (mail, traces) and every service that exists, on the topology's local ports,
until Ctrl-C.

    python -m shopmesh_platform.run [--data-dir .data] [--services catalog,inventory] [--reset] [--free-ports]
                                    [--postgres] [--mesh envoy [--canary SERVICE[:WEIGHT]]] [--http-port PORT]
                                    [--host ADDRESS]

With the gateway, the public API is also served over HTTP/JSON and gRPC-Web (an Envoy at :8080, docs/http-api.md).
Says which wave of services it starts and when that wave is SERVING, then prints a table of what runs where
(and writes it for the tools, make deadletters, traces, shoppers and fault, to <data dir>/stack.json until it
stops: shopmesh_chassis.local_stack),
grpcurl and curl commands to try; each process's output is prefixed with its name. Every service exports its
spans to the local trace sink (`make traces` shows them), unless OTEL_EXPORTER_OTLP_ENDPOINT names a collector
of your own, where the HTTP edge's Envoy and the sidecars then send theirs too. Ctrl-C (or SIGTERM, or the
terminal closing) stops the services callers first, then NATS (then the PostgreSQL server), and exits 0; a
second Ctrl-C kills whatever the stack still runs. The same while the stack starts: what had started is stopped, and it
exits 0 with one line, "stopped while starting ...". Exit status 1 when the stack cannot start, or when one
of its processes (NATS, a sink, a service, a sidecar, the edge's Envoy, the PostgreSQL server) exits on its
own while it runs (or while Ctrl-C stops the rest, before its turn): the launcher then stops the rest as
Ctrl-C does and names that process with its last output lines (no restart: a crash is a bug to see, not to
paper over). With --postgres every service that owns data gets a database of its own, named after it, on a
throwaway PostgreSQL server started from the installed binaries (as in a cluster, one database per service),
removed when the stack stops (kept, in a line saying where, when it stops on a crash), its superuser's password
random (each service has it in its DATABASE_URL, the banner names the file a psql reads it from, `-d <service>`),
its output appended to <data dir>/postgres/server.log; without it, SQLite files under the data directory.
With --mesh envoy every service runs behind its own Envoy sidecar: mutual TLS with SPIFFE identities and the
call graph as policy (docs/mesh.md); --canary adds a second instance of one service that its callers'
sidecars send a share of their calls.
Everything listens on 127.0.0.1; --host 0.0.0.0 (make run HOST=0.0.0.0) puts the public entry points alone, the
HTTP edge and the gateway's gRPC (with --mesh envoy the gateway's sidecar, which clients call), on that
address, for a browser or client outside the VM, container or WSL the stack runs in: plaintext, said in one
warning line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import os
import pwd
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from tabulate import tabulate

from shopmesh_chassis.idempotency import FINGERPRINT_KEY_SUFFIX
from shopmesh_chassis.local_stack import LocalStack, remove_stack_file, stack_file, write_stack_file
from shopmesh_chassis.tasks import cancel_and_wait
from shopmesh_chassis.testing.postgres import PostgresServer, initialized_server, server_argv

from . import console
from .arguments import seconds
from .console import say
from .logsink import PrivateLog
from .mesh.identity import bundle_file, dns_name, svid_files
from .mesh.layout import sidecar_name, sockets_link
from .mesh.protoset import PROTOSET_FILE, methods_of
from .ports import Canary, PortInUse, PortPlan, bind_error
from .processes import (
    Crashed,
    NotReady,
    StackError,
    crash_at_stop,
    exited,
    has_exited,
    output_lines,
    signal_child,
    spawn,
)
from .stack import (
    DEFAULT_STARTUP_TIMEOUT,
    EDGE_LABEL,
    HTTP_API,
    NATS,
    POSTGRES_FOLDER,
    SMTP,
    TRACES,
    TRACES_FOLDER,
    Stack,
    existing_services,
    fits_unix_socket,
    foreign_entries,
    hold_data_dir,
    not_a_data_directory,
    postgres_env,
    remove_stale_sockets,
    topology_specs,
    undone_on_failure,
)
from .topology import (
    LOCAL_EDGE_SOURCE,
    LOCAL_HOST,
    LOCAL_HTTP_PORT,
    SERVICES,
    canary_name,
    is_edge,
    methods_called,
    service_callers,
)

READY_LINE = "shopmesh is running. Ctrl-C stops everything."
# The throwaway PostgreSQL server, as messages name it.
POSTGRES = "PostgreSQL"
NO_MESH = "none"
ENVOY = "envoy"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shopmesh_platform.run",
        description="Run NATS and every installed service locally until Ctrl-C.",
    )
    parser.add_argument("--data-dir", default=".data", type=Path, help="databases and NATS data (default: %(default)s)")
    parser.add_argument(
        "--services",
        default=None,
        type=lambda value: [name.strip() for name in value.split(",") if name.strip()],
        help="comma-separated subset to start (default: every service whose package is installed)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="delete the data directory first, saying what it held (refused if it holds anything the stack does not "
        "write there)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="let the OS pick every port instead of the topology's local ones (beside another stack; tests)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a database per service on a throwaway PostgreSQL server (installed binaries), removed on stop (kept "
        "after a crash); its log: <data dir>/postgres/server.log",
    )
    parser.add_argument(
        "--mesh",
        choices=(NO_MESH, ENVOY),
        default=NO_MESH,
        help="envoy: every service behind an Envoy sidecar, mTLS with SPIFFE ids, the call graph as policy "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--canary",
        type=parse_canary,
        action=_Once,
        default=None,
        metavar="SERVICE[:WEIGHT]",
        help="with --mesh envoy (and --postgres for a service with a database): a second instance of SERVICE "
        "that its callers' sidecars send WEIGHT percent of their calls, 10 without WEIGHT (default: none)",
    )
    parser.add_argument(
        "--http-port",
        type=parse_port,
        default=LOCAL_HTTP_PORT,
        metavar="PORT",
        help="the gateway's API over HTTP/JSON and gRPC-Web (default: %(default)s; 0: not served)",
    )
    parser.add_argument(
        "--host",
        type=parse_host,
        default=LOCAL_HOST,
        metavar="ADDRESS",
        help="the IP address the public entry points listen on, the HTTP edge and the gateway's gRPC (with --mesh "
        "envoy its sidecar): 0.0.0.0 for every interface, to reach them from outside a VM, container or WSL, "
        "without TLS; the rest stays on 127.0.0.1 (default: %(default)s)",
    )
    # Each option's default in its help ("%(default)s", filled in by argparse): --help is where a user looks
    # for what happens without the option, and --startup-timeout's 60 s was nowhere to be seen.
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="services' log format (default: %(default)s)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=seconds(),
        default=DEFAULT_STARTUP_TIMEOUT,
        metavar="SECONDS",
        help="how long each process has to get ready (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    if args.free_ports and args.http_port not in (0, LOCAL_HTTP_PORT):
        parser.error("--http-port with --free-ports: the OS picks that port too (0 leaves the edge out)")
    host_error = bind_error(args.host, 0)
    if host_error is not None:
        parser.error(f"argument --host: {args.host!r}: cannot listen there: {host_error.strerror}")
    # Here, not only where the stack is built: that comes after --postgres has started its server and run initdb.
    if args.canary is not None and args.mesh != ENVOY:
        parser.error("--canary needs --mesh envoy (make run MESH=envoy): only the callers' sidecars split the calls")
    return args


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: a TCP port (1-65535), or 0 for none")
    return port


def parse_host(value: str) -> str:
    """An IPv4 address, or localhost (127.0.0.1): a host name could resolve to anything, or to nothing on the
    machine, and a server binds an address, not a name. IPv4 only: the local stack's other processes, its
    port checks and its clients are on 127.0.0.1."""
    if value == "localhost":
        return LOCAL_HOST
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: not an IP address (0.0.0.0: every interface; 127.0.0.1 or localhost: this machine only)"
        ) from None
    if address.version != 4:
        raise argparse.ArgumentTypeError(f"{value!r}: an IPv4 address, please (0.0.0.0: every interface)")
    return str(address)


class _Once(argparse.Action):
    """Store the option's value, refusing it a second time: argparse keeps the last one silently, and the local
    mesh runs one canary (PortPlan plans one)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest) is not None:
            parser.error(f"argument {option_string}: given twice: the local mesh runs one canary at a time")
        setattr(namespace, self.dest, values)


def parse_canary(value: str) -> Canary:
    """SERVICE or SERVICE:WEIGHT, refused here what the stack would refuse (Stack._canary_spec; Canary itself
    refuses the gateway and a weight outside 0-100) only after --postgres had started its server and run initdb."""
    service, colon, weight = (part.strip() for part in value.partition(":"))
    if service not in SERVICES:
        raise argparse.ArgumentTypeError(f"{value!r}: {service!r} is not a service ({', '.join(SERVICES)})")
    try:
        share = int(weight) if colon else Canary.weight
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected SERVICE or SERVICE:WEIGHT (a percentage)") from None
    try:
        return Canary(service, share)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def port_plan(
    free: bool,
    mesh: bool = False,
    canary: Canary | None = None,
    http_port: int = LOCAL_HTTP_PORT,
    host: str = LOCAL_HOST,
) -> PortPlan:
    service = None if canary is None else canary.service
    plan = (
        PortPlan.free(traces=True, mesh=mesh, canary=service, http=http_port != 0)
        if free
        else PortPlan.local(mesh=mesh, canary=service)
    )
    if host != plan.host:
        plan = dataclasses.replace(plan, public_host=host)
    if http_port == 0:
        plan = dataclasses.replace(plan, http=None, http_metrics=None)
    elif not free:
        plan = dataclasses.replace(plan, http=http_port)
    # Under the mesh the edge calls the gateway's sidecar, and only the sidecar reaches the gateway (`unix`).
    # Where LOCAL_EDGE_SOURCE cannot be bound (not Linux: macOS has only 127.0.0.1 on loopback), the edge
    # comes from the plan's host as every local client does.
    if plan.http is not None and plan.mesh is None and bind_error(LOCAL_EDGE_SOURCE, 0) is None:
        plan = dataclasses.replace(plan, edge_source=LOCAL_EDGE_SOURCE)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # Your collector gets the spans, the services' (they read the variable) and the Envoys' (the stack gives them
        # its address: Stack._spans_receiver); no local sink.
        plan = dataclasses.replace(plan, traces=None)
    return plan


def reset_data_dir(data_dir: Path) -> str:
    """Empty `data_dir` if it holds nothing but what a stack writes there (`written_by_stack`); refuse
    anything more: `--data-dir docs`, or `/tmp` typed for `/tmp/shop`, is someone's folder, not the stack's
    data. Nothing is deleted then, not even the stack's own entries, so the message is the whole effect.
    Returns the line that says what was deleted: data deleted without a word (the orders, accounts and
    e-mails of earlier runs) looked like a bug to whoever had forgotten the flag. The directory itself stays:
    the launcher holds its lock (`hold_data_dir`), which a new directory of the same name would not have, and
    which made it: it exists by the time this runs."""
    target = data_dir.resolve()
    if not_a_data_directory(target):
        raise StackError(f"refusing to --reset {data_dir}: it is not a data directory")
    try:
        entries = sorted(entry.name for entry in target.iterdir())
        foreign = foreign_entries(target)
    except OSError as exc:  # not a directory, not readable
        raise StackError(f"refusing to --reset {data_dir}: {exc.strerror}") from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise StackError(
            f"refusing to --reset {data_dir}: it holds what the stack does not write there ({shown}); "
            "move those away, or choose another --data-dir"
        )
    if not entries:
        return f"--reset: {data_dir} is empty; nothing to delete"
    # A killed launcher's sockets' folder lies outside the data directory, behind the link to it.
    remove_stale_sockets(sockets_link(target))
    for entry in entries:
        path = target / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return f"--reset: deleted {data_dir} ({removed(entries)})"


def removed(entries: Sequence[str]) -> str:
    """What a data directory's `entries` (all the stack's) held, in a few words: the services' databases and
    idempotency keys by service, the rest (NATS' store, mail, traces, mesh, stack.json) by name, without the
    SQLite journals and half-written files that go with them."""
    databases = sqlite_databases(entries)
    keys = [stem for stem, _, suffix in (entry.partition(".") for entry in entries) if suffix == FINGERPRINT_KEY_SUFFIX]
    others = [entry for entry in entries if not entry.startswith(".") and entry.partition(".")[0] not in SERVICES]
    said = [
        *([f"the SQLite databases of {', '.join(databases)}"] if databases else []),
        *([f"the idempotency keys of {', '.join(keys)}"] if keys else []),
        *([", ".join(others)] if others else []),
    ]
    return "; ".join(said) or "it was empty"


def sqlite_databases(entries: Iterable[str]) -> list[str]:
    """The services whose SQLite database is among a data directory's `entries`."""
    return [
        stem for stem, _, suffix in (entry.partition(".") for entry in entries) if suffix == "db" and stem in SERVICES
    ]


def unused_sqlite_warning(data_dir: Path) -> str | None:
    """The line that names the SQLite databases `data_dir` holds from runs without --postgres, which a run with it
    does not open: the services started quietly on empty PostgreSQL databases, and their data looked lost.
    (The reverse has nothing to say: --postgres leaves no database in the data directory, its server is thrown
    away on stop.)"""
    try:
        found = sqlite_databases(sorted(entry.name for entry in data_dir.iterdir()))
    except OSError:  # not there yet, not readable: the start says so, or makes it
        return None
    if not found:
        return None
    files = ", ".join(f"{name}.db" for name in found)
    return (
        f"warning: --postgres: the services start on empty PostgreSQL databases; the SQLite databases in {data_dir} "
        f"({files}) are not used: run without --postgres to use them"
    )


def _grpcurl() -> str:
    return str(_as_typed(Path(sys.executable).parent / "grpcurl"))


def _as_typed(path: Path) -> Path:
    """`path` as a developer types it from the repository root (`.venv/bin/grpcurl`, `.data/mesh`), or
    whole when it lies elsewhere."""
    relative = os.path.relpath(path)
    return Path(relative) if not relative.startswith("..") else path


def _socket_as_typed(stack: Stack, name: str) -> Path | None:
    """A service's socket as a developer types it: through the data directory's link, `.data/mesh/sockets/<name>.sock`
    from the repository, as README shows it; where that path is too long for a Unix socket (a data directory
    elsewhere, typed whole), the socket's own short path (`Stack.app_socket`). None without a mesh."""
    link = stack.socket_link(name)
    if link is None:
        return None
    typed = _as_typed(link)
    return typed if fits_unix_socket(typed) else stack.app_socket(name)


def grpcurl_commands(stack: Stack) -> list[str]:
    """Commands that work against the services of this stack: reflection, health, one real call."""
    if not stack.services:
        return []
    grpcurl = _grpcurl()
    # The gateway is the one address a client needs; without it, catalog shows the same browsing.
    first = next((name for name in ("gateway", "catalog") if name in stack.services), stack.services[0])
    plaintext = [grpcurl, "-plaintext"]
    address = stack.address(first)
    # The gateway at its published address, its sidecar's: the edge takes plaintext, as clients come in.
    socket_path = _socket_as_typed(stack, first) if stack.sidecars and not is_edge(first) else None
    if socket_path is not None:
        # Behind its sidecar it takes only mutual TLS (the mesh lines show that call); plaintext reaches it
        # on its own socket, as a port-forward to a pod would (grpcurl: `-unix`, the address a path).
        plaintext.append("-unix")
        address = str(socket_path)
    commands = [
        [*plaintext, address, "list"],
        [*plaintext, address, "grpc.health.v1.Health/Check"],
    ]
    if first == "gateway":
        list_products = "shopmesh.gateway.v1.ShopService/ListProducts"
        commands.append([*plaintext, "-d", '{"page_size": 3}', address, list_products])
        page = "shopmesh.gateway.v1.ShopService/GetProductPage"
        commands.append([*plaintext, "-d", '{"product_id": "prod_chef_knife"}', address, page])
    elif first == "catalog":
        list_products = "shopmesh.catalog.v1.CatalogService/ListProducts"
        commands.append([*plaintext, "-d", '{"page_size": 3}', address, list_products])
    elif first in SERVICES:
        commands.append([*plaintext, address, "describe", SERVICES[first].grpc_services[0]])
    return [shlex.join(command) for command in commands]


def curl_commands(stack: Stack) -> list[str]:
    """The same shop over HTTP/JSON, through the edge in front of the gateway."""
    if stack.http_url is None:
        return []
    # The API's JSON ends without a newline: curl adds one (`-w '\n'`, as README's walk-throughs do), else the
    # shell's prompt runs into the reply.
    newline = ["-w", "\\n"]
    commands = [
        ["curl", "-s", *newline, f"{stack.http_url}/v1/products?pageSize=3"],
        ["curl", "-s", *newline, f"{stack.http_url}/v1/products/prod_chef_knife"],
        ["curl", "-s", "-i", *newline, f"{stack.http_url}/v1/orders"],
        # The API's OpenAPI document, for Swagger UI or a client generator.
        ["curl", "-s", *newline, f"{stack.http_url}/openapi.json"],
    ]
    return [shlex.join(command) for command in commands]


def mesh_lines(stack: Stack) -> list[str]:
    """What the mesh changes for someone at the terminal, and a call that shows it."""
    lines = [
        "Mesh: every service behind an Envoy sidecar at its ADDRESS (a <service>-sidecar row: the Unix socket it",
        "forwards to, the service's only listener; Envoy's metrics); the gateway takes plaintext from clients,",
        "every other service only mutual TLS from the services that call it",
        f"(SPIFFE ids from {bundle_file(stack.mesh_dir)}; docs/mesh.md).",
    ]
    inner_services = [name for name in stack.services if name != "gateway"]
    if not inner_services:
        return lines

    def refused(callee: str) -> list[str]:
        """Methods of `callee` (`package.Service/Method`) that its first caller does not call."""
        if callee not in SERVICES:
            return []
        [grpc_service] = SERVICES[callee].grpc_services
        called = methods_called(first_caller(callee), callee)
        return [f"{grpc_service}/{m}" for m in methods_of(grpc_service) if m not in called]

    # One whose caller does not call every method, to show a refusal (the gateway calls all of users').
    inner = next((name for name in inner_services if refused(name)), inner_services[0])
    caller = first_caller(inner)
    directory = _as_typed(stack.mesh_dir)
    svid = svid_files(directory, caller)
    # The mesh admits no caller to reflection (as on Kubernetes): grpcurl reads the contracts from a file.
    grpcurl = [
        _grpcurl(),
        *("-protoset", str(directory / PROTOSET_FILE)),
        *("-cacert", str(bundle_file(directory))),
        *("-cert", str(svid.certificate), "-key", str(svid.key)),
        *("-servername", dns_name(inner)),
        stack.address(inner),
    ]
    lines += [
        f"Call {inner} as {caller} (health is open to every service of the mesh):",
        f"  {shlex.join([*grpcurl, 'grpc.health.v1.Health/Check'])}",
    ]
    for method in refused(inner)[:1]:
        lines += [
            f"A method {caller} does not call: {inner}'s sidecar answers PERMISSION_DENIED (each caller gets only"
            " the methods it calls):",
            f"  {shlex.join([*grpcurl, method])}",
        ]
    return lines


def first_caller(callee: str) -> str:
    """The first service of the topology that calls `callee` (the gateway for one it does not know)."""
    return next(iter(service_callers(callee)), "gateway")


def render_table(stack: Stack, selected: Sequence[str] | None) -> str:
    rows = [(NATS, stack.nats_url, stack.nats_monitor_url or "-", "ready", str(stack.pid(NATS)))]
    if stack.smtp_address is not None:
        rows.append((SMTP, f"smtp://{stack.smtp_address}", "-", "ready", str(stack.pid(SMTP))))
    if stack.traces_address is not None:
        rows.append((TRACES, f"otlp://{stack.traces_address}", "-", "ready", str(stack.pid(TRACES))))
    present = set(existing_services())
    if stack.http_url is not None:
        # Envoy's own Prometheus metrics: requests by HTTP status, transcoding errors, upstream latency.
        metrics = stack.http_metrics_url() or "-"
        rows.append((HTTP_API, stack.http_url, metrics, "ready", str(stack.pid(HTTP_API))))
    for name, service in SERVICES.items():
        if name in stack.services:
            state = "SERVING"
            rows.append((name, stack.address(name), stack.metrics_url(name) or "-", state, str(stack.pid(name))))
        else:
            if name not in present:
                state = f"absent (no package {service.module})"
            else:
                state = "not started (--services)" if selected is not None else "not started"
            rows.append((name, "-", "-", state, "-"))
    canaries = []
    if stack.canary is not None:
        canary = canary_name(stack.canary.service)
        state = f"SERVING, {stack.canary.weight}% of {possessive(stack.canary.service)} calls"
        rows.append((canary, stack.address(canary), stack.metrics_url(canary) or "-", state, str(stack.pid(canary))))
        canaries.append(canary)
    for name in [*SERVICES, *canaries]:
        sidecar = sidecar_name(name)
        if sidecar in stack.sidecars:
            # Where it forwards to (the service's own socket) and Envoy's own Prometheus metrics.
            metrics = stack.sidecar_metrics_url(name) or "-"
            socket_path = _socket_as_typed(stack, name)
            app = stack.app_address(name) if socket_path is None else f"unix:{socket_path}"
            rows.append((sidecar, app, metrics, "ready", str(stack.pid(sidecar))))
    table = tabulate(
        rows, headers=("SERVICE", "ADDRESS", "METRICS", "STATE", "PID"), tablefmt="plain", disable_numparse=True
    )
    return "\n".join(f"  {line}".rstrip() for line in table.splitlines())


def possessive(name: str) -> str:
    """`orders'`, `catalog's`: a name ending in s takes the apostrophe alone."""
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def database_lines(stack: Stack, database: PostgresServer, log: Path | None = None) -> list[str]:
    """Where the services' databases are, each named after its service (`local_env`), and a psql that opens
    one: one command, `-d` naming the service, rather than a long line per service; and the server's `log`."""
    owners = [name for name in stack.services if name in SERVICES and SERVICES[name].has_database]
    if owners:
        canary = stack.canary
        shares = (
            ""
            if canary is None or canary.service not in owners
            else f"; {canary_name(canary.service)} runs on {possessive(canary.service)}"
        )
        named = f"one per service, named after it ({', '.join(owners)}{shares})"
        opened, how = owners[0], "-d names the service's database"
    else:
        named, opened, how = "none (no service started owns data)", "postgres", "the server's own database"
    psql = ["psql", "-h", "127.0.0.1", "-p", str(database.port), "-U", "postgres", "-d", opened]
    return [
        f"Databases: {named}, on PostgreSQL at 127.0.0.1:{database.port} (user postgres, with a random password:"
        " each service has it in its DATABASE_URL); a throwaway server, removed when this stops (kept after a"
        f" crash). psql reads the password from a file ({how}):",
        # Not the password itself: the output ends up in terminals' scrollback and CI logs.
        f"  PGPASSFILE={shlex.quote(str(database.passfile))} {shlex.join(psql)}",
        # Where a failed statement, a deadlock or a serialization failure of the services can be read.
        *([] if log is None else [f"  {POSTGRES}'s log (errors, deadlocks; kept after the stop): {log}"]),
    ]


def banner(
    stack: Stack,
    selected: Sequence[str] | None,
    database: PostgresServer | None = None,
    database_log: Path | None = None,
) -> str:
    canary = "" if stack.canary is None else f" (and a canary of {stack.canary.service})"
    count = len(stack.services) - (stack.canary is not None)
    lines = ["", f"shopmesh: {count} service(s){canary} and NATS, data in {stack.data_dir}", ""]
    lines.append(render_table(stack, selected))
    if database is not None:
        lines += ["", *database_lines(stack, database, database_log)]
    if stack.smtp_address is not None:
        lines += ["", f"E-mails are not delivered: the SMTP sink stores each one as a file in {stack.smtp_dir}"]
    if stack.traces_address is not None:
        # `make traces` reads .data/traces of the directory it runs in: another --data-dir needs its --dir.
        reader = "make traces"
        if stack.traces_dir != Path(".data", TRACES_FOLDER).absolute():
            python = shlex.quote(str(_as_typed(Path(sys.executable))))
            reader = f"{python} -m shopmesh_platform.traces --dir {shlex.quote(str(stack.traces_dir))}"
        # It ends the SMTP sink's paragraph; without one (--services), it opens its own.
        lines += [] if stack.smtp_address is not None else [""]
        lines.append(f"Traces: every span goes to the trace sink, into {stack.traces_dir}; `{reader}` lists them")
    if stack.sidecars:
        lines += ["", *mesh_lines(stack)]
    commands = grpcurl_commands(stack)
    if commands:
        lines += ["", "Try:", *(f"  {command}" for command in commands)]
        http = curl_commands(stack)
        if http:
            lines += [
                "",
                f"The same API over HTTP/JSON and gRPC-Web at {stack.http_url} (docs/http-api.md):",
                *(f"  {command}" for command in http),
                "",
                f"The shop in a browser, over that API: {stack.http_url}/ (docs/storefront.md)",
            ]
    elif existing_services():
        lines += ["", "No service selected (--services): only NATS runs."]
    else:
        lines += ["", "No service package is installed yet (services/*/): only NATS runs."]
    lines += ["", READY_LINE, ""]
    return "\n".join(lines)


_POSTGRES_READY_SECONDS = 60.0
# The throwaway PostgreSQL's folder: this, the launcher's process id, a dash, random characters.
_DATA_DIR_PREFIX = "shopmesh-run-pg-"
# The same folder, renamed when the stack stopped on a crash: left to the user, never an orphan to remove.
_KEPT_DATA_DIR_PREFIX = "shopmesh-kept-pg-"
_POSTGRES_STOP_SECONDS = 15.0


def remove_orphaned_data_dirs(root: Path | None = None) -> list[Path]:
    """Remove the throwaway PostgreSQL folders of launchers that are gone (killed with -9, which gave them no
    chance to); the folders removed. A folder's name carries its launcher's process id."""
    removed: list[Path] = []
    # Only the folders this user's launchers make (the server's account owns them: postgres under root): a
    # launcher of another user, or in another container sharing /tmp, may look gone from here.
    owner = _data_dir_owner()
    for folder in Path(root or tempfile.gettempdir()).glob(f"{_DATA_DIR_PREFIX}*-*"):
        launcher = folder.name.removeprefix(_DATA_DIR_PREFIX).split("-", 1)[0]
        if not (launcher.isascii() and launcher.isdigit()) or _alive(int(launcher)):
            continue
        with contextlib.suppress(OSError):
            if folder.stat().st_uid == owner:
                shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def _data_dir_owner() -> int | None:
    """The account that owns this user's throwaway PostgreSQL folders (None: no such account here)."""
    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


async def _initialized(resources: contextlib.AsyncExitStack) -> PostgresServer:
    for folder in await asyncio.to_thread(remove_orphaned_data_dirs):
        say(f"Removed {folder}, left by a launcher that was killed.")
    # initdb runs in a thread: a signal meanwhile waits for it, so the folder is removed after it finished.
    prefix = f"{_DATA_DIR_PREFIX}{os.getpid()}-"
    init = asyncio.ensure_future(asyncio.to_thread(resources.enter_context, initialized_server(prefix)))
    try:
        return await asyncio.shield(init)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await init
        raise


@dataclasses.dataclass
class ThrowawayPostgres:
    """The launcher's PostgreSQL server (`throwaway_postgres`) while it runs."""

    server: PostgresServer
    process: asyncio.subprocess.Process
    output: deque[str]
    # Where its output goes, all of it (None: nowhere but `output`).
    log: Path | None = None
    # Set once the stack stopped on a crash, the server stopped too: its folder is kept for a look at the data.
    keep_folder: bool = dataclasses.field(default=False, init=False)
    # Whether the server had exited on its own, looked at once, before the launcher first signalled it (by
    # `kill` or `stop`, whichever came first): a server the launcher killed has exited, but not on its own.
    _exited_on_its_own: bool | None = dataclasses.field(default=None, init=False)
    _killed: bool = dataclasses.field(default=False, init=False)

    async def crashed(self) -> Crashed:
        """Wait until the server exits (the launcher stops it only after the stack): the error saying so. Its
        exit, not `process.wait()`, which also waits for the server's backends, each holding its output pipe
        (`processes.exited`)."""
        return Crashed(POSTGRES, await exited(self.process), self.output)

    def kill(self) -> None:
        """SIGKILL the server at once, without waiting (a second Ctrl-C; its backends end as they see it gone:
        `_stop_postgres_now`): not a crash when `stop` comes to it, however far it had gone with its fast
        shutdown."""
        self._look_whether_exited_on_its_own()
        self._killed = True
        signal_child(self.process, signal.SIGKILL)

    async def stop(self) -> tuple[int, Crashed | None]:
        """Stop the server as the stack's processes are stopped: its exit status, and the error naming it if it
        had exited before (a crash around Ctrl-C that `crashed` had not reported) or died as it stopped."""
        on_its_own = self._look_whether_exited_on_its_own()
        took_sigkill = await _stop_postgres(self.process)
        code = await exited(self.process)
        # Read after the wait: a `kill` may come while the stop waits for the fast shutdown.
        killed = took_sigkill or self._killed
        crash = crash_at_stop(
            POSTGRES, code, self.output, on_its_own=on_its_own, stop_signal=signal.SIGINT, killed=killed
        )
        return code, crash

    def _look_whether_exited_on_its_own(self) -> bool:
        if self._exited_on_its_own is None:
            self._exited_on_its_own = has_exited(self.process)
        return self._exited_on_its_own


@contextlib.asynccontextmanager
async def throwaway_postgres(
    spawned: Callable[[ThrowawayPostgres], None] = lambda _: None,
    failed: Callable[[], None] = lambda: None,
    log: Path | None = None,
) -> AsyncIterator[ThrowawayPostgres]:
    """A PostgreSQL server as the launcher's own child, like NATS: in the foreground (not pg_ctl's daemon),
    with a parent-death signal, so that a launcher killed (`kill -9`) or stopped half-way leaves none
    running. SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for its clients to leave). `spawned`
    gets the server as soon as it runs, before it accepts connections: a second Ctrl-C while it starts, or
    while its start is undone, kills it as one after the start does. `failed`
    is called when the start (or what ran on the server) failed, before the server is stopped. Its output is
    appended to `log` (logging_collector is off: nothing else keeps it), and its last lines are kept for a
    crash's message. Its folder is removed at the end, unless the stack stopped on a crash (`keep_folder`)."""
    async with contextlib.AsyncExitStack() as resources:
        try:
            server = await _initialized(resources)
        except RuntimeError as exc:  # no server binaries, or initdb refused
            raise StackError(str(exc)) from None
        user = "postgres" if os.geteuid() == 0 else None
        process = await spawn(server_argv(server), os.environ, parent_death_signal="INT", user=user)
        output: deque[str] = deque(maxlen=20)
        # Read all along: a full pipe would block the server's logging, and so the server.
        drain = asyncio.create_task(_keep_last_lines(process, output, log))
        postgres = ThrowawayPostgres(server, process, output, log)
        spawned(postgres)
        try:
            async with undone_on_failure(lambda: _stop_and_drain(process, drain), failed):
                await _until_accepting(server, process, output)
                yield postgres
            await _stop_and_drain(process, drain)
        finally:
            if postgres.keep_folder:
                # Out of the way of the removal `initialized_server` does next, and of the next launcher's.
                say(_kept(server))


async def _stop_and_drain(process: asyncio.subprocess.Process, drain: asyncio.Task[None]) -> None:
    try:
        await _stop_postgres(process)
    finally:
        await cancel_and_wait(drain)


async def _keep_last_lines(process: asyncio.subprocess.Process, lines: deque[str], log: Path | None) -> None:
    assert process.stdout is not None
    written = None if log is None else PrivateLog(log)
    try:
        async for line in output_lines(process.stdout):
            lines.append(line)
            if written is None:
                continue
            try:
                written.write(line)
            except OSError as exc:
                # A full or read-only disk must not end the draining: the server would block on its full pipe,
                # and every query with it. Said once: the log stops here, and the crash message keeps the last lines.
                say(f"{POSTGRES}'s log {log} is no longer written ({exc.strerror}); its last lines are still kept")
                written.close()
                written = None
    finally:
        if written is not None:
            written.close()


def _kept(server: PostgresServer) -> str:
    """Rename the stopped server's folder to one no launcher removes; the line that says where, and how to start
    and remove it."""
    kept = server.data_dir.with_name(_KEPT_DATA_DIR_PREFIX + server.data_dir.name.removeprefix(_DATA_DIR_PREFIX))
    try:
        server.data_dir.rename(kept)
    except OSError as exc:  # not the crash's message to hide
        return f"{POSTGRES}'s folder {server.data_dir} could not be kept ({exc.strerror}): it is removed"
    start = server_argv(dataclasses.replace(server, data_dir=kept))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        start = ["runuser", "-u", "postgres", "--", *start]
    psql = f"PGPASSFILE={shlex.quote(str(kept / server.passfile.name))} psql -h 127.0.0.1 -p {server.port} -U postgres"
    return (
        f"{POSTGRES}'s folder is kept for a look at the databases: {kept}; start the server with `{shlex.join(start)}`"
        f" (Ctrl-C stops it; {psql} -d <service> opens one), remove it with `rm -rf {shlex.quote(str(kept))}`"
    )


async def _until_accepting(server: PostgresServer, process: asyncio.subprocess.Process, output: deque[str]) -> None:
    deadline = asyncio.get_running_loop().time() + _POSTGRES_READY_SECONDS
    # As the server's superuser: under another name each probe logs FATAL: role "root" does not exist.
    ready = [str(server.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    while True:
        if process.returncode is not None:
            raise StackError("PostgreSQL exited while starting:\n" + "\n".join(output))
        probe = await asyncio.create_subprocess_exec(*ready)
        try:
            accepting = await probe.wait() == 0
        finally:
            if probe.returncode is None:  # a Ctrl-C: no probe outlives the start it belonged to
                with contextlib.suppress(ProcessLookupError):
                    probe.kill()
                await probe.wait()
        if accepting:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise StackError(f"PostgreSQL did not accept connections within {_POSTGRES_READY_SECONDS:g} s")
        await asyncio.sleep(0.1)


async def _stop_postgres(process: asyncio.subprocess.Process) -> bool:
    """Fast shutdown, SIGKILL after _POSTGRES_STOP_SECONDS; whether it took the SIGKILL. Cancelled, it still
    waits for the server before the cancellation goes on: its folder is removed next, under a server that may
    still be shutting down otherwise (a second Ctrl-C kills the server, which ends the wait)."""
    stopping = asyncio.ensure_future(_stop_postgres_now(process))
    try:
        return await asyncio.shield(stopping)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await stopping
        raise


async def _stop_postgres_now(process: asyncio.subprocess.Process) -> bool:
    # `exited`, not `process.wait()`: a server that shut down at once, its output pipe still held (a backend
    # that has not ended yet), would be waited for until the SIGKILL's bound.
    if process.returncode is None:
        signal_child(process, signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.shield(exited(process)), _POSTGRES_STOP_SECONDS)
            return False
        except TimeoutError:
            pass
        # The whole group (spawn), which is the postmaster alone: PostgreSQL puts each of its children (backends,
        # checkpointer, ...) in a session of its own (setsid). They end by themselves once it is gone, as after
        # any postmaster crash: each watches it in all its waits, a backend busy with a query at its next check.
        signal_child(process, signal.SIGKILL)
        await exited(process)
        return True
    await exited(process)
    return False


class _Signals:
    """SIGINT, SIGTERM and SIGHUP from the launcher's first step to its last: the first stops everything, a
    start under way too (cancelled, the start undoes what it had started, the throwaway PostgreSQL included);
    any further one kills whatever still runs. One set of handlers for the whole run: handlers of each step
    left gaps (after the stack's start was undone, the PostgreSQL server stopped under Python's defaults, where
    a second Ctrl-C was a KeyboardInterrupt traceback and a SIGTERM ended the launcher before its server)."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        main_task = asyncio.current_task()
        assert main_task is not None
        self._main_task = main_task
        self.requested = asyncio.Event()
        # Until the banner: a first signal cancels the start, which cannot see an event.
        self.starting = True
        self.stack: Stack | None = None
        self.postgres: ThrowawayPostgres | None = None

    def __enter__(self) -> _Signals:
        loop = asyncio.get_running_loop()
        for sig in self.HANDLED:
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def __exit__(self, *_: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.HANDLED:
            loop.remove_signal_handler(sig)

    def postgres_spawned(self, postgres: ThrowawayPostgres) -> None:
        self.postgres = postgres

    def start_failed(self) -> None:
        self.starting = False

    def _kill_now(self) -> str:
        """SIGKILL whatever runs, without waiting; what that was, for the launcher to say."""
        killed = []
        if self.stack is not None:
            self.stack.kill_all()
            killed.append("what still runs of the stack")
        if self.postgres is not None:
            # Not left to its fast shutdown, which its stop would wait for up to its time limit.
            self.postgres.kill()
            killed.append(POSTGRES)
        if not killed:
            # Before the server and the stack there is only initdb, which runs in a thread that no signal ends.
            return f"nothing to kill yet ({POSTGRES}'s initdb prepares its folder, removed once initdb ends)"
        return f"killing {' and '.join(killed)} now"

    def _on_signal(self, sig: signal.Signals) -> None:
        # Acting before saying: the terminal may be what went away (SIGHUP, or `| tee` ended by the same
        # Ctrl-C), and the stop must not hang on the line about it.
        if self.requested.is_set():
            say(f"\n{sig.name} again: {self._kill_now()}")
            return
        self.requested.set()
        if self.starting:
            self._main_task.cancel()
        if self.stack is None:
            say(f"\n{sig.name}: stopping {POSTGRES} ...")
        else:
            say(f"\n{sig.name}: stopping the services (callers first), then NATS ...")


async def run(args: argparse.Namespace) -> int:
    with _Signals() as signals:
        try:
            if not args.postgres:
                return await run_stack(args, None, signals)
            # None with --reset: it deletes them (later, in run_stack, once the server runs).
            warning = None if args.reset else unused_sqlite_warning(args.data_dir)
            if warning is not None:
                say(warning)
            say("starting a throwaway PostgreSQL server ...")
            log = args.data_dir / POSTGRES_FOLDER / "server.log"
            async with throwaway_postgres(signals.postgres_spawned, signals.start_failed, log) as database:
                return await run_stack(args, database, signals)
        except asyncio.CancelledError:
            # Only the first signal cancels, and only while starting: the start has undone itself by now.
            say(f"stopped while starting {POSTGRES if signals.stack is None else 'the stack'}")
            return 0


# One machine: every client of `make run` is 127.0.0.1, so the gateway puts them all in one bucket. Its
# password bucket (5 at once, one every 2 s; docs/auth.md) would refuse most of `make shoppers` signing up
# (a Register and a Login each, all at once): room for SHOPPERS_ARGS="--shoppers 20", refilled at about
# the rate users hashes; users' own queue (PASSWORD_HASHING_BUSY) still bounds it.
LOCAL_GATEWAY_ENV = {"PASSWORD_RATE_LIMIT_BURST": "40", "PASSWORD_RATE_LIMIT_PER_SECOND": "4"}


def local_env(selected: Sequence[str], database: PostgresServer | None, ports: PortPlan) -> dict[str, dict[str, str]]:
    """The environment of each selected service that differs from a deployment's."""
    # Named after their services: the server is this launcher's alone, and a person looks for `orders`.
    env = {} if database is None else postgres_env(database, [n for n in selected if n in SERVICES], named=True)
    if "gateway" in selected:
        env["gateway"] = {**env.get("gateway", {}), **LOCAL_GATEWAY_ENV, **_edge_trusted(ports)}
    return env


def _edge_trusted(ports: PortPlan) -> dict[str, str]:
    """The proxies in front of the gateway as its TRUSTED_PROXIES, as the chart's loopback is in a pod: the
    HTTP edge, and under MESH=envoy the gateway's sidecar, which every call passes through. Untrusted, the
    gateway drew each traced call they passed on again at OTEL_TRACES_SAMPLER_RATIO: below 1, most HTTP calls
    left only the edge's span. The edge reaches the gateway from its own address (`edge_source`), which no
    other local client comes from: trusting the plan's host believed the X-Forwarded-For and traceparent of
    any client calling the gateway directly. Under MESH=envoy the sidecar is the only peer of the gateway's
    Unix socket (the HTTP edge calls the sidecar, on a socket of its own where the sidecar appends nothing to
    the edge's x-forwarded-for), so `unix` trusts it and nothing else."""
    if ports.mesh is not None:
        return {"TRUSTED_PROXIES": "unix"}
    if ports.http is None:
        return {}
    # Without an address of its own, the edge comes from where it calls the gateway (`--host 192.0.2.2`: there).
    return {"TRUSTED_PROXIES": ports.edge_source or ports.public_reach}


async def run_stack(args: argparse.Namespace, postgres: ThrowawayPostgres | None, signals: _Signals) -> int:
    database = None if postgres is None else postgres.server
    selected = args.services if args.services is not None else existing_services()
    ports = port_plan(
        args.free_ports, mesh=args.mesh == ENVOY, canary=args.canary, http_port=args.http_port, host=args.host
    )
    env = local_env(selected, database, ports)
    stack = Stack(
        args.data_dir,
        ports=ports,
        services=args.services,
        env=env,
        log_format=args.log_format,
        startup_timeout=args.startup_timeout,
        canary=args.canary,
    )
    # With its own way out, before the port check's PortInUse, whose way out (--free-ports) is not its. (A
    # launcher still on this data directory was refused before: main holds the directory's lock.)
    refuse_an_http_port_of_the_table(stack)
    if args.reset:
        say(reset_data_dir(args.data_dir))
    signals.stack = stack
    warning = public_warning(stack)
    if warning is not None:
        say(warning)
    names = ", ".join([NATS, *stack.sinks, *stack.sidecars, *stack.services])
    say(f"starting {names} (data in {stack.data_dir}) ...")
    # Cancelled by a signal, Stack.start stops what it had started.
    await stack.start(failed=signals.start_failed, progress=say)
    signals.starting = False
    # For the tools (make deadletters, traces, shoppers, fault): under --free-ports they could not know where.
    written = write_stack_file(local_stack(stack))
    try:
        say(banner(stack, args.services, database, None if postgres is None else postgres.log))
        return await _run_until_stopped(stack, postgres, signals)
    finally:
        # Whatever the outcome, nothing of the stack serves any more (a killed launcher leaves the file:
        # the tools see that its pid is gone).
        remove_stack_file(written, os.getpid())


def public_warning(stack: Stack) -> str | None:
    """The one line that says what --host exposes, when that is more than this machine: plaintext, no TLS,
    which on 127.0.0.1 only this machine's own accounts could reach."""
    host = stack.ports.public_bind
    if ipaddress.ip_address(host).is_loopback:
        return None
    endpoints = [
        *([f"the HTTP edge (port {stack.ports.http})"] if stack.ports.http is not None else []),
        *([f"the gateway's gRPC (port {stack.ports.ports_of('gateway').grpc})"] if "gateway" in stack.services else []),
    ]
    if not endpoints:
        return None
    said = (
        f"warning: --host {host}: {' and '.join(endpoints)} reachable from the network, without TLS; "
        "anyone who can reach this machine can call them"
    )
    if not ipaddress.ip_address(host).is_unspecified:
        return said
    # The banner names 127.0.0.1, which another machine cannot open; and gRPC binds the wildcard as [::].
    outside = primary_address()
    opened = f"; from another machine: http://{outside}:{stack.ports.http}/" if outside and stack.ports.http else ""
    # Under the mesh the gateway's sidecar, an Envoy listener on 0.0.0.0 alone, takes the clients' gRPC.
    ipv6 = " (the gateway's gRPC on IPv6 too)" if "gateway" in stack.services and stack.ports.mesh is None else ""
    return said + ipv6 + opened


def primary_address() -> str | None:
    """The source address the kernel picks towards 203.0.113.1 (TEST-NET-3, which only a default route usually
    reaches): the address a browser on the host of a VM usually opens; None without such a route. A UDP
    socket's connect sends nothing. A host with a route of its own for that network gets that route's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def refuse_an_http_port_of_the_table(stack: Stack) -> None:
    """Refuse a --http-port that another process of the stack listens on (`--http-port 4222`), or that no server
    may listen on (`--http-port 80` without the privilege): the port check said "planned twice" or "cannot
    listen" and, as for any PortInUse, to try --free-ports, which refuses a --http-port. A --http-port that
    another process listens on is left to the port check: --free-ports (or another --http-port) fits that."""
    planned = stack.planned_ports()
    edge = dict(planned).get(EDGE_LABEL)
    if edge is None:
        return
    way_out = "choose another --http-port (0: no HTTP/JSON edge)"
    others = [label for label, port in planned if port == edge and label != EDGE_LABEL]
    if others:
        raise StackError(f"--http-port {edge} is also {others[0]}'s port: {way_out}")
    host = stack.ports.public_bind
    error = bind_error(host, edge)
    if error is not None and error.errno != errno.EADDRINUSE:
        raise StackError(f"cannot listen on {host}:{edge} (--http-port): {error.strerror}: {way_out}")


def local_stack(stack: Stack) -> LocalStack:
    """What the tools need of the running stack, for `.data/stack.json` (shopmesh_chassis.local_stack)."""
    traces = stack.traces_address
    return LocalStack(
        path=stack_file(stack.data_dir),
        pid=os.getpid(),
        nats_url=stack.nats_url,
        gateway=stack.address("gateway") if "gateway" in stack.services else None,
        http_url=stack.http_url,
        traces_address=traces,
        traces_dir=None if traces is None else str(stack.traces_dir.absolute()),
        sidecar_admin={
            name: str(socket_path)
            for name in stack.services
            if sidecar_name(name) in stack.sidecars and (socket_path := stack.sidecar_admin_socket(name)) is not None
        },
        canary_weights={} if stack.canary is None else {stack.canary.service: stack.canary.weight},
    )


async def _run_until_stopped(stack: Stack, postgres: ThrowawayPostgres | None, signals: _Signals) -> int:
    """Serve until a stop signal or a crash; then stop everything, and say so (or raise the crash)."""
    crash = await _stop_or_crash(signals.requested, stack, postgres)
    if crash is not None:
        # As a process manager does: no stack runs on around a dead part of it. A signal from here on
        # kills what is left, as a second Ctrl-C does.
        signals.requested.set()
        say(f"\n{crash.summary}: stopping the services (callers first), then NATS ...")
    codes = await stack.stop()
    crashed_before_stopped = list(stack.crashed_before_stopped)
    if postgres is not None:
        # Last, as a database outlives its clients; before the verdict, which its exit is part of.
        codes[POSTGRES], crashed = await postgres.stop()
        crashed_before_stopped += [crashed] if crashed is not None else []
    if crash is None and crashed_before_stopped:
        # Ctrl-C in the moment a process died, or a process that died as the rest stopped: still a crash.
        crash = crashed_before_stopped[0]
    if crash is not None:
        if postgres is not None:
            # The data the crash may be about, to look at: a Ctrl-C's stop removes it, which is expected.
            postgres.keep_folder = True
        raise crash
    failed = {name: code for name, code in codes.items() if code not in (0, None)}
    say("stopped" + (f"; exit statuses other than 0: {failed}" if failed else " cleanly"))
    return 0


async def _stop_or_crash(
    stop_requested: asyncio.Event, stack: Stack, postgres: ThrowawayPostgres | None
) -> Crashed | None:
    """Wait for a stop signal (None) or for a process of the stack, or the PostgreSQL server, to exit on
    its own (the error naming it), whichever comes first."""
    requested = asyncio.ensure_future(stop_requested.wait())
    crashes = [asyncio.ensure_future(stack.crashed())]
    if postgres is not None:
        crashes.append(asyncio.ensure_future(postgres.crashed()))
    try:
        await asyncio.wait([requested, *crashes], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in [requested, *crashes]:
            waiting.cancel()
    if stop_requested.is_set():
        return None
    return next(crash.result() for crash in crashes if crash.done() and not crash.cancelled())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Before the data directory is made: a mistyped --services left it, and its parents, behind.
        topology_specs(args.services)
        # Before anything starts (the throwaway PostgreSQL, --reset) and until everything stopped: under
        # --free-ports no port stops a second launcher on this data, started while the first still starts.
        held = hold_data_dir(args.data_dir)
        try:
            return asyncio.run(run(args))
        finally:
            os.close(held)
    except PortInUse as exc:
        # The README's way out when one of the table's ports is taken (by another stack, or anything else, a
        # server or a client connection's end). Refusals whose way out this is not (a data directory another
        # launcher serves, a --http-port of the table) are StackErrors of their own, each with its way out.
        way_out = "; or start beside it on ports the OS picks: make run RUN_ARGS=--free-ports"
        if args.free_ports:
            way_out = ""
        console.stderr.say(f"error: {exc}{way_out}")
        return 1
    except NotReady as exc:
        # Mostly a machine too busy to import a service's packages within the timeout (it then printed
        # nothing): the error named the timeout, not the option that moves it.
        way_out = (
            f"(each process has --startup-timeout, {args.startup_timeout:g} s, to get ready; on a busy machine "
            'give it longer: make run RUN_ARGS="--startup-timeout 180", beside your other RUN_ARGS)'
        )
        console.stderr.say(f"error: {exc}\n{way_out}")
        return 1
    except StackError as exc:
        console.stderr.say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
