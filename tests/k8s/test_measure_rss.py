"""k8s/measure_rss.py counts a service's memory as its container's accounting does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .k8skit import measure_rss

# Written byte by byte, so resident (a zeroed buffer's pages may not be).
HELD_MIB = 64
CHILD = f"import time; held = b'x' * ({HELD_MIB} << 20); print(flush=True); time.sleep(120)"
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); time.sleep(120)"
# A second thread besides the one that starts the child, as a service's gRPC and database threads are.
THREAD = "import threading, time; threading.Thread(target=time.sleep, args=(120,), daemon=True).start(); "
THREADED_PARENT = THREAD + PARENT


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


@pytest.mark.parametrize("gone", [FileNotFoundError, ProcessLookupError])
def test_a_thread_ending_while_its_children_are_read_leaves_the_rest_counted(
    monkeypatch: pytest.MonkeyPatch, gone: type[OSError]
) -> None:
    """A service's threads come and go; one that ended between the listing of a process' threads and the
    reading of its children must cost only its own (none), not the whole service's figure."""
    parent = subprocess.Popen([sys.executable, "-c", THREADED_PARENT], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()  # the child holds its memory, the extra thread runs
        threads = list(Path(f"/proc/{parent.pid}/task").iterdir())
        assert len(threads) >= 2
        real_read_text = Path.read_text

        def read_text(path: Path, *args: object, **kwargs: object) -> str:
            # The extra thread, not the main one that started the child, ends just before its list is read.
            task = path.parent
            if path.name == "children" and task.parent.parent.name == str(parent.pid) != task.name:
                raise gone
            return real_read_text(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", read_text)
        own = measure_rss.status_kib(parent.pid, "VmRSS")
        assert measure_rss.tree_kib(parent.pid, "VmRSS") >= own + HELD_MIB * 1024
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
