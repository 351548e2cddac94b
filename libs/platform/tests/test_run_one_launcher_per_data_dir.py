"""One launcher per data directory, for its whole life: it holds the directory's lock from before --reset and
before anything starts, so a second launcher (on free ports, which no port stops) is refused while the first still
starts, not only once its stack.json is written; and a --data-dir that cannot be a directory is refused in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_platform import run

from .run_kit import REPOSITORY, read_until, read_until_ready, start_launcher, stop_launcher

HELD_WAY_OUT = "stop it (Ctrl-C in its terminal), or choose another --data-dir"
# A process standing for a launcher: it holds the data directory's lock as one does, until killed.
HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


async def refused(data: Path, *args: str) -> list[str]:
    """A launcher's whole output on `data`, which it is to leave with status 1."""
    process = await start_launcher(data, "--services", "", "--http-port", "0", *args)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 90)
    finally:
        await stop_launcher(process)
    assert process.returncode == 1, out.decode()
    return out.decode().splitlines()


@pytest.mark.timeout(400)
async def test_a_second_launcher_is_refused_while_the_first_still_starts_with_reset_or_without(tmp_path: Path) -> None:
    """stack.json, the only sign of a launcher, is written once the whole stack serves (tens of seconds): a
    second launcher started meanwhile (--free-ports, as the PortInUse error suggests) passed, and with --reset
    deleted the first's NATS store under it, or without ran beside it on the same store and SQLite files. Both
    are refused now, the first one starts on as if nothing happened, and its data is untouched."""
    data = tmp_path / "data"
    first = await start_launcher(data, "--http-port", "0")
    assert first.stdout is not None
    lines: list[str] = []
    try:
        # NATS runs with its store in the data directory; the services' waves are starting.
        wave_1 = read_until(first.stdout, lambda line: line.startswith("starting users"), lines, "wave 1")
        await asyncio.wait_for(wave_1, 120)
        stored = sorted(path.name for path in data.iterdir())
        assert "nats" in stored
        for args in (("--reset",), ("--services", "catalog")):
            *_, said = await refused(data, *args)
            assert said.startswith("error: a launcher ("), (args, said)
            assert said.endswith(f") still uses {data}: {HELD_WAY_OUT}"), (args, said)
        assert {"nats", *stored} <= {path.name for path in data.iterdir()}
        await asyncio.wait_for(read_until_ready(first.stdout, lines), 180)
        assert first.returncode is None
    finally:
        await stop_launcher(first)


async def test_a_launcher_still_starting_is_named_as_such_and_one_serving_by_its_pid(tmp_path: Path) -> None:
    """The refusal names the other launcher: by its stack.json's pid once it wrote one, else as starting. Either
    way nothing of the data directory is touched, --reset included."""
    data = tmp_path / ".data"
    data.mkdir()
    (data / "catalog.db").write_bytes(b"the running stack's")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(data), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        said = await refused(data, "--reset")
        assert said[-1] == f"error: a launcher (starting, no stack.json yet) still uses {data}: {HELD_WAY_OUT}"
        write_stack_file(LocalStack(path=stack_file(data), pid=holder.pid, nats_url="nats://127.0.0.1:1"))
        said = await refused(data, "--reset")
        assert said[-1] == f"error: a launcher (pid {holder.pid}) still uses {data}: {HELD_WAY_OUT}"
        assert sorted(path.name for path in data.iterdir()) == ["catalog.db", "stack.json"]
        assert (data / "catalog.db").read_bytes() == b"the running stack's"
    finally:
        holder.kill()
        await holder.wait()


async def test_the_lock_goes_with_its_launcher_and_reset_keeps_the_directory_it_holds(tmp_path: Path) -> None:
    """A launcher killed with -9 leaves its lock behind no more than its children: the next one starts, and its
    --reset empties the directory rather than removing it (a new directory of that name would not be locked)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.db").write_bytes(b"")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(data), stdout=asyncio.subprocess.PIPE
    )
    assert holder.stdout is not None
    assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
    holder.kill()
    await holder.wait()
    process = await start_launcher(data, "--services", "", "--http-port", "0", "--reset")
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 90)
        assert f"--reset: deleted {data} (the SQLite databases of catalog)" in lines
        assert not (data / "catalog.db").exists()
        *_, said = await refused(data)
        assert said == f"error: a launcher (pid {process.pid}) still uses {data}: {HELD_WAY_OUT}"
    finally:
        await stop_launcher(process)


@pytest.mark.parametrize("which", ["a file", "under a file", "under /proc"])
def test_a_data_dir_that_cannot_be_a_directory_is_refused_in_one_line(tmp_path: Path, which: str) -> None:
    """Its mkdir's OSError ended the launcher with a traceback; it is a one-line error naming the directory and
    the OS's reason now, like every other refusal."""
    (tmp_path / "notes").write_text("mine")
    data, said = {
        "a file": (
            tmp_path / "notes",
            f"cannot use {tmp_path / 'notes'} as the data directory: it exists and is not a",
        ),
        "under a file": (
            tmp_path / "notes" / "data",
            f"cannot make the data directory {tmp_path / 'notes' / 'data'}: ",
        ),
        "under /proc": (Path("/proc/shopmesh-data"), "cannot make the data directory /proc/shopmesh-data: "),
    }[which]
    ran = subprocess.run(
        [sys.executable, "-m", "shopmesh_platform.run", "--data-dir", str(data), "--free-ports", "--services", ""],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 1, ran.stderr
    [line] = ran.stderr.splitlines()
    assert line.startswith(f"error: {said}"), line
    assert (tmp_path / "notes").read_text() == "mine"


def test_reset_empties_a_data_directory_it_holds_or_says_there_was_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    (data / "catalog.db").write_bytes(b"")
    assert run.reset_data_dir(data) == f"--reset: deleted {data} (the SQLite databases of catalog; nats)"
    assert list(data.iterdir()) == []
    assert run.reset_data_dir(data) == f"--reset: {data} is empty; nothing to delete"
