"""Ctrl-C in the local stack's tools (make shoppers, deadletters, fault) ends them with status 130 and no
traceback; the shoppers still print the tally of what they were answered until then."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .run_kit import launched, table_rows, tool_env


@contextmanager
def silent_server(unix_path: Path | None = None) -> Iterator[socket.socket]:
    """A TCP port (or, given `unix_path`, a Unix socket there) that accepts and never answers: a tool calling it
    waits inside its main for as long as its own timeout, the moment to press Ctrl-C in."""
    if unix_path is None:
        server = socket.create_server(("127.0.0.1", 0))
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(unix_path))
        server.listen()
    with server:
        server.settimeout(60)
        yield server


def _ctrl_c_as_in_a_terminal() -> None:
    # A process started with SIGINT ignored keeps it ignored, and Python then installs no KeyboardInterrupt: a
    # pytest worker may run with it ignored (the tool then waited out its 5 s and ended 0). A shell's Ctrl-C
    # reaches a tool with the default disposition, as here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tool(cwd: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def ctrl_c_once_it_called(process: subprocess.Popen[str], server: socket.socket) -> tuple[str, str]:
    """Ctrl-C once the tool connected to `server` (it runs its main by then, past its imports)."""
    connection, _ = server.accept()
    with connection:
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)


@pytest.mark.timeout(300)
async def test_ctrl_c_stops_the_shoppers_and_prints_their_tally_so_far(tmp_path: Path) -> None:
    async with launched(tmp_path / "data", "--http-port", "0") as (_, lines):
        gateway = table_rows(lines)["gateway"]["grpc"]
        shoppers = tool(
            tmp_path,
            *("-m", "shopmesh_platform.shoppers", "--target", gateway, "--shoppers", "2", "--duration", "600"),
            *("--report-every", "1"),
        )
        assert shoppers.stdout is not None
        while True:  # a progress line with answers in it: the shoppers have a tally worth keeping
            progress = shoppers.stdout.readline()
            assert progress, "the shoppers exited before they reported"
            if "none yet" not in progress:
                break
        shoppers.send_signal(signal.SIGINT)
        out, err = shoppers.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert shoppers.returncode == 130, err
    assert "stopped by SIGINT" in err
    # The summary, after the progress lines: the calls made until Ctrl-C, and the table of their answers.
    summary = [line for line in out.splitlines() if " calls in " in line]
    assert len(summary) == 1, out
    assert summary[0].endswith("by 2 shopper(s):"), out
    assert int(summary[0].split()[0]) > 0, out
    assert "OK" in out.split(summary[0], 1)[1], out


@pytest.mark.timeout(120)
def test_ctrl_c_ends_make_deadletters_with_130_and_no_traceback(tmp_path: Path) -> None:
    with silent_server() as nats_server:
        port = nats_server.getsockname()[1]
        process = tool(
            tmp_path, "-m", "shopmesh_chassis.deadletters_cli", "--nats-url", f"nats://127.0.0.1:{port}", "list"
        )
        _, err = ctrl_c_once_it_called(process, nats_server)
    assert "Traceback" not in err, err
    assert process.returncode == 130, err
    assert err.strip() == "stopped by SIGINT", err


@pytest.mark.timeout(120)
def test_ctrl_c_ends_make_fault_with_130_and_no_traceback(tmp_path: Path) -> None:
    # A sidecar's admin interface is a Unix socket (mesh.faults refuses a URL).
    socket_path = Path(tempfile.mkdtemp(prefix="ctrlc-", dir="/tmp")) / "admin.sock"  # short: a socket path's limit
    try:
        with silent_server(socket_path) as admin:
            process = tool(tmp_path, "-m", "shopmesh_platform.mesh.faults", "--show", "--admin", str(socket_path))
            _, err = ctrl_c_once_it_called(process, admin)
    finally:
        shutil.rmtree(socket_path.parent)
    assert "Traceback" not in err, err
    assert process.returncode == 130, err
