"""A canary's share of its service's calls in the local mesh, changed while the stack runs.

    python -m shopmesh_platform.mesh.split catalog 30         catalog's callers send catalog-canary 30 %
    python -m shopmesh_platform.mesh.split catalog 0          nothing to the canary (an abort), 100: everything
    python -m shopmesh_platform.mesh.split catalog --reset    back to the weight `--canary` started it with
    python -m shopmesh_platform.mesh.split --show [catalog]   each caller's share now, and whether they agree

(`make split SPLIT_ARGS="catalog 30"`.)

Each caller's sidecar splits its calls to the service by two runtime keys (envoy.split_runtime_keys), which this
sets through the sidecar's admin interface as `mesh.faults` sets faults: on the next call, nothing restarts,
and a restarted stack starts at `--canary`'s weight again (the launcher restarts no sidecar alone: one that exits
stops the whole stack). The sidecars are the running local stack's, found as
`mesh.faults` finds them. Every caller gets the split or none does: a caller the stack lists whose sidecar does
not answer fails it before any change, and one that refuses it part-way (or whose answer is lost) has the callers
already changed put back as they were (callers on different splits would send the service two shares at once).
The canary's sidecar must answer for any share but 0: 0 moves every call off a canary that is down.

`--show` changes nothing: for each service a canary runs of, each caller's sidecar's split as its runtime has it
now, flagging callers whose share differs from the others' or whose sidecar does not answer; exit status 0 when
they all agree (and when no canary runs), DISAGREE (3) when they do not or one does not answer. A caller on the
weight the canary started with (no runtime key set) has the share the running stack's file recorded
(`20 % (as started)`): it agrees with a caller set to that same share. A file of a launcher that recorded none
(and no file at all) leaves that share unknown: `the weight it started with`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from tabulate import tabulate

from shopmesh_chassis.interrupts import exit_status_on_interrupt

from ..ports import Canary
from ..topology import SERVICES, canary_name, is_edge, service_callers
from .envoy import split_runtime_keys
from .faults import FaultError, NoSidecar, SidecarAdmins, modify_runtime, running, runtime_values

# `--show`'s exit status when a service's callers split its calls differently or one does not answer (1: the
# tool could not read the stack at all, 2: a usage error).
DISAGREE = 3
# A split without runtime keys: the route's own weights, which the launcher took from `--canary`; said so
# where the running stack's file recorded no weight (`said_started`).
STARTED = "the weight it started with"


def started_weight(admins: SidecarAdmins, service: str) -> int | None:
    """The share the running stack started `service`'s canary with; None when no file recorded it (no running
    stack's file, or one written before the launcher recorded it)."""
    return None if admins.stack is None else admins.stack.canary_weights.get(service)


def said_started(started: int | None) -> str:
    return STARTED if started is None else f"{started} % (as started)"


def set_split(admin: Path, service: str, weight: int | None) -> None:
    """Have the sidecar whose admin socket is `admin` send `weight` percent of its calls to `service` to its
    canary; None: the weight it was started with."""
    stable, canary = split_runtime_keys(service)
    # An empty value removes the key: the route's own weights.
    values = {stable: "", canary: ""} if weight is None else {stable: str(100 - weight), canary: str(weight)}
    modify_runtime(admin, values)


