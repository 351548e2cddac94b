"""What the launcher tests (test_run_*.py) share: `python -m shopmesh_platform.run` started, read, signalled
and stopped as a developer runs it, and the processes it leaves behind found."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.postgres import postgres_bin
from shopmesh_platform import run
from shopmesh_platform.mesh.layout import sidecar_name
from shopmesh_platform.topology import SERVICES

REPOSITORY = Path(__file__).resolve().parents[3]


def table_rows(lines: list[str]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        cells = line.split()
        names = ("nats", "smtp", "traces", *SERVICES, *(sidecar_name(name) for name in SERVICES))
        if line.startswith("  ") and cells and cells[0] in names:
            rows[cells[0]] = {"grpc": cells[1], "metrics": cells[2], "state": " ".join(cells[3:-1]), "pid": cells[-1]}
    return rows


def gone(pid: int) -> bool:
    """No process left in the group; an orphan that exited counts even before init reaps it."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    # Reaped between the two looks: the file is gone, or reading it fails with ESRCH; the next look says.
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return "State:\tZ" in status.read_text()
    return False


async def read_until_ready(stream: asyncio.StreamReader, lines: list[str]) -> None:
    await read_until(stream, lambda line: line == run.READY_LINE, lines, "it was ready")


async def read_until(stream: asyncio.StreamReader, done: Callable[[str], bool], lines: list[str], what: str) -> None:
    """Read the launcher's output into `lines` up to the first line `done` takes."""
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"run exited before {what}:\n" + "\n".join(lines))
        lines.append(raw.decode(errors="replace").rstrip("\n"))
        if done(lines[-1]):
            return


