"""Ctrl-C (once or twice) or SIGTERM before the stack is ready, in each phase of the start, and while a failed
start is undone: everything started stops, in one line, with the right exit code and no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shopmesh_chassis.testing import eventually

from .run_kit import (
    PATIENT_LAUNCHER,
    _stat,
    assert_nothing_left,
    ctrl_c,
    ctrl_c_until_it_stops,
    descendants,
    launched,
    launcher,
    pending_signals,
    postmaster_of,
    read_until,
    said_by,
    second_ctrl_c_killing,
    start_launcher,
    stop_launcher,
    throwaway_folders,
)


def commands(processes: dict[int, str]) -> list[str]:
    names = []
    for pid in processes:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def assert_stopped_in_one_line(output: list[str]) -> None:
    said = "\n".join(output)
    assert "Traceback" not in said, said
    assert "error:" not in said, said
    assert output[-1].startswith("stopped while starting"), said


async def test_a_launcher_signalled_while_postgres_starts_stops_it_and_exits_cleanly(tmp_path: Path) -> None:
    process = await start_launcher(tmp_path / "data", "--services", "", "--postgres")
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first.decode().startswith("starting a throwaway PostgreSQL server")
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
        assert await process.wait() == 0, output
    finally:
        await stop_launcher(process)
    assert "stopped while starting PostgreSQL" in output


# The launcher with two seams: PostgreSQL's fast shutdown given an hour (PATIENT_LAUNCHER's), and a server it
# never finds accepting connections, which holds it in PostgreSQL's start for as long as a test needs.
NEVER_READY_POSTGRES_LAUNCHER = (
    "import asyncio, sys\n"
    "from shopmesh_platform import run\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "async def never_accepting(server, process, output):\n"
    "    print(f'PostgreSQL spawned as {process.pid}', flush=True)\n"
    "    await asyncio.Event().wait()\n"
    "run._until_accepting = never_accepting\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


# NATS held between its spawn and its readiness: with no service to start, the stack was ready within
# milliseconds of "starting nats", and on a loaded machine the Ctrl-C sent on that line came after the start.
NATS_HELD_LAUNCHER = (
    "import asyncio, sys\n"
    "from shopmesh_platform import run, stack\n"
    "ready = stack.Stack._wait_ready\n"
    "async def held(self, child, timeout):\n"
    "    if child.name == 'nats':\n"
    "        print('nats spawned, held before it is ready', flush=True)\n"
    "        await asyncio.Event().wait()\n"
    "    await ready(self, child, timeout)\n"
    "stack.Stack._wait_ready = held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


START_PHASES = {
    # Between its spawn and its first accepted connection (the seam holds it there).
    "PostgreSQL's": (("--services", "", "--postgres"), lambda line: line.startswith("PostgreSQL spawned as ")),
    "NATS'": (("--services", ""), lambda line: line.startswith("nats spawned, held")),
    "a service's": (("--services", "catalog"), said_by("catalog")),
    # Envoy says nothing until it stops: the sink's first line, then Envoy among the launcher's children.
    "a sidecar's (Envoy)": (("--services", "catalog", "--mesh", "envoy"), said_by("traces")),
    "a service's on PostgreSQL": (("--services", "catalog", "--postgres"), said_by("catalog")),
}


@pytest.mark.parametrize("phase", START_PHASES)
async def test_ctrl_c_during_the_start_stops_what_started_in_one_line_and_the_next_start_works(
    tmp_path: Path, phase: str
) -> None:
    """Ctrl-C before the stack is ready is a Ctrl-C as after: everything started is stopped, exit 0, no traceback."""
    args, reached = START_PHASES[phase]
    args = (*args, "--http-port", "0")
    script = {"PostgreSQL's": NEVER_READY_POSTGRES_LAUNCHER, "NATS'": NATS_HELD_LAUNCHER}.get(phase)
    process = await launcher(tmp_path / "data", *args, script=script)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stdout, reached, lines, f"{phase} start"), 120)
        if "--mesh" in args:
            await eventually(lambda: "envoy" in commands(descendants(process.pid)), "the sidecar's Envoy spawned")
        started = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    assert process.returncode == 0, "\n".join(output)
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, started)
    # Nothing locked or half-written stays behind on the data folder: the next start on it works.
    async with launched(tmp_path / "data", *args, ready_within=120) as (again, _):
        assert "stopped cleanly" in await ctrl_c(again)


@pytest.mark.parametrize("during", ["PostgreSQL's start", "the stack's start"])
async def test_a_second_ctrl_c_during_an_interrupted_start_kills_the_throwaway_postgresql_without_a_traceback(
    tmp_path: Path, during: str
) -> None:
    """Ctrl-C twice before the stack is ready, the server held so that its fast shutdown never ends: the second
    kills it, as after the start; no KeyboardInterrupt from the stop of the server."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    script = NEVER_READY_POSTGRES_LAUNCHER if during == "PostgreSQL's start" else PATIENT_LAUNCHER
    process = await launcher(tmp_path / "data", *args, script=script)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        phase = "PostgreSQL spawned as " if during == "PostgreSQL's start" else "starting nats"
        await asyncio.wait_for(read_until(process.stdout, lambda line: line.startswith(phase), lines, during), 120)
        # Spawned, the server may not have written its pid file yet; its process id is the spawned one.
        spawned = lines[-1].removeprefix("PostgreSQL spawned as ")
        postmaster = int(spawned) if spawned.isdigit() else postmaster_of(process.pid)
        started = descendants(process.pid)
        try:
            # A server held (SIGSTOP) cannot shut down, fast or not: only a SIGKILL ends it. Held before the
            # SIGINT comes: pending together, the lower-numbered SIGINT is taken first, and ends a server that
            # is still setpriv on its way to exec it.
            os.kill(postmaster, signal.SIGSTOP)
            await eventually(lambda: (_stat(postmaster) or ["?"])[0] == "T", "the server held")
            process.send_signal(signal.SIGINT)
            await eventually(
                lambda: signal.SIGINT in pending_signals(postmaster), "the stop's SIGINT waiting at the server"
            )
            rest = await second_ctrl_c_killing(process, postmaster)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGCONT)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    said = "\n".join(output)
    assert process.returncode == 0, said
    killed = "PostgreSQL" if during == "PostgreSQL's start" else "what still runs of the stack and PostgreSQL"
    assert f"SIGINT again: killing {killed} now" in said, said
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, started)


