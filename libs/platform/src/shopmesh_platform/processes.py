"""The stack's children as processes: starting one (`spawn`: its own process group, output piped, a
parent-death signal through util-linux's `setpriv`), signalling it and its process group through the pidfd
held since its start (`signal_child`), telling whether it has exited and how (`has_exited`, `exit_status`),
waiting for its exit whatever holds its output (`exited`),
and the errors that name a process with its last output (`StackError`, `NotReady`, `Crashed`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from shopmesh_chassis.local_stack import PRIVATE_UMASK

# How many of a process's last output lines a StackError shows (`failure_message`).
FAILURE_LINES = 40
# Chassis services log one line per event, but a traceback or a JSON record can be long.
_LINE_LIMIT = 1024 * 1024


class StackError(RuntimeError):
    """A process of the stack could not be started or restarted; the message shows its last output."""


class NotReady(StackError):
    """A process of the stack ran, but was not ready within its startup timeout."""


class Crashed(StackError):
    """A process of the stack exited while it was meant to run; the message shows its last output."""

    def __init__(self, name: str, code: int, output: Iterable[str]) -> None:
        what = f"exited unexpectedly ({exit_status(code)})"
        # One line for the console as the stack stops; the whole message for the end.
        self.summary = f"{name} {what}"
        super().__init__(failure_message(name, what, output))


def crash_at_stop(
    name: str, code: int | None, output: Iterable[str], *, on_its_own: bool, stop_signal: signal.Signals, killed: bool
) -> Crashed | None:
    """How a stop tells a crash from the end it asked for (the error naming the process, or None): the process
    had exited before its turn (`on_its_own`, looked at before the stop signal), or a signal the stop did not
    send killed it (neither `stop_signal` nor the stop's own SIGKILL: a SIGSEGV as it shut down, a SIGKILL sent
    by someone else just before). An exit status the process chose in answer to `stop_signal` is its own end."""
    if code is not None and (on_its_own or (code < 0 and -code != stop_signal and not killed)):
        return Crashed(name, code, output)
    return None


def has_exited(process: asyncio.subprocess.Process) -> bool:
    """Whether `process` has exited, though asyncio may not have reported it yet (`returncode` still None):
    its exit is only delivered through the event loop, where a signal handled first may have beaten it."""
    if process.returncode is not None:
        return True
    # A pidfd, not waitid(WNOWAIT): that answers "still running" while asyncio's child watcher thread is
    # collecting the exit. The one `spawn` holds when there is one (None: gone as it started), else one opened
    # by number. Without pidfds (macOS, Linux before 5.3) only what asyncio reported counts.
    if process in _pidfds:
        held = _pidfds[process]
        return held is None or _readable(held)
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return False
    try:
        pidfd = pidfd_open(process.pid)
    except ProcessLookupError:
        return True  # collected by asyncio's child watcher already, its returncode not yet set
    except OSError:
        return False
    try:
        return _readable(pidfd)
    finally:
        os.close(pidfd)


def _readable(pidfd: int) -> bool:
    """A pidfd is readable once its process has exited."""
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    return bool(poll.poll(0))


def exit_status(code: int) -> str:
    """A child's exit as asyncio reports it (a negative status: the signal that killed it), in words."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"


def failure_message(name: str, what: str, output: Iterable[str]) -> str:
    """What a process did, with its last FAILURE_LINES output lines (a StackError's message)."""
    lines = list(output)[-FAILURE_LINES:]
    if not lines:
        # "its last 0 output lines: (no output)" read like a lost log; a process still importing says nothing.
        return f"{name} {what}; it printed nothing"
    shown = "\n".join(f"  {name} | {line}" for line in lines)
    return f"{name} {what}; its last {'output line' if len(lines) == 1 else f'{len(lines)} output lines'}:\n{shown}"


# Said in a line's place when a child printed one longer than `spawn`'s limit: asyncio drops it.
OVER_LONG_LINE = "[launcher] an over-long output line was dropped"


