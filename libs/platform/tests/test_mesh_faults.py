"""The fault command's arguments and its runtime values, and what it says when no sidecar answers (the
faults themselves, on real sidecars: tests/mesh)."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from shopmesh_chassis.local_stack import USING_MAKE_RUNS, LocalStack, stack_file, write_stack_file
from shopmesh_platform.mesh import faults
from shopmesh_platform.mesh.faults import (
    ABORT_PERCENT,
    ABORT_STATUS,
    DELAY_MS,
    DELAY_PERCENT,
    Fault,
    duration_ms,
    local_admin_socket,
    main,
)


def test_a_fault_sets_its_runtime_keys_and_clears_the_others() -> None:
    delay = Fault(delay_ms=250, percent=30).runtime()
    assert delay == {DELAY_PERCENT: "30", DELAY_MS: "250", ABORT_PERCENT: "", ABORT_STATUS: ""}
    abort = Fault(abort=grpc.StatusCode.RESOURCE_EXHAUSTED).runtime()
    assert abort == {DELAY_PERCENT: "", DELAY_MS: "", ABORT_PERCENT: "100", ABORT_STATUS: "8"}
    assert set(Fault().runtime().values()) == {""}
    both = Fault(delay_ms=10, abort=grpc.StatusCode.UNAVAILABLE, percent=5)
    assert Fault.from_runtime(both.runtime()) == both
    assert str(both) == "delay 10 ms, abort UNAVAILABLE on 5 % of calls"


def test_durations_read_as_people_write_them() -> None:
    assert duration_ms("3s") == 3000
    assert duration_ms("1.5s") == 1500
    assert duration_ms("250ms") == 250
    for bad in ("3", "0s", "-1s", "1m"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_ms(bad)


def test_a_delay_longer_than_an_hour_is_refused_saying_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """A delay no caller would wait out is a typo (3000s for 3000ms), not a fault to set."""
    assert duration_ms("3600s") == 3600 * 1000
    for absurd in ("3601s", "99999999999999s"):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 1 hour"):
            duration_ms(absurd)
    with pytest.raises(SystemExit) as refused:
        main(["catalog", "--delay", "100000s", "--admin", "nobody.sock"], io.StringIO(), io.StringIO())
    assert refused.value.code == 2
    # argparse's own error line, on stderr.
    assert "argument --delay: '100000s': want a delay of at most 1 hour (3600s)" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["http://127.0.0.1:15002", "https://localhost:15002"])
def test_an_admin_url_is_refused_in_one_line_asking_for_the_admin_socket(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sidecars' admin interfaces are on Unix sockets (over TCP any local user could stop them or set their
    faults): a URL, as `make fault` once took, gets where to look instead."""
    with pytest.raises(SystemExit) as refused:
        main(["catalog", "--delay", "1s", "--admin", given], io.StringIO(), io.StringIO())
    assert refused.value.code == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error.endswith(
        f"argument --admin: {given!r}: a sidecar's admin interface is on a Unix socket, no URL: want its path, like "
        ".data/mesh/sockets/catalog-sidecar-admin.sock"
    )


def test_the_local_admin_sockets_are_the_sidecars_of_make_run_through_the_data_directorys_link() -> None:
    assert local_admin_socket("catalog") == Path(".data/mesh/sockets/catalog-sidecar-admin.sock")
    assert local_admin_socket("catalog-canary") == Path(".data/mesh/sockets/catalog-canary-sidecar-admin.sock")


@pytest.mark.parametrize("tool", ["shopmesh_platform.mesh.faults", "shopmesh_platform.mesh.split"])
def test_the_mesh_tools_find_the_sockets_without_loading_the_launcher(tool: str) -> None:
    """They named the sockets' folder by importing the whole launcher (stack.py: the HTTP edge's configuration,
    PostgreSQL's test server...) for two of its constants; the layout is mesh.layout's, which the launcher uses."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {tool}; print('shopmesh_platform.stack' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_no_sidecar_at_an_admin_socket_given_by_hand_is_said_in_one_line_without_make_run_advice(
    tmp_path: Path,
) -> None:
    """`--admin SOCKET` names some sidecar, not make run's: "is `make run MESH=envoy` running?" was wrong advice
    there, as make shoppers gives none for a --target of the user's."""
    out, err = io.StringIO(), io.StringIO()
    admin = str(tmp_path / "nobody.sock")
    assert main(["catalog", "--delay", "1s", "--admin", admin], out, err) == 1
    said = err.getvalue()
    assert re.fullmatch(rf"error: no sidecar answers at {re.escape(admin)} \([^\n]+\)\n", said), said


