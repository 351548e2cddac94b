"""The terminal goes away under the launcher: closed (SIGHUP, every later write fails), or `make run | tee run.log`
with tee ended by the same Ctrl-C. The stop still happens, in order, with the exit status Ctrl-C gives (0) and no
traceback: the lines nobody reads any more are dropped (`shopmesh_platform.console`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .run_kit import REPOSITORY, left_in_session


def launcher_without_reader(data: Path, errors: Path, *args: str) -> subprocess.Popen[bytes]:
    """The launcher in a session of its own (whatever it leaves running can be found), its stdout a pipe this
    test reads and then closes, as a terminal that goes away; its stderr kept in `errors`."""
    with errors.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "shopmesh_platform.run", "--data-dir", str(data), "--free-ports", *args],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


def read_until(process: subprocess.Popen[bytes], wanted: str) -> None:
    assert process.stdout is not None
    while True:
        line = process.stdout.readline().decode()
        assert line, f"the launcher exited before it said {wanted!r}"
        if line.startswith(wanted):
            return


def assert_stopped_cleanly(process: subprocess.Popen[bytes], code: int, data: Path, errors: Path) -> None:
    said = errors.read_text()
    assert "Traceback" not in said, said
    assert code == 0, said
    assert not (data / "stack.json").exists(), "the stack file outlived the stack"
    assert not left_in_session(process.pid), "the launcher left processes running"


def end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("services", "line"),
    [
        # A wave's line: the launcher is inside Stack.start, which only the signal's cancellation stops early.
        pytest.param("catalog,inventory", "starting catalog", id="while-starting"),
        pytest.param("catalog", "shopmesh is running", id="while-running"),
    ],
)
def test_a_terminal_closing_stops_the_stack_and_exits_0(tmp_path: Path, services: str, line: str) -> None:
    data, errors = tmp_path / "data", tmp_path / "stderr.txt"
    process = launcher_without_reader(data, errors, "--http-port", "0", "--services", services)
    try:
        read_until(process, line)
        assert process.stdout is not None
        process.stdout.close()
        process.send_signal(signal.SIGHUP)
        assert_stopped_cleanly(process, process.wait(timeout=120), data, errors)
    finally:
        end(process)


@pytest.mark.timeout(300)
def test_ctrl_c_on_make_run_piped_into_tee_stops_the_stack_and_exits_0(tmp_path: Path) -> None:
    """`make run | tee run.log`: the terminal's Ctrl-C reaches the whole pipeline, one process group, and tee is
    gone before the launcher's first line about it."""
    data, log, errors, status = tmp_path / "data", tmp_path / "run.log", tmp_path / "stderr.txt", tmp_path / "status"
    launcher = (
        f"{sys.executable} -m shopmesh_platform.run --data-dir {data} --free-ports --http-port 0 "
        "--services catalog,inventory"
    )
    # The launcher's own status, not the pipeline's: tee, ended by the SIGINT, has its own (130).
    command = f"({launcher} 2>{errors}; echo $? >{status}) | tee {log} >/dev/null"
    shell = subprocess.Popen(["bash", "-c", command], cwd=REPOSITORY, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and "shopmesh is running" in log.read_text()):
            assert shell.poll() is None, "the launcher exited while starting"
            assert time.monotonic() < deadline, "the stack did not start"
            time.sleep(0.2)
        os.killpg(shell.pid, signal.SIGINT)
        shell.wait(timeout=120)
        said = errors.read_text()
        assert "Traceback" not in said, said
        assert status.read_text().strip() == "0", said
        assert not (data / "stack.json").exists(), "the stack file outlived the stack"
        assert not left_in_session(shell.pid), "the launcher left processes running"
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
