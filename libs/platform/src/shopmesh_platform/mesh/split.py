"""A canary's share of its service's calls in the local mesh, changed while the stack runs.

    python -m shopmesh_platform.mesh.split catalog 30         catalog's callers send catalog-canary 30 %
    python -m shopmesh_platform.mesh.split catalog 0          nothing to the canary (an abort), 100: everything
    python -m shopmesh_platform.mesh.split catalog --reset    back to the weight `--canary` started it with

Each caller's sidecar splits its calls to the service by two runtime keys (envoy.split_runtime_keys), which this
sets through the sidecar's admin interface as `mesh.faults` sets faults: on the next call, nothing restarts,
and a restarted stack starts at `--canary`'s weight again. The sidecars are the running local stack's, found as
`mesh.faults` finds them.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from shopmesh_chassis.interrupts import exit_status_on_interrupt

from ..topology import SERVICES, canary_name, is_edge, service_callers
from .envoy import split_runtime_keys
from .faults import FaultError, SidecarAdmins, admin_request, running


def set_split(admin: Path, service: str, weight: int | None) -> None:
    """Have the sidecar whose admin socket is `admin` send `weight` percent of its calls to `service` to its
    canary; None: the weight it was started with."""
    stable, canary = split_runtime_keys(service)
    # An empty value removes the key: the route's own weights.
    values = {stable: "", canary: ""} if weight is None else {stable: str(100 - weight), canary: str(weight)}
    admin_request(admin, f"/runtime_modify?{urllib.parse.urlencode(values)}", method="POST")


def share(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"{value!r}: want a whole percentage from 0 to 100")
    return number


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.mesh.split", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=[name for name in SERVICES if not is_edge(name)])
    parser.add_argument("weight", nargs="?", type=share, help="the canary's share of the calls, 0 to 100")
    parser.add_argument("--reset", action="store_true", help="back to the weight the stack was started with")
    args = parser.parse_args(argv)
    if (args.weight is None) != args.reset:
        parser.error("give the canary's share (0-100), or --reset")
    try:
        admins = SidecarAdmins(err)
        admins.required(canary_name(args.service))  # says how to start one when none runs
        callers = [
            (caller, admin)
            for caller in service_callers(args.service)
            if (admin := admins.url(caller)) is not None and running(admin)
        ]
        if not callers:
            raise FaultError(f"no caller of {args.service} runs: nothing splits its calls")
        for caller, admin in callers:
            set_split(admin, args.service, args.weight)
            said = "the weight it started with" if args.weight is None else f"{args.weight} %"
            print(f"{caller}: {said} of its calls to {args.service} to {canary_name(args.service)}", file=out)
        return 0
    except FaultError as exc:
        print(f"error: {exc}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status_on_interrupt(main))
