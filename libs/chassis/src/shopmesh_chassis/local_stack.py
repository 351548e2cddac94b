"""Where the local stack (`make run`) serves, for the tools that talk to it (`make deadletters`, `make traces`,
`make shoppers`, `make fault`).

The launcher writes `<data dir>/stack.json` once the stack serves (atomically: a tool never reads half a file)
and removes it when it stops. Under `--free-ports` the addresses change every run, and nobody should have to
copy them from its table. A tool reads the file of `.data` (the default data directory, as the Makefile runs
them from the repository root) when it was given no address of its own, and says so; without a file, or with
one whose launcher is gone (killed with -9, which removes nothing), or a copy of one written for another
directory (a checkout copied with its .data), it uses the topology's local ports as before. It lives in the
chassis because `shopmesh-deadletters` does, and the chassis imports nothing of the platform that writes it.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

STACK_FILE = "stack.json"
DEFAULT_DATA_DIR = Path(".data")
# The local stack's folders hold what no other account on the machine may read: users.db has every user's
# token-signing key (whoever reads it signs tokens for anyone) and password hashes, the logs and e-mails
# their addresses and shipping details. Its folders are this user's alone, and its children start with a
# umask that keeps the files they make (SQLite files, NATS' store, e-mails, spans) this user's alone too.
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def make_private_folder(folder: Path) -> None:
    """Make `folder` (and its parents) and leave it PRIVATE_FOLDER_MODE: chmod'ed too when it exists, as one
    made earlier under the usual umask (0755) is readable by every account. OSError when it cannot be."""
    folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    folder.chmod(PRIVATE_FOLDER_MODE)


def write_private_file(path: Path, data: bytes) -> None:
    """Write `path` anew, PRIVATE_FILE_MODE from its creation whatever the umask (the launcher's is the user's,
    usually 022): a file there before (left by an older launcher, 0644) is removed first, not written over."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


@dataclass(frozen=True)
class LocalStack:
    """What a running launcher wrote: its process, and the addresses a tool may need (None: not run)."""

    path: Path
    pid: int
    nats_url: str
    gateway: str | None = None
    http_url: str | None = None
    traces_address: str | None = None
    traces_dir: str | None = None
    # The Unix socket of each sidecar's Envoy admin interface, by the name `make fault` takes (`catalog`,
    # `catalog-canary`).
    sidecar_admin: dict[str, str] = field(default_factory=dict)
    # The share each canary was started with, by its service's name (`catalog`: 20): what its callers send it
    # while no split was set, which their Envoys' runtime does not tell (`mesh.split --show`). Empty in a file
    # written before it was recorded.
    canary_weights: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            # Told apart from a later process that reuses the pid (see `_same_process`).
            "started": process_start(self.pid),
            # Told apart from a copy of the file elsewhere (a copied checkout): see `running_stack`.
            "data_dir": str(self.path.parent.absolute()),
            "nats_url": self.nats_url,
            "gateway": self.gateway,
            "http_url": self.http_url,
            "traces_address": self.traces_address,
            "traces_dir": self.traces_dir,
            "sidecar_admin": self.sidecar_admin,
            "canary_weights": self.canary_weights,
        }

    def said(self) -> str:
        """How a tool names where an address came from."""
        return f"the local stack of {self.path} (launcher pid {self.pid})"


def stack_file(data_dir: Path) -> Path:
    return data_dir / STACK_FILE


