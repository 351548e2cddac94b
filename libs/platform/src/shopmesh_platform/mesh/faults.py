"""Faults injected by a service's sidecar in the local mesh, switched on and off while the stack runs.

    python -m shopmesh_platform.mesh.faults recommendations --delay 3s            every call waits 3 s
    python -m shopmesh_platform.mesh.faults catalog --abort UNAVAILABLE --percent 30
    python -m shopmesh_platform.mesh.faults catalog --clear
    python -m shopmesh_platform.mesh.faults --show                                every sidecar's faults

With a canary (`make run ... --canary catalog`), `catalog` means both of catalog's sidecars, and
`catalog-canary` the canary's alone: a canary gone bad beside a healthy stable service.

(`make fault FAULT_ARGS="..."`.) Each sidecar's inbound listener has Envoy's fault filter, off by default; this
sets its runtime keys through the sidecar's admin interface (`/runtime_modify`, on its Unix socket), so a fault
applies to the next call the service gets, from any caller, and the services never know: the callers see what a
slow or failing callee looks like (a delay, or the gRPC status, trailers-only), and show how they degrade — the
gateway's product page without recommendations, orders' saga cancelling a checkout it could not pay for. A delay
and an abort can be set together (the abort follows the delay); each hits `--percent` of the calls, drawn
independently. Faults live in the sidecar's memory: a restarted stack starts without any. The sidecars are those
of the running local stack (`.data/stack.json`, which the launcher writes while it runs, on any ports:
`--free-ports` too), else those under `.data/mesh/sockets/`, said on stderr either way (and why: no launcher's
file here, or one ignored); `--admin SOCKET` names one's admin socket by hand.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc
from tabulate import tabulate

from shopmesh_chassis.interrupts import exit_status_on_interrupt
from shopmesh_chassis.local_stack import DEFAULT_DATA_DIR, running_stack_or_say_default

from ..topology import CANARY_SUFFIX, SERVICES, canary_name, is_edge
from .envoy import MAX_FAULT_DELAY_MS, admin_socket_file
from .layout import sidecar_name, sockets_link

# The fault filter's runtime keys (Envoy's defaults for the filter, which the sidecars use).
DELAY_PERCENT = "fault.http.delay.fixed_delay_percent"
DELAY_MS = "fault.http.delay.fixed_duration_ms"
ABORT_PERCENT = "fault.http.abort.abort_percent"
ABORT_STATUS = "fault.http.abort.grpc_status"
KEYS = (DELAY_PERCENT, DELAY_MS, ABORT_PERCENT, ABORT_STATUS)
_CODES = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


class FaultError(RuntimeError):
    """A sidecar could not be reached or refused the change."""


class NoSidecar(FaultError):
    """Nothing answers at a sidecar's admin socket."""


@dataclass(frozen=True)
class Fault:
    """What a sidecar does to the calls it forwards to its service; percent: of the calls, 0 to 100."""

    delay_ms: int = 0
    abort: grpc.StatusCode | None = None
    percent: int = 100

    def runtime(self) -> dict[str, str]:
        """The runtime values that set this fault, and clear what it does not set."""
        values = dict.fromkeys(KEYS, "")  # an empty value removes the key: the filter's default (off)
        if self.delay_ms:
            values.update({DELAY_PERCENT: str(self.percent), DELAY_MS: str(self.delay_ms)})
        if self.abort is not None:
            values.update({ABORT_PERCENT: str(self.percent), ABORT_STATUS: str(self.abort.value[0])})
        return values

    @classmethod
    def from_runtime(cls, values: Mapping[str, str]) -> Fault:
        delay_percent = int(values.get(DELAY_PERCENT) or 0)
        abort_percent = int(values.get(ABORT_PERCENT) or 0)
        # Without a status of its own the filter aborts with the configured one, UNAVAILABLE (14).
        status = values.get(ABORT_STATUS) or str(grpc.StatusCode.UNAVAILABLE.value[0])
        abort = next((c for c in _CODES.values() if str(c.value[0]) == status), None) if abort_percent else None
        if not delay_percent and abort is None:
            return cls()
        return cls(
            delay_ms=int(values.get(DELAY_MS) or 0) if delay_percent else 0,
            abort=abort,
            percent=max(delay_percent, abort_percent),
        )

    def __str__(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms} ms")
        if self.abort is not None:
            parts.append(f"abort {self.abort.name}")
        return f"{', '.join(parts)} on {self.percent} % of calls" if parts else "none"


def set_fault(admin: Path, fault: Fault) -> None:
    """Set (or, with Fault(delay_ms=0, abort=None), clear) a sidecar's fault; `admin`: its admin socket."""
    modify_runtime(admin, fault.runtime())


