"""A signal during a service's imports ends the process there (early_signals), not once the imports are done."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# A service's first lines, then imports that never end: what a start on a busy machine is like, where the
# imports take over 30 s. Like real imports they keep coming back to the interpreter (short sleeps), where
# CPython runs a Python signal handler. Not one blocking read: a signal that lands between the interpreter's
# last check and the read() system call leaves the read blocked with the handler not run, a race the test
# lost once under load that real imports, which never block for long, do not have.
_IMPORTING = """
import time
from shopmesh_chassis import early_signals
early_signals.install()
print("importing", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_signal_during_the_imports_ends_the_process_without_waiting_for_them(sig: signal.Signals) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _IMPORTING],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            assert process.stdout.readline() == "importing\n"
            process.send_signal(sig)
            try:
                # The imports never end: only a process that the signal ended exits within this bound.
                status = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{sig.name} during the imports waited for them to end: `make run`'s Ctrl-C waited up to its "
                    "stop timeout for SIGKILL, a pod its grace period"
                ) from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
        # The status a shell gives the signal, as app.run's for a start it stopped; no traceback, nothing after.
        assert status == 128 + sig
        assert process.stdout.read() == ""
        assert process.stderr.read() == ""