def share(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want a whole percentage from 0 to 100") from None


class Caller(NamedTuple):
    """A caller's sidecar that splits the service's calls, and its split as it was before any change (`before`: a
    key it had not is empty, which removes it again)."""

    name: str
    admin: Path
    before: dict[str, str]


def _split_before(admin: Path, service: str) -> dict[str, str] | None:
    """The split the sidecar whose admin socket is `admin` has of `service`'s calls; None when it does not answer
    (`faults.running`)."""
    keys = split_runtime_keys(service)
    try:
        return {**dict.fromkeys(keys, ""), **runtime_values(admin, keys)}
    except FaultError:
        return None


def _caller_splits(admins: SidecarAdmins, service: str) -> list[tuple[str, Path, dict[str, str] | None]]:
    """The sidecars of `service`'s callers, each with its admin socket and its split (one reading of its runtime,
    which tells too whether it answers). The running stack's: every caller it lists (None: it does not answer).
    Else those of `make run MESH=envoy` that answer: which callers it runs no file says (a --services subset)."""
    splits = []
    for caller in service_callers(service):
        if (admin := admins.admin_socket_of(caller)) is None:
            continue
        split = _split_before(admin, service)
        if split is not None or admins.stack is not None:
            splits.append((caller, admin, split))
    return splits


def callers_to_split(admins: SidecarAdmins, service: str) -> list[Caller]:
    """The sidecars of `service`'s callers that split its calls, each with its split as it was (`_caller_splits`):
    each caller the running stack lists must answer (NoSidecar)."""
    callers = []
    for caller, admin, before in _caller_splits(admins, service):
        if before is None:
            raise NoSidecar(f"{caller}'s sidecar does not answer at {admin}: no caller's split was changed")
        callers.append(Caller(caller, admin, before))
    if not callers:
        raise FaultError(f"no caller of {service} runs: nothing splits its calls")
    return callers


def split_all(
    callers: Sequence[Caller], service: str, weight: int | None, out: TextIO, started: int | None = None
) -> None:
    """Every caller's split set, or (FaultError) none: those changed before a refusal are put back as they were.
    `started`: the weight the canary started with, which None (`--reset`) goes back to, if known."""
    changed: list[Caller] = []
    said = said_started(started) if weight is None else f"{weight} %"
    try:
        for caller in callers:
            # Before the change is asked for: one made whose answer was lost is put back too (writing `before`
            # back to a caller the change never reached changes nothing).
            changed.append(caller)
            set_split(caller.admin, service, weight)
            print(f"{caller.name}: {said} of its calls to {service} to {canary_name(service)}", file=out)
    except FaultError as exc:
        undone, left = [], []
        for caller in changed:
            try:
                modify_runtime(caller.admin, caller.before)
                undone.append(caller.name)
            except FaultError:
                left.append(caller.name)
        what = f"; put back as it was: {', '.join(undone)}" if undone else ""
        what += f"; NOT PUT BACK (each may have the new share or the old one): {', '.join(left)}" if left else ""
        raise FaultError(f"{exc}{what}") from None


def said_share(split: Mapping[str, str], service: str, started: int | None = None) -> tuple[str, int | None]:
    """A caller's split of `service`'s calls (`_split_before`) as `--show` says it, and the canary's percentage
    it comes to (None: not known). Without keys, the weight the canary `started` with. The canary's percentage
    when the two keys make one, as `set_split` sets them; else the keys as they are (set by hand: Envoy weighs
    the canary's value against the sum of both, a key not set counting the route's own weight)."""
    stable_key, canary_key = split_runtime_keys(service)
    stable, canary = split[stable_key], split[canary_key]
    if not stable and not canary:
        return said_started(started), started
    if stable.isdigit() and canary.isdigit() and int(stable) + int(canary) == 100:
        return f"{int(canary)} %", int(canary)
    return f"{stable_key}={stable or '(not set)'} {canary_key}={canary or '(not set)'}", None


def _canary_runs(admins: SidecarAdmins, service: str) -> bool:
    """The running stack's: whether it lists the canary. Else whether the canary's sidecar answers (a socket of
    `make run MESH=envoy` is there whether it runs or not)."""
    admin = admins.admin_socket_of(canary_name(service))
    return admin is not None and (admins.stack is not None or running(admin))


def _majority(shares: Iterable[int | str]) -> int | str | None:
    """The share more than half the callers have, taken for the service's: the others are the odd ones out.
    None when no share has that many (two callers on two shares): naming one of them as the odd one out would
    be a guess, so every caller is flagged."""
    counts = Counter(shares)
    if not counts:
        return None
    share, count = counts.most_common(1)[0]
    return share if count * 2 > counts.total() else None


def show(admins: SidecarAdmins, service: str | None, out: TextIO, err: TextIO) -> int:
    """`--show`: each caller's share of each canaried service's calls (of `service` alone if given); 0 when every
    service's callers agree, DISAGREE when they do not or one does not answer, said on `err`."""
    services = [service] if service else [name for name in SERVICES if not is_edge(name)]
    canaried = [name for name in services if _canary_runs(admins, name)]
    if not canaried:
        of = f" of {service}" if service else ""
        print(f"no canary runs{of}: every caller sends each service all its calls", file=out)
        return 0
    rows, problems = [], []
    for name in canaried:
        splits = _caller_splits(admins, name)
        started = started_weight(admins, name)
        said = {caller: said_share(split, name, started) for caller, _, split in splits if split is not None}
        # Compared by the percentage each comes to, so that 20 % set and 20 % as started agree; by what is said
        # where it is not known (two callers on an unknown start weight agree, keys set by hand do if equal).
        shares = {caller: text if percentage is None else percentage for caller, (text, percentage) in said.items()}
        common = _majority(shares.values())
        if not splits:
            rows.append((name, "-", "(no caller runs)", ""))
        for caller, admin, _ in splits:
            if caller not in shares:
                rows.append((name, caller, "-", "DOES NOT ANSWER"))
                problems.append(f"error: {name}'s callers: {caller}'s sidecar does not answer at {admin}")
            else:
                rows.append((name, caller, said[caller][0], "" if shares[caller] == common else "DISAGREES"))
        if len(set(shares.values())) > 1:
            problems.append(
                f"error: {name}'s callers split its calls differently: "
                f'make split SPLIT_ARGS="{name} <share>" (or "{name} --reset") gives them all one'
            )
    print(tabulate(rows, headers=("SERVICE", "CALLER", "CANARY'S SHARE", ""), tablefmt="plain"), file=out)
    for problem in problems:
        print(problem, file=err)
    return DISAGREE if problems else 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.mesh.split", description=__doc__.splitlines()[0])
    # Optional to argparse, so that none at all (a bare `make split`) gets the usage line below, not its own.
    parser.add_argument("service", nargs="?", choices=[name for name in SERVICES if not is_edge(name)])
    parser.add_argument("weight", nargs="?", type=share, help="the canary's share of the calls, 0 to 100")
    parser.add_argument("--reset", action="store_true", help="back to the weight the stack was started with")
    parser.add_argument(
        "--show",
        action="store_true",
        help=f"print each caller's share of each canary's calls (of the service's alone, if named); exit status "
        f"{DISAGREE} when a service's callers disagree or one does not answer",
    )
    args = parser.parse_args(argv)
    if args.show and (args.weight is not None or args.reset):
        parser.error("--show changes nothing: give it no share and no --reset")
    if args.service is None and not args.show:
        parser.error(
            "name the service and its canary's share, e.g. catalog 30, or catalog --reset, or --show "
            '(make split SPLIT_ARGS="catalog 30")'
        )
    if args.show:
        try:
            return show(SidecarAdmins(err), args.service, out, err)
        except FaultError as exc:
            print(f"error: {exc}", file=err)
            return 1
    if (args.weight is None) != args.reset:
        parser.error("give the canary's share (0-100), or --reset")
    if args.weight is not None:
        try:
            Canary(args.service, args.weight)
        except ValueError as exc:
            parser.error(f"argument weight: {exc}")
    try:
        admins = SidecarAdmins(err)
        canary = canary_name(args.service)
        canary_admin = admins.required(canary)  # says how to start one when none runs
        # Share 0 sends it nothing: the abort, which a canary that is down is the very case of.
        if args.weight != 0 and not running(canary_admin):
            raise NoSidecar(f"{canary}'s sidecar does not answer at {canary_admin}: nothing to split to")
        started = started_weight(admins, args.service)
        split_all(callers_to_split(admins, args.service), args.service, args.weight, out, started)
        return 0
    except FaultError as exc:
        print(f"error: {exc}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status_on_interrupt(main))
