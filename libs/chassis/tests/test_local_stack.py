"""The local stack's file (.data/stack.json) tells the tools where a running launcher serves; a file whose
launcher is gone (killed with -9, which removes nothing) is ignored, with one line saying so."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shopmesh_chassis.local_stack import (
    USING_MAKE_RUNS,
    LocalStack,
    local_address,
    process_start,
    remove_stack_file,
    running_stack,
    stack_file,
    write_stack_file,
)
from shopmesh_chassis.testing import eventually


def written(data_dir: Path, pid: int) -> LocalStack:
    stack = LocalStack(
        path=stack_file(data_dir),
        pid=pid,
        nats_url="nats://127.0.0.1:41222",
        gateway="127.0.0.1:41050",
        http_url="http://127.0.0.1:41080",
        traces_address="127.0.0.1:41317",
        traces_dir=str(data_dir / "traces"),
        sidecar_admin={"catalog": "http://127.0.0.1:41502"},
        canary_weights={"catalog": 20},
    )
    write_stack_file(stack)
    return stack


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_launchers_file_is_read_back_whole(tmp_path: Path) -> None:
    stack = written(tmp_path, os.getpid())
    err = io.StringIO()
    assert running_stack(tmp_path, err) == stack
    assert err.getvalue() == ""
    # Nothing but the file: the write goes through a temporary file, renamed over it.
    assert [path.name for path in tmp_path.iterdir()] == ["stack.json"]


def test_a_file_written_before_canary_weights_were_recorded_reads_as_none_recorded(tmp_path: Path) -> None:
    """A launcher started before the field existed still runs: its file is read, not ignored as unreadable."""
    stack = written(tmp_path, os.getpid())
    raw = json.loads(stack.path.read_text())
    del raw["canary_weights"]
    stack.path.write_text(json.dumps(raw))
    found = running_stack(tmp_path, io.StringIO())
    assert found is not None
    assert found.canary_weights == {}
    assert found.sidecar_admin == stack.sidecar_admin


def test_a_tool_takes_the_running_stacks_address_and_says_whose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = written(tmp_path / ".data", os.getpid())
    monkeypatch.chdir(tmp_path)  # the tools read the `.data` of the directory they run in
    err = io.StringIO()
    found = local_address(err, "the gateway", lambda s: s.gateway, "127.0.0.1:50050", runs_no="gateway").address
    assert found == stack.gateway
    said = f"the local stack of .data/stack.json (launcher pid {os.getpid()})"
    assert err.getvalue() == f"the gateway at {stack.gateway}: {said}\n"


def test_a_stack_without_that_address_leaves_the_default_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written(tmp_path / ".data", os.getpid())
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    found = local_address(err, "traces", lambda s: None, "default", runs_no="trace sink (why)").address
    assert found == "default"
    said = f"the local stack of .data/stack.json (launcher pid {os.getpid()})"
    assert err.getvalue() == f"{said} runs no trace sink (why); using default\n"


def test_a_default_taken_past_a_stack_without_that_address_is_told_from_one_taken_as_no_stack_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both took the default, not the running stack's: a tool whose default then does not answer asked "is `make
    run` running?" of a stack started without the gateway (`--services`), which was running. The answer says
    which, so that its hint can say the stack runs none."""
    monkeypatch.chdir(tmp_path)
    alone = local_address(io.StringIO(), "the gateway", lambda s: s.gateway, "default", runs_no="gateway")
    written(tmp_path / ".data", os.getpid())
    without = local_address(io.StringIO(), "the gateway", lambda s: None, "default", runs_no="gateway")
    with_it = local_address(io.StringIO(), "the gateway", lambda s: s.gateway, "default", runs_no="gateway")
    assert [(found.of_running_stack, found.stack_runs_without_it) for found in (alone, without, with_it)] == [
        (False, False),
        (False, True),
        (True, False),
    ]


def test_without_a_stack_a_tool_takes_the_default_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    found = local_address(err, "NATS", lambda s: s.nats_url, "nats://default", runs_no="NATS").address
    assert found == "nats://default"
    assert err.getvalue() == ""


def test_without_a_stack_a_tool_that_always_says_its_address_says_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    found = local_address(err, "the edge", lambda s: s.http_url, "http://default", runs_no="edge", without="make run's")
    assert found.address == "http://default"
    # Whose default it is, and why it was taken: a default that then does not answer reads as no stack running.
    said = "the edge at http://default: make run's, as no local stack runs: no launcher's .data/stack.json is here\n"
    assert err.getvalue() == said


