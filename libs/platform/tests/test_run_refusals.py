"""make run's refusals to start: each says the way out of its own cause, in one line."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_platform import run
from shopmesh_platform import stack as stack_module
from shopmesh_platform.ports import PortPlan
from shopmesh_platform.stack import SOCKETS_PREFIX

FREE_PORTS_ADVICE = "make run RUN_ARGS=--free-ports"
# What a cause of refusal sets up: given the data directory, what to undo afterwards, the free plan the launcher
# gets and the test's monkeypatch; returns the plan the launcher is to get.
Cause = Callable[[Path, contextlib.ExitStack, PortPlan, pytest.MonkeyPatch], PortPlan]


def sockets_folder_held(data: Path, exits: contextlib.ExitStack, plan: PortPlan, _: pytest.MonkeyPatch) -> PortPlan:
    """Another launcher on `data` still starting: it holds its sockets' folder, and serves no socket yet."""
    folder = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX, dir="/tmp"))
    exits.callback(shutil.rmtree, folder, ignore_errors=True)
    held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    exits.callback(os.close, held)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (data / "mesh").mkdir(parents=True)
    (data / "mesh" / "sockets").symlink_to(folder)
    return plan


def data_dir_held(data: Path, exits: contextlib.ExitStack, plan: PortPlan, _: pytest.MonkeyPatch) -> PortPlan:
    """Another launcher on `data` that serves: it holds the data directory's lock, its stack.json names it."""
    data.mkdir(parents=True)
    held = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    exits.callback(os.close, held)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    exits.callback(other.wait)
    exits.callback(other.kill)
    write_stack_file(LocalStack(path=stack_file(data), pid=other.pid, nats_url="nats://127.0.0.1:1"))
    return plan


def http_port_of_nats(_: Path, __: contextlib.ExitStack, plan: PortPlan, ___: pytest.MonkeyPatch) -> PortPlan:
    """`--http-port 4222`: the edge's port is NATS'."""
    return dataclasses.replace(plan, http=plan.nats)


def http_port_not_allowed(_: Path, __: contextlib.ExitStack, plan: PortPlan, patch: pytest.MonkeyPatch) -> PortPlan:
    """`--http-port 80` without the privilege, which the root these tests may run as has: the bind of that port
    fails with EACCES, as it would for anyone else."""
    refused = OSError(errno.EACCES, os.strerror(errno.EACCES))
    for module in (run, stack_module):
        real = getattr(module, "bind_error", None)
        if real is not None:
            patch.setattr(
                module, "bind_error", lambda host, port, real=real: refused if port == plan.http else real(host, port)
            )
    return plan


EDGE_WAY_OUT = "choose another --http-port (0: no HTTP/JSON edge)"


@pytest.mark.parametrize(
    ("cause", "mesh", "said", "advice"),
    [
        # --free-ports cannot help: the sockets and the lock are the data directory's, whatever the ports.
        (sockets_folder_held, True, "another launcher is using", "stop it, or choose another --data-dir"),
        (
            data_dir_held,
            False,
            "a launcher (pid ",
            "stop it (Ctrl-C in its terminal), or choose another --data-dir",
        ),
        # --free-ports refuses a --http-port: the way out is another --http-port.
        (http_port_of_nats, False, "--http-port {http} is also NATS's port", EDGE_WAY_OUT),
        (
            http_port_not_allowed,
            False,
            "cannot listen on 127.0.0.1:{http} (--http-port): Permission denied",
            EDGE_WAY_OUT,
        ),
    ],
    ids=["sockets-folder-held", "data-dir-held", "http-port-of-nats", "http-port-not-allowed"],
)
def test_each_refusal_gives_the_way_out_that_fits_its_cause(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cause: Cause,
    mesh: bool,
    said: str,
    advice: str,
) -> None:
    """Every refusal to start said "make run RUN_ARGS=--free-ports" when it was a PortInUse, whatever the cause:
    for another launcher on the same data directory, or a --http-port of another process of the
    table or one that cannot be listened on, that way out led nowhere (the socket is the data directory's;
    --free-ports refuses a --http-port). Each says the way out of its own cause now, in one line. (A taken TCP
    port, where --free-ports is the way out: test_a_taken_port_says_how_to_start_beside_it_on_free_ports.)"""
    data = tmp_path / "data"
    with contextlib.ExitStack() as exits:
        plan = cause(data, exits, run.port_plan(free=True, mesh=mesh), monkeypatch)
        monkeypatch.setattr(run, "port_plan", lambda *args, **kwargs: plan)
        services = "catalog" if mesh else "users,catalog,gateway"
        assert run.main(["--data-dir", str(data), "--services", services, *(["--mesh", "envoy"] if mesh else [])]) == 1
    error = capsys.readouterr().err
    [line] = error.splitlines()
    assert line.startswith("error: "), error
    assert said.format(http=plan.http) in line, line
    assert line.endswith(advice), line
    assert FREE_PORTS_ADVICE not in line, line
