"""Shutdown hooks run in order within SHUTDOWN_HOOKS_BUDGET_SECONDS: one that overruns is cancelled and
named, and the hooks after it still run. (As a process, SIGTERM and the exit status: test_process.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from shopmesh_chassis.app import HOOK_RESERVE_SECONDS, HOOK_UNWIND_SECONDS, ShutdownHook, run_shutdown_hooks

LOGGER = "shopmesh.app"
# loop.time() is a float: a difference of two may be off in its last bits, though the clock moved only by the
# loop's timeouts.
ROUNDING = 1e-9

# looptime's virtual clock on pytest-asyncio's loop: loop.time, which run_shutdown_hooks reckons its budget on
# and asyncio's timeouts run on, moves only when the loop would sleep, straight on to its next timer. On the
# wall clock a loaded machine wakes the loop late and the hooks' times and total drift by whatever it was busy
# with; here they are what the code reckoned. idle_timeout=0: a wait that nothing is due to end (a hook never
# cut off) fails at once with IdleTimeoutError instead of hanging. (Not end=: a wait with no timer would sleep
# on the wall clock until that end, and with idle_timeout too looptime 0.9 never fails it and spins.)
pytestmark = pytest.mark.looptime(idle_timeout=0)


class Hooks:
    """Hooks that record what happened to them, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        # Hooks that outlive their cancellation: ended by the test, as the event loop's own cancellation at
        # exit ends them.
        self.left_behind: list[asyncio.Task[object]] = []

    async def hang(self) -> None:
        self.events.append("hang started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("hang cancelled")
            raise

    async def quick(self) -> None:
        await asyncio.sleep(0.05)
        self.events.append("quick finished")

    async def stubborn_hang(self) -> None:
        """Swallows its cancellation and waits again, as `suppress(CancelledError)` around a task it awaits does."""
        self._may_be_left_behind()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("stubborn swallowed its cancellation")
        await asyncio.Event().wait()

    async def slow_unwind(self) -> None:
        """Hangs, and once cancelled takes far longer than HOOK_UNWIND_SECONDS to unwind (a slow rollback)."""
        self._may_be_left_behind()
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append("slow unwinding")
            await asyncio.sleep(30)

    async def fail_late(self) -> None:
        """Swallows its cancellation, then fails after the hooks are over (a connection it was closing broke)."""
        self._may_be_left_behind()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await asyncio.sleep(HOOK_UNWIND_SECONDS + 0.3)
        raise ConnectionError("the broker went away")

    def _may_be_left_behind(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.left_behind.append(task)

    async def end_left_behind(self) -> None:
        for task in self.left_behind:
            task.cancel()
        await asyncio.gather(*self.left_behind, return_exceptions=True)

    async def fail(self) -> None:
        raise ConnectionError("the database went away")


def cut_off_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "did not finish" in r.getMessage()]


async def run(hooks: list[ShutdownHook], budget: float, caplog: pytest.LogCaptureFixture) -> tuple[list[str], float]:
    """The hooks run as `serve` runs them; returns the names cut off and how long they took altogether (on the
    loop's clock: virtual, so exactly what the hooks were given and used)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cut_off = await run_shutdown_hooks(hooks, budget)
    return cut_off, loop.time() - started


async def test_a_hook_that_never_returns_is_cancelled_at_the_budget_and_the_next_hook_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks()
    budget = 2.0
    cut_off, took = await run([hooks.hang, hooks.quick], budget, caplog)
    assert hooks.events == ["hang started", "hang cancelled", "quick finished"]
    assert cut_off == ["Hooks.hang"]
    # It had the budget less the next hook's reserve, and the two together stayed within the budget.
    (record,) = cut_off_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.__dict__["hook"] == "Hooks.hang"
    assert record.__dict__["hook_seconds"] == pytest.approx(budget - HOOK_RESERVE_SECONDS)
    assert "Hooks.hang did not finish within the 1.0 s it had" in record.getMessage()
    assert took <= budget + ROUNDING


async def test_hooks_within_the_budget_run_in_order_untouched(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, _ = await run([hooks.quick, hooks.quick], 5.0, caplog)
    assert hooks.events == ["quick finished", "quick finished"]
    assert cut_off == []
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_a_hook_that_swallows_its_cancellation_does_not_hold_the_hooks_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks()
    budget = 2.0
    try:
        cut_off, took = await run([hooks.stubborn_hang, hooks.quick], budget, caplog)
        assert hooks.events == ["stubborn swallowed its cancellation", "quick finished"]
        assert cut_off == ["Hooks.stubborn_hang"]
        assert any("ignored its cancellation" in r.getMessage() for r in caplog.records if r.name == LOGGER)
        assert took <= budget + ROUNDING
    finally:
        await hooks.end_left_behind()


async def test_a_hook_unwinds_within_its_own_time_and_the_hooks_after_it_keep_their_whole_reserve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks()
    budget = 3.0
    try:
        cut_off, took = await run([hooks.slow_unwind, hooks.slow_unwind, hooks.hang], budget, caplog)
        assert cut_off == ["Hooks.slow_unwind", "Hooks.slow_unwind", "Hooks.hang"]
        # The last hook was cancelled in time to unwind, and ended.
        assert hooks.events == ["slow unwinding", "slow unwinding", "hang started", "hang cancelled"]
        seconds = [r.__dict__["hook_seconds"] for r in cut_off_records(caplog)]
        # Each slow hook was cancelled HOOK_UNWIND_SECONDS before its time was up, and left behind at its end,
        # not half a second into the next hook's reserve: the last hook, `database.dispose` in a service, still
        # had its whole reserve (it had half of it when the unwind was taken from the hooks after).
        assert seconds[0] == pytest.approx(budget - 2 * HOOK_RESERVE_SECONDS)
        assert seconds[2] == pytest.approx(HOOK_RESERVE_SECONDS)
        ignored = [r.__dict__["hook"] for r in caplog.records if "ignored its cancellation" in r.getMessage()]
        assert ignored == ["Hooks.slow_unwind", "Hooks.slow_unwind"]
        assert took <= budget + ROUNDING
    finally:
        await hooks.end_left_behind()


async def test_every_hook_after_one_that_hangs_gets_its_reserve(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, _ = await run([hooks.hang, hooks.hang, hooks.quick], 3.0, caplog)
    assert hooks.events == ["hang started", "hang cancelled", "hang started", "hang cancelled", "quick finished"]
    assert cut_off == ["Hooks.hang", "Hooks.hang"]
    seconds = [r.__dict__["hook_seconds"] for r in cut_off_records(caplog)]
    # The first had the budget less the two reserves. The second had its reserve and more: the first was
    # cancelled HOOK_UNWIND_SECONDS before its time was up and unwound at once, so the rest of its time went on
    # to the next.
    assert seconds[0] == pytest.approx(3.0 - 2 * HOOK_RESERVE_SECONDS)
    assert seconds[1] == pytest.approx(HOOK_RESERVE_SECONDS + HOOK_UNWIND_SECONDS)


async def test_more_hooks_than_seconds_share_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    budget = 1.0
    try:
        # Hooks that use all of their time (they swallow the cancellation), so none passes time on to the next.
        cut_off, took = await run([hooks.stubborn_hang] * 4, budget, caplog)
        assert cut_off == ["Hooks.stubborn_hang"] * 4, "each was started, none was skipped"
        assert hooks.events == ["stubborn swallowed its cancellation"] * 4
        # An equal share each.
        share = budget / 4
        seconds = [r.__dict__["hook_seconds"] for r in cut_off_records(caplog)]
        assert seconds == pytest.approx([share] * 4)
        assert took <= budget + ROUNDING
    finally:
        await hooks.end_left_behind()


async def test_a_failing_hook_is_logged_by_name_and_the_rest_run(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, _ = await run([hooks.fail, hooks.quick], 5.0, caplog)
    assert hooks.events == ["quick finished"]
    assert cut_off == [], "it failed, but in time"
    (record,) = [r for r in caplog.records if r.name == LOGGER and "failed" in r.getMessage()]
    assert record.getMessage() == "shutdown hook Hooks.fail failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConnectionError)


async def test_a_hook_that_fails_after_it_was_cut_off_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    try:
        cut_off, _ = await run([hooks.fail_late, hooks.quick], 2.0, caplog)
        assert cut_off == ["Hooks.fail_late"]
        (task,) = hooks.left_behind
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await asyncio.wait({task}, timeout=5)
            await asyncio.sleep(0)  # its done callbacks run
        assert task.done()
        # Read and logged, rather than asyncio's "Task exception was never retrieved" when it is collected.
        (record,) = [r for r in caplog.records if r.name == LOGGER and "after it was cut off" in r.getMessage()]
        assert record.getMessage() == "shutdown hook Hooks.fail_late failed after it was cut off"
        assert record.levelno == logging.ERROR
        assert record.__dict__["hook"] == "Hooks.fail_late"
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ConnectionError)
    finally:
        await hooks.end_left_behind()
