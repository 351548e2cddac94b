"""SIGTERM and SIGINT heard from the interpreter's first moments, before the event loop can hear them.

In a container the interpreter is PID 1 (the images' exec-form entrypoint), and the kernel drops a signal
PID 1 has no handler for. A service's imports take over a second (grpc, SQLAlchemy, OpenTelemetry, NATS):
a pod deleted then (a rollout, a scale-in, a node drain) lost the kubelet's one SIGTERM, started, served,
and sat out its termination grace period until SIGKILL. So each service's `__main__` calls `install()`
before it imports anything else, and `app.run` stops at once for a signal recorded here; once the event
loop runs, its own handlers replace these. This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import signal
from types import FrameType

_received: list[signal.Signals] = []


def install() -> None:
    """Record SIGTERM and SIGINT from now on (the first one counts) instead of their default actions."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)


def received() -> signal.Signals | None:
    """The first signal recorded since `install()`, if any."""
    return _received[0] if _received else None


def _record(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(signal.Signals(signum))
