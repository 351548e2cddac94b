"""Faults injected by a service's sidecar in the local mesh, switched on and off while the stack runs.

    python -m shopmesh_platform.mesh.faults recommendations --delay 3s            every call waits 3 s
    python -m shopmesh_platform.mesh.faults catalog --abort UNAVAILABLE --percent 30
    python -m shopmesh_platform.mesh.faults catalog --clear
    python -m shopmesh_platform.mesh.faults --show                                every sidecar's faults

With a canary (`make run ... --canary catalog`), `catalog` means both of catalog's sidecars, and
`catalog-canary` the canary's alone: a canary gone bad beside a healthy stable service.

(`make fault FAULT_ARGS="..."`.) Each sidecar's inbound listener has Envoy's fault filter, off by default; this
sets its runtime keys through the sidecar's admin interface (`/runtime_modify`), so a fault applies to the
next call the service gets, from any caller, and the services never know: the callers see what a slow or
failing callee looks like (a delay, or the gRPC status, trailers-only), and show how they degrade — the
gateway's product page without recommendations, orders' saga cancelling a checkout it could not pay
for. A delay and an abort can be set together (the abort follows the delay); each hits `--percent` of the
calls, drawn independently. Faults live in the
sidecar's memory: a restarted stack starts without any. The sidecars are those of the running local stack
(`.data/stack.json`, which the launcher writes while it runs, on any ports: `--free-ports` too), else of
`make run MESH=envoy`'s local ports, said on stderr either way (and why: no launcher's file here, or one
ignored); `--admin URL` names one by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

import grpc
from tabulate import tabulate

from shopmesh_chassis.interrupts import exit_status_on_interrupt
from shopmesh_chassis.local_stack import running_stack_or_say_default

from ..topology import (
    CANARY_SUFFIX,
    LOCAL_HOST,
    SERVICES,
    canary_name,
    is_edge,
    local_canary_ports,
    local_sidecar_ports,
)

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
    """Nothing answers at a sidecar's admin URL."""


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


def set_fault(admin_url: str, fault: Fault) -> None:
    """Set (or, with Fault(delay_ms=0, abort=None), clear) a sidecar's fault."""
    query = urllib.parse.urlencode(fault.runtime())
    _request(admin_url, f"/runtime_modify?{query}", method="POST")


def current_fault(admin_url: str) -> Fault:
    entries = json.loads(_request(admin_url, "/runtime?format=json"))["entries"]
    return Fault.from_runtime({key: entries[key]["final_value"] for key in KEYS if key in entries})


