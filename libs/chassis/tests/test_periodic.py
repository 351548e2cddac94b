"""Background housekeeping jobs run on schedule, survive failures and stop cleanly."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from shopmesh_chassis import periodic
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import database_errors_as_domain_errors
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.testing import cut_off_midway, eventually


async def test_job_sweeps_repeatedly_and_stops_cleanly() -> None:
    swept = asyncio.Event()
    runs = 0

    async def sweep() -> int:
        nonlocal runs
        runs += 1
        if runs == 3:
            swept.set()
        return 0

    job = Periodic("job", 0.01, sweep)
    job.start()
    assert job.running
    await asyncio.wait_for(swept.wait(), timeout=10)
    await job.stop()
    assert not job.running


async def test_job_keeps_running_after_a_failed_sweep() -> None:
    recovered = asyncio.Event()
    runs = 0

    async def sweep() -> int:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ConnectionError("database went away")
        recovered.set()
        return 0

    job = Periodic("job", 0.01, sweep)
    job.start()
    await asyncio.wait_for(recovered.wait(), timeout=10)
    await job.stop()


async def test_stopping_the_job_lets_a_sweep_in_progress_finish() -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def sweep() -> int:
        started.set()
        await asyncio.sleep(0.05)
        finished.set()
        return 0

    job = Periodic("job", 60, sweep)
    job.start()
    await asyncio.wait_for(started.wait(), timeout=10)
    await job.stop()
    assert finished.is_set()


async def test_stopping_a_job_that_never_started_does_nothing() -> None:
    async def sweep() -> int:
        return 0

    await Periodic("job", 1, sweep).stop()


async def test_a_stop_cancelled_before_the_sweep_finished_cancels_the_sweep_too() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def sweep() -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    job = Periodic("job", 60, sweep)
    job.start()
    await asyncio.wait_for(started.wait(), timeout=10)
    # Its shutdown hook, cut off at SHUTDOWN_HOOKS_BUDGET_SECONDS before the stop's timeout was up.
    await cut_off_midway(job.stop(timeout=60))
    # The sweep the stop was waiting for (shielded from the wait's timeout) does not go on past the stop.
    assert cancelled.is_set()
    assert not job.running


async def test_a_run_asked_for_comes_at_once_and_one_asked_for_during_a_run_after_it() -> None:
    runs: list[int] = []
    ran = asyncio.Event()
    release = asyncio.Event()

    async def sweep() -> int:
        runs.append(len(runs))
        ran.set()
        if len(runs) == 2:
            await release.wait()
        return 0

    job = Periodic("job", 3600, sweep)
    job.start()
    try:
        await asyncio.wait_for(ran.wait(), timeout=10)
        ran.clear()
        job.run_soon()  # not an hour later
        await asyncio.wait_for(ran.wait(), timeout=10)
        ran.clear()
        job.run_soon()  # while the second run is in progress: a third follows it
        release.set()
        await asyncio.wait_for(ran.wait(), timeout=10)
        assert runs == [0, 1, 2]
    finally:
        await job.stop()


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == periodic.log.name and r.levelno == level]


@pytest.mark.parametrize(
    "mapped", [False, True], ids=["driver-error", "mapped-to-unavailable-by-the-decorator-services-use"]
)
async def test_an_unavailable_database_is_one_warning_per_outage_without_traceback_and_a_line_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mapped: bool
) -> None:
    # A real SQLite database whose directory goes away (an unmounted volume: SQLITE_CANTOPEN) and comes back.
    # A job running every second would otherwise log an ERROR with its traceback every second of an outage.
    database = Database(f"sqlite:///{tmp_path}/db/service.db")
    outcomes: list[bool] = []

    async def sweep() -> None:
        try:
            async with database.read() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            outcomes.append(False)
            raise
        outcomes.append(True)

    job: Callable[[], Awaitable[None]] = database_errors_as_domain_errors(sweep) if mapped else sweep

    def failed_runs_after(start: int, count: int) -> bool:
        return outcomes[start:].count(False) >= count

    runner = Periodic("sweeper", 0.01, job)
    caplog.set_level(logging.DEBUG, logger=periodic.log.name)
    try:
        shutil.rmtree(tmp_path / "db")
        runner.start()
        await eventually(lambda: failed_runs_after(0, 3), "three runs failed on the unavailable database")
        (tmp_path / "db").mkdir()
        await eventually(lambda: outcomes[-1:] == [True], "a run reached the database again")
        back = len(outcomes)
        shutil.rmtree(tmp_path / "db")
        # The pool's open connection still reads the deleted file: dropped, as a lost volume drops it.
        database.sync_engine.dispose()
        await eventually(lambda: failed_runs_after(back, 3), "three runs failed in the second outage")
    finally:
        await runner.stop()
        await database.dispose()
    warnings = _logged(caplog, logging.WARNING)
    assert [w.exc_info for w in warnings] == [None, None]  # one line each outage, no traceback
    # Each names the driver's error, also under the UNAVAILABLE the decorator raised from it.
    assert all("unavailable" in w.getMessage() and "unable to open database file" in w.getMessage() for w in warnings)
    assert _logged(caplog, logging.ERROR) == []
    assert len([r for r in _logged(caplog, logging.INFO) if "database again" in r.getMessage()]) == 1


async def test_a_failure_that_is_no_database_outage_is_an_error_with_its_traceback_every_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def sweep() -> None:
        raise ValueError("a bug in the job")

    runner = Periodic("sweeper", 0.01, sweep)
    caplog.set_level(logging.WARNING, logger=periodic.log.name)
    runner.start()
    try:
        await eventually(lambda: len(_logged(caplog, logging.ERROR)) >= 2, "two failed runs logged")
    finally:
        await runner.stop()
    errors = _logged(caplog, logging.ERROR)
    assert all(e.exc_info is not None and e.exc_info[0] is ValueError for e in errors)
    assert _logged(caplog, logging.WARNING) == []


async def test_a_failed_run_is_retried_after_a_wait_doubling_up_to_the_interval_and_starting_over_once_one_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = iter([False, False, False, False, True, False])
    done = asyncio.Event()
    runner: Periodic

    async def work() -> None:
        ok = next(outcomes, None)
        if ok is None:
            done.set()
            return
        # The wait planned after this run is what the log line says; the test does not sit through it.
        runner.run_soon()
        if not ok:
            raise ValueError("the queue's store refused")

    runner = Periodic("worker", 2.0, work, retry_after_failure_seconds=0.5)
    caplog.set_level(logging.ERROR, logger=periodic.log.name)
    runner.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        await runner.stop()
    waits = [e.getMessage().rsplit(" ", 1)[-1] for e in _logged(caplog, logging.ERROR)]
    assert waits == ["0.5s", "1.0s", "2.0s", "2.0s", "0.5s"]


async def test_a_run_asking_for_the_next_sooner_gets_it_then_and_the_interval_after_one_that_does_not() -> None:
    runs = 0
    third = asyncio.Event()
    runner: Periodic

    async def work() -> int:
        nonlocal runs
        runs += 1
        if runs <= 2:
            runner.run_within(0.01)  # work due in 10 ms: not an hour later
        else:
            third.set()
        return runs

    runner = Periodic("worker", 3600, work)
    runner.start()
    try:
        await asyncio.wait_for(third.wait(), timeout=10)
        await asyncio.sleep(0.1)
        assert runs == 3, "the third run asked nothing: the next waits the interval"
    finally:
        await runner.stop()


async def test_a_run_failing_for_thousands_of_runs_in_a_row_does_not_end_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A queue worker's outage of hours: more failures in a row than a doubling wait can count in a float.
    failures = 3000
    run_number = itertools.count(1)
    recovered = asyncio.Event()
    runner: Periodic

    async def work() -> None:
        if next(run_number) > failures:
            recovered.set()
            return
        runner.run_soon()  # the test does not sit through the wait, only its computation
        raise ValueError("the queue's store refused")

    runner = Periodic("worker", 5.0, work, retry_after_failure_seconds=0.5)
    caplog.set_level(logging.CRITICAL, logger=periodic.log.name)  # thousands of tracebacks say nothing here
    runner.start()
    try:
        async with asyncio.timeout(60):
            while not recovered.is_set():
                assert runner.running, "the loop ended before the job succeeded again"
                await asyncio.sleep(0.01)
    finally:
        await runner.stop()
