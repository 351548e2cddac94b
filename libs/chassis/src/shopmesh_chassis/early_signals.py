"""SIGTERM and SIGINT heard from the interpreter's first moments, before the event loop can hear them.

In a container the interpreter is PID 1 (the images' exec-form entrypoint), and the kernel drops a signal
PID 1 has no handler for. A service's imports take over a second (grpc, SQLAlchemy, OpenTelemetry, NATS):
a pod deleted then (a rollout, a scale-in, a node drain) lost the kubelet's one SIGTERM, started, served,
and sat out its termination grace period until SIGKILL. So each service's `__main__` calls `install()`
before it imports anything else, and a signal then ends the process at once; once the event loop runs,
`app.run`'s own handlers replace these. This module imports nothing heavy on purpose.

At once, not once the imports are done: they take over 30 s on a busy machine (a whole `make run` starting
on two cores), and whoever sent the signal waited that long, `make run`'s Ctrl-C up to its stop timeout
(stack.DEFAULT_STOP_TIMEOUT) and then SIGKILL, a pod its grace period. Until the event loop runs, the process
has started nothing to stop or to flush (no socket, no database, no thread of its own): ending it is the
signal's default action, only with a handler PID 1 does not drop.
"""

from __future__ import annotations

import os
import signal
from types import FrameType


def install() -> None:
    """End the process at SIGTERM and SIGINT from now on, with the status a shell gives the signal (143, 130),
    as `app.run` does for one that stops a start."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)


def _exit(signum: int, frame: FrameType | None) -> None:
    # os._exit, not SystemExit: an import under way may catch BaseException, and its atexit hooks and
    # finalizers would run over modules half imported.
    os._exit(128 + signum)
