"""Background housekeeping jobs run on schedule, survive failures and stop cleanly."""

from __future__ import annotations

import asyncio

from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.testing import cut_off_midway


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