def test_no_sidecar_of_the_running_stack_is_said_without_make_run_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line before names the running stack whose sidecar it is: asking whether `make run MESH=envoy` runs
    contradicts it (its sidecar is gone, or not serving yet)."""
    monkeypatch.chdir(tmp_path)
    admin = str(tmp_path / "nobody.sock")
    stack = LocalStack(
        path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1", sidecar_admin={"catalog": admin}
    )
    write_stack_file(stack)
    err = io.StringIO()
    assert main(["catalog", "--delay", "1s"], io.StringIO(), err) == 1
    said, error = err.getvalue().splitlines()
    assert said == f"sidecars of {stack.said()}"
    assert re.fullmatch(rf"error: no sidecar answers at {re.escape(admin)} \([^\n]+\)", error), error


def test_nonsense_is_refused_by_the_parser() -> None:
    nonsense = (
        ["catalog"],
        ["catalog", "--abort", "OK"],
        ["catalog", "--delay", "1s", "--percent", "0"],
        [],
        # The launcher refuses a canary of the gateway: no sidecar of one could ever answer.
        ["gateway-canary", "--delay", "1s"],
    )
    for argv in nonsense:
        with pytest.raises(SystemExit) as refused:
            main(argv, io.StringIO(), io.StringIO())
        assert refused.value.code == 2, argv


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (
            "catalog-canary",
            'no catalog-canary runs in {stack}: start the stack with one, make run MESH=envoy RUN_ARGS="--postgres '
            '--canary catalog"',
        ),
        ("payments", "payments is not running in {stack} (a --services subset?)"),
    ],
)
def test_a_sidecar_the_meshed_stack_lacks_is_named_as_missing_not_blamed_on_the_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, said: str
) -> None:
    """`make fault FAULT_ARGS="catalog-canary --abort UNAVAILABLE"` against `make run MESH=envoy` without a canary
    asked "is it `make run MESH=envoy`?", which it was: it says what is missing and how to start it now."""
    monkeypatch.chdir(tmp_path)
    # This process as the launcher: alive, so the file is the running stack's. Its sidecars: two of catalog's
    # callers and catalog's own, no canary, no payments.
    admins = {name: str(tmp_path / f"{name}-sidecar-admin.sock") for name in ("gateway", "orders", "catalog")}
    stack = LocalStack(
        path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1", sidecar_admin=admins
    )
    write_stack_file(stack)
    err = io.StringIO()
    assert main([target, "--abort", "UNAVAILABLE"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1] == "error: " + said.format(stack=stack.said())


def test_a_stack_without_the_mesh_is_told_that_faults_need_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = LocalStack(path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1")
    write_stack_file(stack)
    err = io.StringIO()
    assert main(["catalog", "--delay", "1s"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1] == (
        f"error: catalog runs behind no sidecar in {stack.said()}: it runs without the mesh; faults need "
        "`make run MESH=envoy`"
    )


@pytest.mark.parametrize("file", ["none", "of a killed launcher"])
def test_without_a_running_stack_the_default_sidecars_are_said_to_be_make_runs_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str
) -> None:
    """`make fault` with no stack running said only "no sidecar answers at ... (...): is `make run MESH=envoy`
    running?", and not that it had taken make run's admin sockets because no launcher's .data/stack.json was
    there (or the one there was a killed launcher's)."""
    monkeypatch.chdir(tmp_path)
    admin = faults.local_admin_socket("catalog")
    ignored = []
    if file != "none":
        killed = subprocess.Popen([sys.executable, "-c", "pass"])
        killed.wait()  # exited and reaped: its pid names no launcher
        write_stack_file(LocalStack(path=stack_file(Path(".data")), pid=killed.pid, nats_url="nats://127.0.0.1:1"))
        ignored = [f"ignoring .data/stack.json: its launcher (pid {killed.pid}) is gone; {USING_MAKE_RUNS}"]
    why = {
        "none": "no launcher's .data/stack.json is here",
        "of a killed launcher": ".data/stack.json here names no launcher of this directory that still runs (ignored: "
        "see above)",
    }[file]
    err = io.StringIO()
    assert main(["catalog", "--delay", "1s"], io.StringIO(), err) == 1
    *said, error = err.getvalue().splitlines()
    assert said == [
        *ignored,
        "sidecars at .data/mesh/sockets/<service>-sidecar-admin.sock: make run MESH=envoy's admin sockets, as no "
        f"local stack runs: {why}",
    ]
    # make run's own ports, no stack running: the one case where starting it is the advice.
    assert error.startswith(f"error: no sidecar answers at {admin} (")
    assert error.endswith("): is `make run MESH=envoy` running?")