def _request(admin_url: str, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(admin_url + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # loopback admin of our own sidecar
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise FaultError(
            f"the sidecar at {admin_url} refused {path}: {exc.code} {exc.read().decode().strip()}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise NoSidecar(f"no sidecar answers at {admin_url} ({getattr(exc, 'reason', exc)})") from None


# What a fault can name: a service (its sidecar, and its canary's when one runs) or a canary alone; not the
# gateway's, which the launcher never runs (its callers are clients, outside the mesh).
TARGETS = [*SERVICES, *(canary_name(name) for name in SERVICES if not is_edge(name))]


def local_admin_url(name: str) -> str:
    """The admin interface of the sidecar of `name` (a service, or `<service>-canary`) on the local ports of
    `make run MESH=envoy`."""
    if name.endswith(CANARY_SUFFIX):
        return f"http://{LOCAL_HOST}:{local_canary_ports(name.removesuffix(CANARY_SUFFIX)).sidecar.admin}"
    return f"http://{LOCAL_HOST}:{local_sidecar_ports(name).admin}"


def local_admin_ports() -> str:
    """The admin ports of `local_admin_url`'s sidecars, all in one line's words."""
    services = [local_sidecar_ports(name).admin for name in SERVICES]
    canaries = [local_canary_ports(name).sidecar.admin for name in SERVICES if not is_edge(name)]
    return f"{LOCAL_HOST}:{min(services)}-{max(services)} (canaries': {min(canaries)}-{max(canaries)})"


class SidecarAdmins:
    """The sidecars' admin URLs: the running local stack's (.data/stack.json: any ports, `--free-ports`
    included); else those of `make run MESH=envoy`'s local ports. Said on `err` either way, so that a default
    sidecar that does not answer is not taken for the running stack's."""

    def __init__(self, err: TextIO) -> None:
        self.stack = running_stack_or_say_default(
            err, "sidecars", local_admin_ports(), without="make run MESH=envoy's admin ports"
        )
        if self.stack is not None:
            print(f"sidecars of {self.stack.said()}", file=err)

    def url(self, name: str) -> str | None:
        """The admin URL of `name`'s sidecar; None when the running stack has none (no mesh, not started)."""
        if self.stack is None:
            return local_admin_url(name)
        return self.stack.sidecar_admin.get(name)

    def required(self, name: str) -> str:
        url = self.url(name)
        if url is not None:
            return url
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


def _running(url: str) -> bool:
    try:
        current_fault(url)
    except FaultError:
        return False
    return True


# The longest delay a fault may hold a call: longer than any caller waits (a call's deadline ends it first),
# short enough that a typo (`--delay 3000s` for 3000ms) is refused rather than set.
MAX_DELAY_MS = 60 * 60 * 1000


def duration_ms(value: str) -> int:
    """`3s`, `250ms`, `1.5s` → milliseconds, at most MAX_DELAY_MS."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", value.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: want a duration like 3s or 250ms")
    number, unit = float(match.group(1)), match.group(2)
    milliseconds = max(1, round(number * (1000 if unit == "s" else 1)))
    if milliseconds > MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"{value!r}: want a delay of at most 1 hour ({MAX_DELAY_MS // 1000}s)")
    return milliseconds


def admin_url(value: str) -> str:
    """A sidecar's admin URL as `make fault` lists them: http://host:port (urllib reads no other)."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{value!r}: want the sidecar's admin URL with its scheme, like {local_admin_url('catalog')}"
        )
    return value.rstrip("/")


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
        type=admin_url,
        default=None,
        help="the sidecar's admin URL (default: the running local stack's, named by .data/stack.json, else the "
        "local ports)",
    )
    args = parser.parse_args(argv)
    # Only make run's own admin ports, taken as no running stack named any (said on stderr), are answered by
    # starting it: an --admin URL the user gave, or the running stack's sidecar (named on stderr), gets no such
    # advice, as `make shoppers` gives none for a --target of the user's.
    make_runs_ports = False
    try:
        if args.show:
            rows = []
            targets: list[tuple[str, str | None]]
            if args.admin:
                targets = [(args.service or "(--admin)", args.admin)]
            else:
                admins = SidecarAdmins(err)
                targets = [(name, admins.url(name)) for name in ([args.service] if args.service else SERVICES)]
                # A canary's sidecar only while one runs (one row per service otherwise).
                canaries = [] if args.service else [(name, admins.url(name)) for name in map(canary_name, SERVICES)]
                targets += [(name, url) for name, url in canaries if url is not None and _running(url)]
            for name, url in targets:
                if url is None:
                    rows.append((name, "-", "(no sidecar running)"))
                    continue
                try:
                    rows.append((name, url, str(current_fault(url))))
                except FaultError:
                    rows.append((name, url, "(no sidecar running)"))
            print(tabulate(rows, headers=("SERVICE", "SIDECAR ADMIN", "FAULT"), tablefmt="plain"), file=out)
            return 0
        if args.service is None:
            parser.error("name the service whose sidecar injects the fault (or --show)")
        if not args.clear and not args.delay and args.abort is None:
            parser.error("say what to inject (--delay, --abort) or --clear")
        fault = Fault() if args.clear else Fault(delay_ms=args.delay, abort=args.abort, percent=args.percent)
        if args.admin:
            urls = {args.service: args.admin}
        else:
            admins = SidecarAdmins(err)
            make_runs_ports = admins.stack is None
            urls = {args.service: admins.required(args.service)}
        if not args.admin and args.service in SERVICES:
            canary = canary_name(args.service)
            if (canary_url := admins.url(canary)) is not None and _running(canary_url):
                # The service's fault is its canary's too: every call to the service meets it, whichever
                # track the caller's sidecar picks.
                urls[canary] = canary_url
        for name, url in urls.items():
            set_fault(url, fault)
            print(f"{name}: {current_fault(url)}", file=out)
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