async def start_launcher(data_dir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shopmesh_platform.run", "--data-dir", str(data_dir), "--free-ports", *args),
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop_launcher(process: asyncio.subprocess.Process) -> None:
    """When a test fails half-way: the launcher stops its children on SIGTERM."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def launched(data_dir: Path, *args: str, ready_within: float = 90) -> AsyncIterator[tuple[Process, list[str]]]:
    """The launcher, once it said it is ready (its output so far in the list); stopped with SIGTERM on the
    way out if the test did not stop it itself."""
    process = await start_launcher(data_dir, *args)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), ready_within)
        yield process, lines
    finally:
        await stop_launcher(process)


async def ctrl_c(process: Process) -> str:
    """Ctrl-C, as in a terminal: the launcher must stop everything and exit 0; returns the rest of its output."""
    process.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, rest.decode()
    return rest.decode()


async def ctrl_c_until_it_stops(process: Process, lines: list[str]) -> None:
    """Ctrl-C, once: returns once the launcher says it stops (its lines kept in `lines`), to be signalled again."""
    assert process.stdout is not None
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(
        read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
    )


async def second_ctrl_c_killing(process: Process, postmaster: int) -> bytes:
    """The second Ctrl-C, while the stop waits at the held PostgreSQL server `postmaster`: it must kill the server;
    returns the rest of the launcher's output once it exited."""
    process.send_signal(signal.SIGINT)
    await eventually(lambda: gone(postmaster), "the held PostgreSQL server killed by the second Ctrl-C")
    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    return rest


def tool_env() -> dict[str, str]:
    """The environment `make` runs the tools in: no NATS_URL (`make deadletters` unsets it), nor a Secret's."""
    return {name: value for name, value in os.environ.items() if name not in ("NATS_URL", "SECRETS_DIR")}


async def run_tool(cwd: Path, *argv: str) -> tuple[int, str, str]:
    """One of the local stack's tools as `make` runs it, from the directory whose .data the launcher uses."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=cwd, env=tool_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop_left_behind(launcher: int, port: int) -> None:
    """After a failed test: the throwaway server the killed `launcher` left behind, still on `port`, and its folder
    (named after the launcher: never another launcher's, nor the `postgres` fixture's of this or another session,
    whose folders start shopmesh-pg-). A server that stopped leaves its folder for the next launcher to remove."""
    if not accepting(port):
        return
    for data_dir in Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{launcher}-*"):
        options = data_dir / "postmaster.opts"
        if options.exists() and f'"-p" "{port}"' in options.read_text():
            pg_ctl = [str(postgres_bin() / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]
            subprocess.run(["runuser", "-u", "postgres", "--", *pg_ctl], check=False, capture_output=True)
            shutil.rmtree(data_dir, ignore_errors=True)


def database_port(lines: list[str]) -> int:
    [said] = [line for line in lines if line.startswith("Databases: ")]
    return int(said.split("127.0.0.1:")[1].split()[0])


def database_passfile(lines: list[str]) -> Path:
    """The file with the throwaway server's superuser password, as the banner's psql command names it."""
    [said] = [line for line in lines if line.startswith("  PGPASSFILE=")]
    return Path(shlex.split(said)[0].removeprefix("PGPASSFILE="))


def throwaway_folders(launcher: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"shopmesh-run-pg-{launcher}-*"))


def kept_folders(launcher: int) -> list[Path]:
    """The throwaway server's folder, kept by a launcher whose stack crashed."""
    return list(Path(tempfile.gettempdir()).glob(f"shopmesh-kept-pg-{launcher}-*"))


def remove_kept_folder(launcher: int) -> None:
    """The throwaway server's folder that `launcher`, its stack stopped on a crash, kept: there, and then gone."""
    [folder] = kept_folders(launcher)
    shutil.rmtree(folder)


def postmaster_of(launcher: int) -> int:
    """The process id of the launcher's throwaway PostgreSQL server, from the pid file it keeps in its folder."""
    [folder] = throwaway_folders(launcher)
    return int((folder / "postmaster.pid").read_text().split()[0])


# The launcher, with PostgreSQL's fast shutdown given an hour before the SIGKILL: a test that finds the server
# gone meanwhile proves something else killed it, whatever the machine's speed.
PATIENT_LAUNCHER = (
    "import sys\n"
    "from shopmesh_platform import run\n"
    "run._POSTGRES_STOP_SECONDS = 3600.0\n"
    "sys.exit(run.main(sys.argv[1:]))\n"
)


def pending_signals(pid: int) -> set[signal.Signals]:
    """The signals sent to the process that it has not taken yet (held by SIGSTOP, say)."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return {sig for sig in signal.Signals if pending & (1 << (sig - 1))}


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _living(pid: int, started: str) -> bool:
    """Whether that process (`started`: its start time, which tells it from a later one given the number) runs;
    an orphan that exited counts as gone even before init reaps it."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def descendants(root: int) -> dict[int, str]:
    """Every living descendant of `root`, with its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, str] = {}
    waiting = [root]
    while waiting:
        for pid, started in children.get(waiting.pop(), []):
            found[pid] = started
            waiting.append(pid)
    return found


def left_in_session(session: int) -> list[int]:
    """Living processes of `session` (the launcher's own, started with start_new_session): what the launcher
    started and did not stop, whenever it started it; PostgreSQL's backends, which leave it, die with their
    server."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None
        if fields[0] != "Z" and int(fields[3]) == session
    ]


async def launcher(data_dir: Path, *args: str, script: str | None = None) -> Process:
    """The launcher in a session of its own, so that whatever it leaves running can be found."""
    command = ("-m", "shopmesh_platform.run") if script is None else ("-c", script)
    return await asyncio.create_subprocess_exec(
        *(sys.executable, *command, "--data-dir", str(data_dir), "--free-ports", *args),
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def assert_nothing_left(process: Process, started: dict[int, str]) -> None:
    """No process the launcher had started when it was signalled (`started`), nor any of its session, runs."""
    await eventually(
        lambda: not [pid for pid, start in started.items() if _living(pid, start)] and not left_in_session(process.pid),
        "every process the launcher started gone",
    )
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"


def said_by(name: str) -> Callable[[str], bool]:
    """An output line of the launcher's child `name` (names are padded to the longest one)."""
    return lambda line: " | " in line and line.split(" | ", 1)[0].strip() == name
