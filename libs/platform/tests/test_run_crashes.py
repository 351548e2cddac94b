"""A child (NATS, the trace sink, PostgreSQL) that dies while the stack runs, or while Ctrl-C stops it: the
launcher restarts it or stops the rest and exits 1 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest

from shopmesh_chassis.testing import eventually
from shopmesh_platform.stack import DEFAULT_STOP_TIMEOUT

from .run_kit import (
    database_port,
    gone,
    launched,
    postmaster_of,
    read_until,
    remove_kept_folder,
    stop_left_behind,
    table_rows,
    throwaway_folders,
)


@pytest.mark.timeout(300)  # the start's and the stop's bounds, which decide first
async def test_a_child_that_dies_while_the_stack_runs_is_restarted_or_ends_the_launcher_with_a_failure(
    tmp_path: Path,
) -> None:
    # The banner said NATS was ready; a crash later (OOM killer, a bug) must not leave the developer with a
    # launcher that runs on for ever around a dead process and then says "exit 0": either the launcher brings
    # the process back, or it stops everything and exits non-zero, as a process manager does.
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        rows = table_rows(lines)
        nats_pid, nats_address = int(rows["nats"]["pid"]), rows["nats"]["grpc"]
        host, port = nats_address.removeprefix("nats://").rsplit(":", 1)
        os.kill(nats_pid, signal.SIGKILL)
        await eventually(lambda: gone(nats_pid), "the killed nats-server gone")

        def back_or_ended() -> bool:
            if process.returncode is not None:
                return True
            with socket.socket() as probe:
                return probe.connect_ex((host, int(port))) == 0

        # Ending takes stopping the rest first, and a process that outlives its SIGTERM is SIGKILLed only after
        # the stop timeout (a loaded CI run once met a trace sink that stopped serving but not exiting).
        ends_within = DEFAULT_STOP_TIMEOUT + 30
        with contextlib.suppress(AssertionError):
            await eventually(back_or_ended, "NATS restarted, or the launcher ended", timeout=ends_within)
        if process.returncode is None and not back_or_ended():
            # Neither: the launcher ran on with NATS dead. How it ends after that must say so.
            process.send_signal(signal.SIGINT)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
            raise AssertionError(
                f"NATS stayed dead for {ends_within:g} s while the launcher ran on; Ctrl-C then exited "
                f"{process.returncode}:\n{rest.decode()}"
            )
        if process.returncode is not None:
            assert process.returncode != 0, "the launcher ended after NATS crashed, yet exited 0"


async def test_a_crash_stops_the_rest_and_exits_1_naming_the_process_and_its_last_lines(tmp_path: Path) -> None:
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        rows = table_rows(lines)
        os.kill(int(rows["traces"]["pid"]), signal.SIGKILL)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "traces exited unexpectedly (killed by SIGKILL): stopping the services" in said
    assert "error: traces exited unexpectedly (killed by SIGKILL); its last" in said
    assert "traces | " in said.split("error: ", 1)[1]
    assert all(gone(int(row["pid"])) for row in rows.values() if row["pid"] != "-")


async def test_a_crash_that_coincides_with_ctrl_c_still_exits_1_naming_the_process(tmp_path: Path) -> None:
    """Ctrl-C in the moment a child dies: the stop that follows must not hide the crash behind exit 0."""
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        traces = int(table_rows(lines)["traces"]["pid"])
        # The launcher held (SIGSTOP) while the sink is killed and Ctrl-C comes: it finds both waiting when it
        # goes on (the sink dead, or still dying), and may handle either first.
        process.send_signal(signal.SIGSTOP)
        try:
            os.kill(traces, signal.SIGKILL)
            await eventually(lambda: gone(traces), "the killed trace sink a zombie")
            process.send_signal(signal.SIGINT)
        finally:
            process.send_signal(signal.SIGCONT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "error: traces exited unexpectedly (killed by SIGKILL); its last" in said


async def test_a_postgresql_server_that_dies_while_the_stack_runs_ends_the_launcher_with_exit_1_naming_it(
    tmp_path: Path,
) -> None:
    """The services' databases gone: the stack must not run on around them."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    async with launched(tmp_path / "data", *args, ready_within=120) as (process, lines):
        port = database_port(lines)
        try:
            os.kill(postmaster_of(process.pid), signal.SIGKILL)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await asyncio.to_thread(stop_left_behind, process.pid, port)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "PostgreSQL exited unexpectedly (killed by SIGKILL): stopping the services" in said
    assert "error: PostgreSQL exited unexpectedly (killed by SIGKILL); its last" in said
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"
    remove_kept_folder(process.pid)


async def test_a_postgresql_server_that_dies_while_ctrl_c_stops_the_rest_still_exits_1_naming_it(
    tmp_path: Path,
) -> None:
    """PostgreSQL is stopped last, after the stack: one that died after Ctrl-C, before its turn, is a crash
    as a service's would be, not a stop that went cleanly."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    async with launched(tmp_path / "data", *args, ready_within=120) as (process, lines):
        assert process.stdout is not None
        port = database_port(lines)
        traces, postmaster = int(table_rows(lines)["traces"]["pid"]), postmaster_of(process.pid)
        try:
            # The sink held (SIGSTOP) cannot end on the stop's SIGTERM: the stop waits at it while the server
            # is killed, which therefore dies after Ctrl-C and before its own turn.
            os.kill(traces, signal.SIGSTOP)
            try:
                process.send_signal(signal.SIGINT)
                await asyncio.wait_for(
                    read_until(process.stdout, lambda line: "SIGINT: stopping" in line, lines, "it said it stops"), 60
                )
                os.kill(postmaster, signal.SIGKILL)
                await eventually(lambda: gone(postmaster), "the killed PostgreSQL server gone")
            finally:
                os.kill(traces, signal.SIGCONT)
            rest, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await asyncio.to_thread(stop_left_behind, process.pid, port)
    said = rest.decode()
    assert process.returncode == 1, said
    assert "stopped cleanly" not in said, said
    assert "error: PostgreSQL exited unexpectedly (killed by SIGKILL); its last" in said
    assert not throwaway_folders(process.pid), "the throwaway server's folder outlived the launcher"
    remove_kept_folder(process.pid)