def test_a_default_taken_past_an_ignored_file_does_not_say_there_is_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher killed with -9 leaves its file: the line that says whose default a tool took must not send the
    user looking for a file that is there, but name it as the ignored one."""
    pid = exited_pid()
    written(tmp_path / ".data", pid)
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    found = local_address(err, "the edge", lambda s: s.http_url, "http://default", runs_no="edge", without="make run's")
    assert (found.address, found.file_ignored) == ("http://default", True)
    assert err.getvalue().splitlines() == [
        f"ignoring .data/stack.json: its launcher (pid {pid}) is gone; {USING_MAKE_RUNS}",
        "the edge at http://default: make run's, as no local stack runs: .data/stack.json here names no launcher of "
        "this directory that still runs (ignored: see above)",
    ]


def test_no_file_is_no_stack_and_says_nothing(tmp_path: Path) -> None:
    err = io.StringIO()
    assert running_stack(tmp_path, err) is None
    assert err.getvalue() == ""


def test_a_file_whose_launcher_is_gone_is_ignored_in_one_line(tmp_path: Path) -> None:
    pid = exited_pid()
    written(tmp_path, pid)
    err = io.StringIO()
    assert running_stack(tmp_path, err) is None
    path = tmp_path / "stack.json"
    assert err.getvalue() == f"ignoring {path}: its launcher (pid {pid}) is gone; {USING_MAKE_RUNS}\n"


async def test_a_launcher_that_exited_unreaped_is_gone_too(tmp_path: Path) -> None:
    child = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-c", "pass"])
    try:
        # Exited, not waited for: a zombie, which a signal 0 still finds.
        stat = Path(f"/proc/{child.pid}/stat")
        await eventually(lambda: stat.read_text().rpartition(")")[2].split()[0] == "Z", "the child exited")
        written(tmp_path, child.pid)
        assert running_stack(tmp_path, io.StringIO()) is None
    finally:
        child.wait()


def test_a_pid_reused_by_another_process_since_is_not_the_launcher(tmp_path: Path) -> None:
    """The launcher was killed and its pid went to some other process: that process started later."""
    written(tmp_path, os.getpid())
    path = stack_file(tmp_path)
    raw = json.loads(path.read_text())
    started = process_start(os.getpid())
    assert started is not None
    path.write_text(json.dumps({**raw, "started": started - 1}))
    err = io.StringIO()
    assert running_stack(tmp_path, err) is None
    assert "is gone" in err.getvalue()


def test_a_file_that_is_no_stack_file_is_ignored_in_one_line(tmp_path: Path) -> None:
    stack_file(tmp_path).write_text('{"pid": ')
    err = io.StringIO()
    assert running_stack(tmp_path, err) is None
    [line] = err.getvalue().splitlines()
    assert line.startswith(f"ignoring {tmp_path / 'stack.json'}: not a stack file the launcher wrote"), line


def test_a_launcher_removes_only_its_own_file(tmp_path: Path) -> None:
    written(tmp_path, os.getpid())
    remove_stack_file(stack_file(tmp_path), os.getpid() + 1)
    assert stack_file(tmp_path).exists()
    remove_stack_file(stack_file(tmp_path), os.getpid())
    assert not stack_file(tmp_path).exists()


def test_a_copy_of_a_running_launchers_file_in_another_directory_is_not_that_directorys_stack(tmp_path: Path) -> None:
    """A checkout copied with its .data while its stack ran: the copy's file names a launcher that runs, but for
    the other directory; a tool in the copy would have faulted, replayed or loaded that stack instead."""
    original, copy = tmp_path / "shop" / ".data", tmp_path / "copy" / ".data"
    written(original, os.getpid())
    shutil.copytree(original, copy)
    assert running_stack(original, io.StringIO()) is not None
    err = io.StringIO()
    assert running_stack(copy, err) is None
    assert err.getvalue() == (
        f"ignoring {copy / 'stack.json'}: it was written for {original}, not this directory; {USING_MAKE_RUNS}\n"
    )


def test_the_same_directory_by_another_path_is_the_same_stack(tmp_path: Path) -> None:
    """A symbolic link to the data directory, or a relative path to it (the tools read `.data`), finds it."""
    data = tmp_path / "data"
    written(data, os.getpid())
    (tmp_path / "link").symlink_to(data)
    for found in (running_stack(tmp_path / "link", io.StringIO()), running_stack(Path(os.path.relpath(data)))):
        assert found is not None
        assert found.pid == os.getpid()