def write_stack_file(stack: LocalStack) -> Path:
    """Write it whole or not at all: a temporary file beside it, then renamed over it; returns its path."""
    stack.path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{STACK_FILE}.", dir=stack.path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(stack.as_json(), out, indent=2)
            out.write("\n")
        os.replace(temporary, stack.path)
        return stack.path
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_stack_file(path: Path, pid: int) -> None:
    """Remove the file if it is still this launcher's (`pid`'s)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        if json.loads(path.read_text())["pid"] == pid:
            path.unlink()


def running_stack(data_dir: Path = DEFAULT_DATA_DIR, err: TextIO | None = None) -> LocalStack | None:
    """The stack whose launcher wrote `data_dir`'s file and still runs; None without a file, and None with one
    line on `err` for a file that cannot be read or whose launcher is gone (its addresses may be anyone's by now).
    """
    return _read(data_dir, err).stack


@dataclass(frozen=True)
class _Read:
    """What `data_dir`'s file gave: its running stack, or none; and whether there was a file, ignored (said)."""

    stack: LocalStack | None
    ignored: bool = False


# What a tool takes instead of an ignored file's: `make run`'s fixed ports, and its sidecars' sockets under the
# default data directory (`make fault`, `mesh.split`).
USING_MAKE_RUNS = "using make run's own ports and sockets"


def _read(data_dir: Path, err: TextIO | None) -> _Read:
    path = stack_file(data_dir)
    try:
        raw = json.loads(path.read_text())
        stack = LocalStack(
            path=path,
            pid=int(raw["pid"]),
            nats_url=str(raw["nats_url"]),
            gateway=raw.get("gateway"),
            http_url=raw.get("http_url"),
            traces_address=raw.get("traces_address"),
            traces_dir=raw.get("traces_dir"),
            sidecar_admin=dict(raw.get("sidecar_admin") or {}),
            canary_weights={str(name): int(weight) for name, weight in (raw.get("canary_weights") or {}).items()},
        )
        started = raw.get("started")
        written_in = raw.get("data_dir")
    except FileNotFoundError:
        return _Read(None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        _say(err, f"ignoring {path}: not a stack file the launcher wrote ({type(exc).__name__}: {exc})")
        return _Read(None, ignored=True)
    if not _same_process(stack.pid, started):
        _say(err, f"ignoring {path}: its launcher (pid {stack.pid}) is gone; {USING_MAKE_RUNS}")
        return _Read(None, ignored=True)
    if written_in is not None and not _same_directory(str(written_in), data_dir):
        # A copy (a checkout copied with its .data while a stack ran): its live pid is another directory's
        # stack, and a tool run here would act on that one.
        _say(err, f"ignoring {path}: it was written for {written_in}, not this directory; {USING_MAKE_RUNS}")
        return _Read(None, ignored=True)
    return _Read(stack)


class AddressSource(enum.Enum):
    """Where a tool's address came from (`local_address`); said on the tool's stderr either way."""

    # The running local stack's.
    RUNNING_STACK = "running stack"
    # The default, although a local stack runs: one started without this address (`... runs no <what>`).
    STACK_WITHOUT_IT = "stack without it"
    # The default: no stack file was here.
    NO_STACK = "no stack"
    # The default: a stack file was here but ignored (unreadable, its launcher gone, or a copy of another
    # directory's). A hint must not say there is none.
    IGNORED_FILE = "ignored file"


@dataclass(frozen=True)
class LocalAddress:
    """Where a tool given no address of its own goes (`local_address`), and why."""

    address: str
    source: AddressSource

    @property
    def of_running_stack(self) -> bool:
        return self.source is AddressSource.RUNNING_STACK

    @property
    def file_ignored(self) -> bool:
        return self.source is AddressSource.IGNORED_FILE

    @property
    def stack_runs_without_it(self) -> bool:
        """A hint must not ask whether a stack runs, but say that it runs none."""
        return self.source is AddressSource.STACK_WITHOUT_IT

    @property
    def took_make_runs_default(self) -> bool:
        """Whether the address is make run's default, taken because no local stack runs: the one address a tool
        may advise starting `make run` for. Not the running stack's own (named on stderr), nor the default taken
        past a stack started without it (that stack's to start)."""
        return self.source in (AddressSource.NO_STACK, AddressSource.IGNORED_FILE)


def local_address(
    err: TextIO,
    name: str,
    address: Callable[[LocalStack], str | None],
    default: str,
    *,
    runs_no: str,
    shown: Callable[[str], str] = str,
    without: str | None = None,
) -> LocalAddress:
    """`address` of the running local stack, for a tool given none of its own; else `default` (the topology's
    local one, as before the launcher wrote its file). Said on `err` in one shape for every tool: `<name> at
    <address>: <which stack>`, or `<which stack> runs no <runs_no>; using <default>` when the stack started
    without it. `shown` is how a line may show an address (a NATS URL's credentials masked). Without a running
    stack nothing is said, unless `without` says whose `default` is: `<name> at <default>: <without>, as no
    local stack runs: <why>` (`no_running_stack`), so that a default that does not answer reads as what it is.
    Returned with whether the address is the running stack's, whether a file was there and ignored, and whether
    a stack runs without it."""
    read = _read_or_say_default(err, name, shown(default), without)
    stack = read.stack
    if stack is None:
        return LocalAddress(default, AddressSource.IGNORED_FILE if read.ignored else AddressSource.NO_STACK)
    found = address(stack)
    if found is None:
        _say(err, f"{stack.said()} runs no {runs_no}; using {shown(default)}")
        return LocalAddress(default, AddressSource.STACK_WITHOUT_IT)
    _say(err, f"{name} at {shown(found)}: {stack.said()}")
    return LocalAddress(found, AddressSource.RUNNING_STACK)


def running_stack_or_say_default(err: TextIO, name: str, default: str, *, without: str) -> LocalStack | None:
    """The running local stack, for a tool that takes several addresses of it (`make fault`'s sidecars); without
    one, None, and the default the tool takes instead (`default`, a description) said on `err` as `local_address`
    says one, whether a file was there and ignored or not: `<name> at <default>: <without>, as no local stack
    runs: <why>`."""
    return _read_or_say_default(err, name, default, without).stack


def _read_or_say_default(err: TextIO, name: str, default: str, without: str | None) -> _Read:
    """`_read` of the default data directory; without a running stack, the default said on `err` unless
    `without` is None (the tool says nothing of it)."""
    read = _read(DEFAULT_DATA_DIR, err)
    if read.stack is None and without is not None:
        _say(err, f"{name} at {default}: {without}, as no local stack runs: {no_running_stack(read.ignored)}")
    return read


def no_running_stack(file_ignored: bool) -> str:
    """Why a tool took its default address: no launcher of this directory runs. Either its file was not found
    where the tool runs, or the one found was ignored (its launcher gone, unreadable, a copy of another
    directory's, said on the line before): "none is here" would send the user looking for a file they can see."""
    path = stack_file(DEFAULT_DATA_DIR)
    if file_ignored:
        return f"{path} here names no launcher of this directory that still runs (ignored: see above)"
    return f"no launcher's {path} is here"


def _same_directory(written_in: str, data_dir: Path) -> bool:
    try:
        return os.path.samefile(written_in, data_dir)
    except OSError:  # the directory it was written for is gone
        return False


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux's /proc); None where that cannot be read."""
    return _start_of(_stat_fields(pid))


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (its state first); None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields after it are counted from its end.
    return stat.rpartition(")")[2].split()


def _start_of(fields: list[str] | None) -> int | None:
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _same_process(pid: int, started: object) -> bool:
    """Whether the launcher that wrote the file still runs: its pid is alive, not a zombie, and (where the file
    recorded it) started when the launcher did, so a pid reused since by another process does not count."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another account's process: alive
    fields = _stat_fields(pid)  # read once: its state, and when it started
    if fields and fields[0] == "Z":  # exited, not reaped yet
        return False
    return started is None or _start_of(fields) in (None, started)


def _say(err: TextIO | None, line: str) -> None:
    if err is not None:
        print(line, file=err)