# The launcher with initdb held until the file $SHOPMESH_TEST_RELEASE exists: PostgreSQL's start stays in
# initdb, where neither the server nor the stack exists yet, for as long as the test needs.
HELD_INITDB_LAUNCHER = (
    "import contextlib, os, sys, time\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "initialized_server = run.initialized_server\n"
    "@contextlib.contextmanager\n"
    "def held_initialized_server(prefix):\n"
    "    print('initdb held', flush=True)\n"
    "    while not Path(os.environ['SHOPMESH_TEST_RELEASE']).exists():\n"
    "        time.sleep(0.05)\n"
    "    with initialized_server(prefix) as server:\n"
    "        yield server\n"
    "run.initialized_server = held_initialized_server\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


async def test_a_second_ctrl_c_during_initdb_says_there_is_nothing_to_kill_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice while PostgreSQL's initdb runs: no server and no stack exist, so the second says it has
    nothing to kill, not that it kills everything; initdb's folder is removed once it ends, exit 0."""
    release = tmp_path / "release"
    monkeypatch.setenv("SHOPMESH_TEST_RELEASE", str(release))
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=HELD_INITDB_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stdout, lambda line: line == "initdb held", lines, "initdb"), 60)
        try:
            await ctrl_c_until_it_stops(process, lines)
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(
                read_until(process.stdout, lambda line: "SIGINT again" in line, lines, "the second Ctrl-C"), 60
            )
        finally:
            release.touch()
        rest, _ = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await stop_launcher(process)
    output = [*lines, *rest.decode(errors="replace").splitlines()]
    said = "\n".join(output)
    assert process.returncode == 0, said
    assert "SIGINT again: nothing to kill yet (PostgreSQL's initdb prepares its folder" in said, said
    assert "killing" not in said, said
    assert_stopped_in_one_line(output)
    await assert_nothing_left(process, {})


@contextlib.asynccontextmanager
async def held_through_ctrl_c(
    process: Process, lines: list[str], held: int, pending: signal.Signals, waiting: str
) -> AsyncIterator[None]:
    """Holds `held` (SIGSTOP), so that a failed start's undo waits at it, until the undo has sent it `pending`;
    then Ctrl-C to the launcher, until it says it stops. The body runs with `held` still held; it goes on after."""
    assert process.stdout is not None
    try:
        os.kill(held, signal.SIGSTOP)
        await eventually(lambda: pending in pending_signals(held), waiting)
        await ctrl_c_until_it_stops(process, lines)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(held, signal.SIGCONT)


async def assert_start_failure_kept(process: Process, said: list[str], started: dict[int, str], error: str) -> None:
    """A Ctrl-C while a failed start was undone left the start's error: exit 1, its line, no "stopped while
    starting", no traceback; and nothing of what it had started runs."""
    output = "\n".join(said)
    assert process.returncode == 1, output
    assert f"error: {error}" in output, output
    assert "stopped while starting" not in output, output
    assert "Traceback" not in output, output
    await assert_nothing_left(process, started)


