"""`cancel_and_wait` stops a background task, swallowing its cancellation but never its caller's; `Detached` keeps
tasks that outlive their call for shutdown to wait for, and says which outlived the wait; `finish_despite_one_cancel`
lets a short write finish through one cancel, not two."""

from __future__ import annotations

import asyncio

import pytest

from shopmesh_chassis.tasks import Detached, cancel_and_wait, finish_despite_one_cancel


async def test_the_task_is_cancelled_and_its_cancellation_swallowed() -> None:
    background = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_wait(background)
    assert background.cancelled()


async def test_a_task_that_already_ended_is_left_as_it_is() -> None:
    async def finish() -> str:
        return "done"

    background = asyncio.create_task(finish())
    await background
    await cancel_and_wait(background)
    assert background.result() == "done"


async def test_a_task_that_fails_as_it_stops_raises_its_error() -> None:
    async def fail_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("the broker went away") from None

    background = asyncio.create_task(fail_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(ConnectionError):
        await cancel_and_wait(background)


async def test_the_callers_own_cancellation_propagates() -> None:
    unwinding = asyncio.Event()
    carried_on: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            unwinding.set()
            await asyncio.sleep(10)  # a rollback that takes its time; cut short by the caller's cancellation
            raise

    async def stop(background: asyncio.Task[None]) -> None:
        await cancel_and_wait(background)
        carried_on.append("after the background task")
        await asyncio.sleep(10)  # the hook's next wait, which its budget was meant to spare

    background = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop(background))
    await asyncio.wait_for(unwinding.wait(), timeout=5)
    # As run_shutdown_hooks cancels a hook that overran its time while it waits for its task.
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=5)
    assert stopping.cancelled(), "the caller's cancellation was swallowed"
    assert carried_on == []
    assert background.cancelled()


async def test_wait_returns_the_tasks_still_running_when_its_time_is_up() -> None:
    detached = Detached()
    quick = detached.start(asyncio.sleep(0), name="quick")
    stuck = detached.start(asyncio.Event().wait(), name="stuck")
    try:
        left = await detached.wait(0.05)
    finally:
        stuck.cancel()
    assert (left, quick.done(), stuck.get_name()) == ({stuck}, True, "stuck")
    assert await detached.wait(0.05) == set()


async def test_settle_waits_for_the_tasks_the_detached_tasks_start_meanwhile() -> None:
    detached = Detached()
    waited: list[int] = []

    async def then_another() -> None:
        await asyncio.sleep(0)
        detached.start(asyncio.sleep(0))

    detached.start(then_another())
    await detached.settle(waited.append)
    assert (len(detached), waited) == (0, [1, 1])


async def test_settle_cut_off_cancels_what_is_left_and_waits_for_it_to_unwind() -> None:
    detached = Detached()
    unwound = asyncio.Event()

    async def holds() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a rollback's round trip
            unwound.set()

    detached.start(holds())
    settling = asyncio.create_task(detached.settle(lambda count: None))
    await asyncio.sleep(0.01)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    assert (unwound.is_set(), len(detached)) == (True, 0)


async def test_a_work_cancelled_once_finishes_then_the_cancel_goes_on() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def write() -> None:
        started.set()
        await release.wait()
        done.append("written")

    caller = asyncio.create_task(finish_despite_one_cancel(write()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert done == ["written"]


async def test_a_work_cancelled_twice_is_cut_off() -> None:
    started = asyncio.Event()
    cut_off: list[bool] = []

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cut_off.append(True)
            raise

    caller = asyncio.create_task(finish_despite_one_cancel(stuck()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, timeout=30)
    assert cut_off == [True]