async def output_lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """Each line a child prints, without its line end, OVER_LONG_LINE for one past the reader's limit: the
    draining goes on past it, since a child whose pipe is full blocks on its next line (a server, its queries
    with it)."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            yield OVER_LONG_LINE
            continue
        if not raw:
            return
        yield raw.decode(errors="replace").rstrip("\r\n")


async def spawn(
    argv: Sequence[str], env: Mapping[str, str], *, parent_death_signal: str = "TERM", user: str | None = None
) -> asyncio.subprocess.Process:
    """Start a child of the stack: output piped to the launcher, its own process group (a terminal's
    Ctrl-C reaches only the launcher, which stops the children in order; SIGKILL takes a child's own
    children with it, those that stay in its group: PostgreSQL's leave it), and on Linux SIGTERM when the
    launcher dies without stopping it (`kill -9`, a crashed test run), through util-linux's setpriv. Its umask
    is PRIVATE_UMASK, whatever the launcher's: the files it makes (databases, e-mails, NATS' store) are this
    user's alone.

    No preexec_fn: with one, Python starts children with fork(), which runs gRPC's fork handlers in the
    child, and those crash it (SIGSEGV, SIGABRT) about once in ten while the launcher's own gRPC calls
    (health checks, a test's traffic) are in flight. Without one, Python uses vfork(), which runs none."""
    if shutil.which(argv[0]) is None:
        # Checked here: through setpriv, a missing program would only show as exit status 127.
        raise FileNotFoundError(errno.ENOENT, "no such executable", argv[0])
    loop = asyncio.get_running_loop()
    # asyncio.create_subprocess_exec, with a protocol that also tells when the process exits (`exited`).
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(_LINE_LIMIT, loop),
        *_with_parent_death_signal(argv, parent_death_signal, user),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        process_group=0,
        # Set in the child between vfork and exec, as process_group is: no preexec_fn (above).
        umask=PRIVATE_UMASK,
    )
    process = asyncio.subprocess.Process(transport, protocol, loop)
    _exits[process] = protocol.exited
    _hold_pidfd(process)
    return process


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """create_subprocess_exec's protocol, plus `exited`: done once asyncio has the process's exit status."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit, loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


# Each child `spawn` started, with the future its exit completes (`exited`).
_exits: weakref.WeakKeyDictionary[asyncio.subprocess.Process, asyncio.Future[None]] = weakref.WeakKeyDictionary()


async def exited(process: asyncio.subprocess.Process) -> int:
    """Wait until `process` has exited; its exit status. Not `process.wait()`: in Python 3.11 that returns only
    once every copy of the process's stdout pipe is closed too, so a process it started in a session of its own
    (which a SIGKILL to its group misses), or anything else holding that pipe, hid its exit for as long as it
    lived: the launcher ran on around a dead NATS. A process `spawn` did not start: `process.wait()`."""
    if process not in _exits:
        return await process.wait()
    # Shielded: a watcher cancelled (the stack's `crashed` rebuilds its watch) must not cancel the one future.
    await asyncio.shield(_exits[process])
    code = process.returncode
    assert code is not None, "asyncio reports the exit after setting the exit status"
    return code


# Each child `spawn` started, with a pidfd opened as it started (None: it was gone by then), closed with its
# Process object. Signals go through it: a pidfd names one process, so a signal reaches that child or, once
# it has been reaped, nothing; never another process given its number since. A number would be a guess.
# A child missing here has no pidfd (a system without them): `signal_child` falls back to its number.
_pidfds: weakref.WeakKeyDictionary[asyncio.subprocess.Process, int | None] = weakref.WeakKeyDictionary()


def _hold_pidfd(process: asyncio.subprocess.Process) -> None:
    """Never raises: the child runs already, and a spawn that failed now would leave it running unowned."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:  # exited and reaped already: nothing left to signal
        _pidfds[process] = None
        return
    except (AttributeError, OSError):
        # No pidfd_open (macOS), or refused: ENOSYS before Linux 5.3, EPERM under a seccomp profile that
        # predates it (older Docker), gVisor. Signals then go by number, as they did before pidfds.
        return
    try:
        # Still our child (a zombie at worst)? asyncio's watcher thread may have reaped it in the instant
        # since it started, and the number gone to another process, which is no child of ours.
        reaped = _reaped(pidfd)
    except (AttributeError, OSError):
        # Linux 5.3 opens pidfds but waitid takes them only from 5.4 (EINVAL): without that look a pidfd
        # cannot tell our child from another process given its number, so it is no better than the number.
        os.close(pidfd)
        return
    if reaped:
        os.close(pidfd)
        _pidfds[process] = None
        return
    _pidfds[process] = pidfd
    weakref.finalize(process, os.close, pidfd)