# The launcher with a PostgreSQL server that fails its start once the test holds it (SIGSTOP): the start's
# undoing then waits at the held server's fast shutdown (given an hour), for as long as the test needs.
FAILING_POSTGRES_LAUNCHER = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "from shopmesh_platform.processes import StackError\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "async def failing_once_held(server, process, output):\n"
    "    print(f'PostgreSQL spawned as {process.pid}', flush=True)\n"
    "    stat = Path(f'/proc/{process.pid}/stat')\n"
    "    while stat.read_text().rsplit(')', 1)[1].split()[0] != 'T':\n"
    "        await asyncio.sleep(0.05)\n"
    "    raise StackError('PostgreSQL refused to start (held by the test)')\n"
    "run._until_accepting = failing_once_held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


async def test_ctrl_c_while_a_failed_start_is_undone_still_exits_1_with_the_error_once_postgresql_stopped(
    tmp_path: Path,
) -> None:
    """A Ctrl-C that comes after the start failed, while PostgreSQL shuts down, is no Ctrl-C of a start: the
    start's error and exit 1, not "stopped while starting" and 0; and the server's folder is removed only once
    the server is gone."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=FAILING_POSTGRES_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        spawned = lambda line: line.startswith("PostgreSQL spawned as ")  # noqa: E731
        await asyncio.wait_for(read_until(process.stdout, spawned, lines, "PostgreSQL's start"), 120)
        postmaster = int(lines[-1].removeprefix("PostgreSQL spawned as "))
        started = descendants(process.pid)
        # Held, the server fails its start; the stop's SIGINT that follows waits at it.
        waiting = "the failed start's stop waiting at the server"
        async with held_through_ctrl_c(process, lines, postmaster, signal.SIGINT, waiting):
            folders = throwaway_folders(process.pid)
            assert folders, "the folder was removed under a server still shutting down"
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    await assert_start_failure_kept(
        process,
        [*lines, *rest.decode(errors="replace").splitlines()],
        started,
        "PostgreSQL refused to start (held by the test)",
    )


# The launcher with a stack whose start fails once the test holds NATS (SIGSTOP), at the sink's turn: the start's
# undoing then waits at the held NATS (its stop given an hour), for as long as the test needs.
FAILING_STACK_LAUNCHER = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from shopmesh_platform import run\n"
    "from shopmesh_platform.processes import StackError\n"
    "from shopmesh_platform.stack import NATS, Stack\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "start_child = Stack._start_child\n"
    "async def failing_once_nats_held(self, child):\n"
    "    if child.name == NATS:\n"
    "        return await start_child(self, child)\n"
    "    self.stop_timeout = 3600.0\n"
    "    nats = self.pid(NATS)\n"
    "    print(f'NATS runs as {nats}', flush=True)\n"
    "    stat = Path(f'/proc/{nats}/stat')\n"
    "    while stat.read_text().rsplit(')', 1)[1].split()[0] != 'T':\n"
    "        await asyncio.sleep(0.05)\n"
    "    raise StackError('the sink refused to start (NATS held by the test)')\n"
    "Stack._start_child = failing_once_nats_held\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("postgres", [False, True], ids=["on SQLite", "on PostgreSQL"])
async def test_ctrl_c_while_a_failed_stack_start_is_undone_still_exits_1_with_the_error(
    tmp_path: Path, postgres: bool
) -> None:
    """A Ctrl-C that comes after the stack's start failed, while what it started is stopped, is no Ctrl-C of a
    start: the start's error and exit 1, not "stopped while starting the stack" and 0; nothing is left."""
    args = ("--services", "", "--http-port", "0", *(["--postgres"] if postgres else []))
    process = await launcher(tmp_path / "data", *args, script=FAILING_STACK_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(
            read_until(process.stdout, lambda line: line.startswith("NATS runs as "), lines, "NATS' start"), 120
        )
        nats = int(lines[-1].removeprefix("NATS runs as "))
        started = descendants(process.pid)
        # Held, NATS fails the start; the undo's SIGTERM that follows waits at it.
        async with held_through_ctrl_c(process, lines, nats, signal.SIGTERM, "the failed start's stop waiting at NATS"):
            pass
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_launcher(process)
    await assert_start_failure_kept(
        process,
        [*lines, *rest.decode(errors="replace").splitlines()],
        started,
        "the sink refused to start (NATS held by the test)",
    )