def current_fault(admin: Path) -> Fault:
    return Fault.from_runtime(runtime_values(admin, KEYS))


def modify_runtime(admin: Path, values: Mapping[str, str]) -> None:
    """Set runtime keys of the sidecar whose admin socket is `admin`; an empty value removes its key."""
    admin_request(admin, f"/runtime_modify?{urllib.parse.urlencode(values)}", method="POST")


def runtime_values(admin: Path, keys: Sequence[str]) -> dict[str, str]:
    """The values the sidecar whose admin socket is `admin` has of `keys` (a key it has not: left out)."""
    entries = json.loads(admin_request(admin, "/runtime?format=json"))["entries"]
    return {key: entries[key]["final_value"] for key in keys if key in entries}


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 to the server on a Unix socket. (The standard library's client, synchronous as this tool and
    its callers are; it needs only its socket made for it. aiohttp's UnixConnector would need an event loop.)"""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_request(admin: Path, path: str, method: str = "GET") -> str:
    """The body of Envoy's answer to `method path` on the admin interface at the Unix socket `admin`; FaultError
    for an answer other than 200, NoSidecar when nothing answers there."""
    connection = _UnixConnection(admin, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read().decode()
    except OSError as exc:
        raise NoSidecar(f"no sidecar answers at {admin} ({exc.strerror or exc})") from None
    finally:
        connection.close()
    if response.status != 200:
        raise FaultError(f"the sidecar at {admin} refused {path}: {response.status} {body.strip()}")
    return body


# What a fault can name: a service (its sidecar, and its canary's when one runs) or a canary alone; not the
# gateway's, which the launcher never runs (its callers are clients, outside the mesh).
TARGETS = [*SERVICES, *(canary_name(name) for name in SERVICES if not is_edge(name))]


# The default data directory's link to the sockets' folder of the stack running on it.
LOCAL_SOCKETS = sockets_link(DEFAULT_DATA_DIR)


def local_admin_socket(name: str) -> Path:
    """The admin socket of the sidecar of `name` (a service, or `<service>-canary`) of `make run MESH=envoy` on
    the default data directory, through its link to the sockets' folder."""
    return LOCAL_SOCKETS / admin_socket_file(sidecar_name(name))


class SidecarAdmins:
    """The sidecars' admin sockets: the running local stack's (.data/stack.json); else those under the default
    data directory's `mesh/sockets/`. Said on `err` either way, so that a default sidecar that does not answer
    is not taken for the running stack's."""

    def __init__(self, err: TextIO) -> None:
        self.stack = running_stack_or_say_default(
            err,
            "sidecars",
            str(local_admin_socket("<service>")),
            without="make run MESH=envoy's admin sockets",
        )
        if self.stack is not None:
            print(f"sidecars of {self.stack.said()}", file=err)

    def admin_socket_of(self, name: str) -> Path | None:
        """The admin socket of `name`'s sidecar; None when the running stack has none (no mesh, not started)."""
        if self.stack is None:
            return local_admin_socket(name)
        admin = self.stack.sidecar_admin.get(name)
        return None if admin is None else Path(admin)

    def required(self, name: str) -> Path:
        admin = self.admin_socket_of(name)
        if admin is not None:
            return admin
        assert self.stack is not None
        stack = self.stack.said()
        # A meshed stack that lacked only this sidecar (no canary started, a --services subset) was asked
        # "is it `make run MESH=envoy`?", which it was.
        if not self.stack.sidecar_admin:
            raise FaultError(
                f"{name} runs behind no sidecar in {stack}: it runs without the mesh; faults need `make run MESH=envoy`"
            )
        if name.endswith(CANARY_SUFFIX):
            service = name.removesuffix(CANARY_SUFFIX)
            postgres = "--postgres " if SERVICES[service].has_database else ""
            raise FaultError(
                f'no {name} runs in {stack}: start the stack with one, make run MESH=envoy RUN_ARGS="{postgres}'
                f'--canary {service}"'
            )
        raise FaultError(f"{name} is not running in {stack} (a --services subset?)")


def running(admin: Path) -> bool:
    """Whether a sidecar answers on the admin socket `admin`."""
    try:
        current_fault(admin)
    except FaultError:
        return False
    return True


def duration_ms(value: str) -> int:
    """`3s`, `250ms`, `1.5s` → milliseconds, at most MAX_FAULT_DELAY_MS."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", value.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: want a duration like 3s or 250ms")
    number, unit = float(match.group(1)), match.group(2)
    milliseconds = max(1, round(number * (1000 if unit == "s" else 1)))
    if milliseconds > MAX_FAULT_DELAY_MS:
        raise argparse.ArgumentTypeError(f"{value!r}: want a delay of at most 1 hour ({MAX_FAULT_DELAY_MS // 1000}s)")
    return milliseconds


def admin_socket(value: str) -> Path:
    """A sidecar's admin socket as `make fault` lists them; an http:// URL (the admin interface was once on a
    TCP port) is refused saying where it is now."""
    if urllib.parse.urlsplit(value).scheme in ("http", "https"):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a sidecar's admin interface is on a Unix socket, no URL: want its path, like "
            f"{local_admin_socket('catalog')}"
        )
    return Path(value)


def status_code(value: str) -> grpc.StatusCode:
    try:
        return _CODES[value.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{value!r}: want a gRPC status other than OK, e.g. UNAVAILABLE") from None


def percentage(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 100:
        raise argparse.ArgumentTypeError(f"{value!r}: want a whole percentage from 1 to 100")
    return number


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shopmesh_platform.mesh.faults", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "service",
        nargs="?",
        choices=TARGETS,
        help="the service whose sidecar injects it (<service>-canary: its canary's)",
    )
    parser.add_argument("--delay", type=duration_ms, default=0, help="hold each affected call this long (3s, 250ms)")
    parser.add_argument("--abort", type=status_code, default=None, help="answer affected calls with this status")
    parser.add_argument("--percent", type=percentage, default=100, help="share of the calls affected (default 100)")
    parser.add_argument("--clear", action="store_true", help="remove the service's faults")
    parser.add_argument("--show", action="store_true", help="print every running sidecar's faults")
    parser.add_argument(
        "--admin",
        type=admin_socket,
        default=None,
        metavar="SOCKET",
        help="the sidecar's admin socket (default: the running local stack's, named by .data/stack.json, else "
        f"{LOCAL_SOCKETS}/<service>-sidecar-admin.sock)",
    )
    args = parser.parse_args(argv)
    # Only make run's own admin sockets, taken as no running stack named any (said on stderr), are answered by
    # starting it: an --admin SOCKET the user gave, or the running stack's sidecar (named on stderr), gets no such
    # advice, as `make shoppers` gives none for a --target of the user's.
    make_runs_ports = False
    try:
        if args.show:
            rows = []
            targets: list[tuple[str, Path | None]]
            if args.admin:
                targets = [(args.service or "(--admin)", args.admin)]
            else:
                admins = SidecarAdmins(err)
                targets = [
                    (name, admins.admin_socket_of(name)) for name in ([args.service] if args.service else SERVICES)
                ]
                # A canary's sidecar only while one runs (one row per service otherwise).
                canaries = (
                    []
                    if args.service
                    else [(name, admins.admin_socket_of(name)) for name in map(canary_name, SERVICES)]
                )
                targets += [(name, admin) for name, admin in canaries if admin is not None and running(admin)]
            for name, admin in targets:
                if admin is None:
                    rows.append((name, "-", "(no sidecar running)"))
                    continue
                try:
                    rows.append((name, str(admin), str(current_fault(admin))))
                except FaultError:
                    rows.append((name, str(admin), "(no sidecar running)"))
            print(tabulate(rows, headers=("SERVICE", "SIDECAR ADMIN", "FAULT"), tablefmt="plain"), file=out)
            return 0
        if args.service is None:
            parser.error("name the service whose sidecar injects the fault (or --show)")
        if not args.clear and not args.delay and args.abort is None:
            parser.error("say what to inject (--delay, --abort) or --clear")
        fault = Fault() if args.clear else Fault(delay_ms=args.delay, abort=args.abort, percent=args.percent)
        if args.admin:
            sockets = {args.service: args.admin}
        else:
            admins = SidecarAdmins(err)
            make_runs_ports = admins.stack is None
            sockets = {args.service: admins.required(args.service)}
        if not args.admin and args.service in SERVICES:
            canary = canary_name(args.service)
            if (canary_admin := admins.admin_socket_of(canary)) is not None and running(canary_admin):
                # The service's fault is its canary's too: every call to the service meets it, whichever
                # track the caller's sidecar picks.
                sockets[canary] = canary_admin
        for name, admin in sockets.items():
            set_fault(admin, fault)
            print(f"{name}: {current_fault(admin)}", file=out)
        return 0
    except NoSidecar as exc:
        hint = ": is `make run MESH=envoy` running?" if make_runs_ports else ""
        print(f"error: {exc}{hint}", file=err)
        return 1
    except FaultError as exc:
        print(f"error: {exc}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status_on_interrupt(main))