def _reaped(pidfd: int) -> bool:
    """Whether the child of `pidfd` has been reaped (a zombie is not: its number is still taken)."""
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def _with_parent_death_signal(
    argv: Sequence[str], signal_name: str = "TERM", user: str | None = None
) -> tuple[str, ...]:
    setpriv = _setpriv()
    if setpriv is None:
        return tuple(argv) if user is None else ("runuser", "-u", user, "--", *argv)
    # The signal is tied to the thread that started setpriv, the launcher's, and survives the exec.
    with_signal = (setpriv, "--pdeathsig", signal_name, "--", *argv)
    if user is None:
        return with_signal
    # The kernel clears a parent-death signal when the process's user changes: a second setpriv sets it
    # once the first has switched. Both exec in place, so the parent is still the launcher.
    return (setpriv, f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *with_signal)


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv if it can set a parent-death signal (Linux only; BusyBox's and versions
    before util-linux 2.33 cannot): tried once. Without it children are stopped by the launcher alone."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return None
    try:
        tried = subprocess.run(
            [setpriv, "--pdeathsig", "TERM", "--", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return setpriv if tried.returncode == 0 else None


# linux/pidfd.h: pidfd_send_signal to the process group the pidfd's process leads (Linux 6.9 and later).
_PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2


def signal_child(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal a child `spawn` started, through the pidfd held since its start; SIGKILL takes its whole process
    group. Gone already (reaped): nothing.

    Not process.send_signal: it polls first, which collects an exit before asyncio's child watcher does, and
    the watcher then reports status 255 ("Unknown child process") instead of the real one. Not os.kill: between
    a look that the child still runs and the kill, the watcher thread may reap it and its number go to another
    process. Only a child `spawn` holds no pidfd for (a system without them) is signalled by number, with
    that risk, as nothing better is left there."""
    if process not in _pidfds:
        _signal_by_number(process, sig)
        return
    pidfd = _pidfds[process]
    if pidfd is None:
        return
    with contextlib.suppress(ProcessLookupError):
        if sig != signal.SIGKILL:
            signal.pidfd_send_signal(pidfd, sig)
            return
        # The whole group: whatever the child started dies with it, even once the child itself is reaped.
        try:
            signal.pidfd_send_signal(pidfd, sig, None, _PIDFD_SIGNAL_PROCESS_GROUP)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _kill_group_before_linux_6_9(process, pidfd)


def _kill_group_before_linux_6_9(process: asyncio.subprocess.Process, pidfd: int) -> None:
    """SIGKILL the child's process group where pidfds cannot signal a group: by number, and only while the
    child is not reaped (running, or a zombie). Until then its number, so its group's, is taken and cannot
    have gone to another process; the window left is the instant from this look to the kill, in which the
    watcher thread would have to reap it and the kernel hand the number out again (it does so in turn, so
    only after going once round every other free number).

    A reaped child gets nothing, and its group neither: the number names its group only while a process
    remains in it, and a group that emptied may be another's by now; nothing tells the two apart by number.
    Whatever the child had started and left in its group then outlives it, unless it ends with its parent
    (PostgreSQL's backends do): the limit of these kernels."""
    if not _reaped(pidfd):
        os.killpg(process.pid, signal.SIGKILL)


def _signal_by_number(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """`signal_child` without a pidfd: the number may have gone to another process once the child is reaped."""
    with contextlib.suppress(ProcessLookupError):
        if sig == signal.SIGKILL:
            # The whole group: whatever the child started dies with it.
            os.killpg(process.pid, sig)
        elif not has_exited(process):
            os.kill(process.pid, sig)
