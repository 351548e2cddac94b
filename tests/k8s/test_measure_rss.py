"""k8s/measure_rss.py counts a service's memory as its container's accounting does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from .k8skit import measure_rss

# Written byte by byte, so resident (a zeroed buffer's pages may not be).
HELD_MIB = 64
CHILD = f"import time; held = b'x' * ({HELD_MIB} << 20); print(flush=True); time.sleep(120)"
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); time.sleep(120)"


def test_a_services_memory_counts_the_processes_it_started() -> None:
    """users' guessability estimate runs in a process it starts: its container is charged for both, so the
    sizing (docs/kubernetes.md#sizing) must count both."""
    # A group of their own, ended whole whatever the test finds.
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()  # the child holds its memory
        own = measure_rss.status_kib(parent.pid, "VmRSS")
        assert measure_rss.tree_kib(parent.pid, "VmRSS") >= own + HELD_MIB * 1024
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
