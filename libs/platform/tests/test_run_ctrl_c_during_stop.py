"""A second Ctrl-C while the launcher stops a ready stack: it kills what still runs, the throwaway
PostgreSQL too, and blames no process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncpg
import pytest

from shopmesh_chassis.testing import eventually

from .run_kit import (
    PATIENT_LAUNCHER,
    _stat,
    assert_nothing_left,
    ctrl_c_until_it_stops,
    database_passfile,
    database_port,
    descendants,
    launched,
    launcher,
    pending_signals,
    postmaster_of,
    read_until_ready,
    second_ctrl_c_killing,
    stop_launcher,
    stop_left_behind,
    table_rows,
)


async def test_a_second_ctrl_c_during_the_stop_kills_the_rest_and_blames_no_process(tmp_path: Path) -> None:
    """Ctrl-C twice: the second kills every process still running, NATS too before its turn to stop; those
    SIGKILLs are the launcher's own, not crashes (exit 0, no "exited unexpectedly")."""
    async with launched(tmp_path / "data", "--services", "", "--http-port", "0") as (process, lines):
        assert process.stdout is not None
        traces = int(table_rows(lines)["traces"]["pid"])
        # The sink held (SIGSTOP) cannot end on the stop's SIGTERM: the stop waits at it (up to its timeout),
        # so the second Ctrl-C, sent once the launcher said it stops, lands before NATS's turn.
        os.kill(traces, signal.SIGSTOP)
        await ctrl_c_until_it_stops(process, lines)
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    said = rest.decode()
    assert "SIGINT again: killing what still runs of the stack now" in said, said
    assert "exited unexpectedly" not in said, said
    assert process.returncode == 0, said


@pytest.mark.parametrize("during", ["the stack's stop", "PostgreSQL's stop"])
async def test_a_second_ctrl_c_kills_the_throwaway_postgresql_too_rather_than_wait_for_its_shutdown(
    tmp_path: Path, during: str
) -> None:
    """Ctrl-C twice with --postgres: the second kills the server at once as well, before its turn to stop or
    while the stop waits for its fast shutdown; the SIGKILL is the launcher's own, not a crash. It reaches the
    server alone (PostgreSQL puts each of its children in a session of its own): its backends, a client's
    among them, end by themselves once it is gone."""
    args = ("--services", "", "--http-port", "0", "--postgres")
    process = await launcher(tmp_path / "data", *args, script=PATIENT_LAUNCHER)
    assert process.stdout is not None
    lines: list[str] = []
    held: list[int] = []
    try:
        await asyncio.wait_for(read_until_ready(process.stdout, lines), 120)
        port = database_port(lines)
        postmaster = postmaster_of(process.pid)
        client = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres", passfile=str(database_passfile(lines))
        )
        backend = await client.fetchval("SELECT pg_backend_pid()")
        started = descendants(process.pid)
        assert backend in started, "the client's backend is not the server's child"
        # PostgreSQL's own setsid(): no signal to the server's process group reaches the backend.
        assert (_stat(backend) or [])[2:4] == [str(backend)] * 2, "the backend is in the server's process group"
        try:
            # A server held (SIGSTOP) cannot shut down, fast or not: only a SIGKILL ends it.
            os.kill(postmaster, signal.SIGSTOP)
            held.append(postmaster)
            if during == "the stack's stop":
                # The sink held as well: the stop waits at it, before PostgreSQL's turn.
                traces = int(table_rows(lines)["traces"]["pid"])
                os.kill(traces, signal.SIGSTOP)
                held.append(traces)
            await ctrl_c_until_it_stops(process, lines)
            if during == "PostgreSQL's stop":
                await eventually(
                    lambda: signal.SIGINT in pending_signals(postmaster), "the stop's SIGINT waiting at the server"
                )
            rest = await second_ctrl_c_killing(process, postmaster)
        finally:
            for pid in held:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            await asyncio.to_thread(stop_left_behind, process.pid, port)
            client.terminate()
    finally:
        await stop_launcher(process)
    said = rest.decode()
    assert "SIGINT again: killing what still runs of the stack and PostgreSQL now" in said, said
    assert "exited unexpectedly" not in said, said
    assert process.returncode == 0, said
    await assert_nothing_left(process, started)
