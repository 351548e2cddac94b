"""Shutdown hooks run in order within SHUTDOWN_HOOKS_BUDGET_SECONDS: one that overruns is cancelled and
named, and the hooks after it still run. (As a process, SIGTERM and the exit status: test_process.py.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from shopmesh_chassis.app import HOOK_RESERVE_SECONDS, ShutdownHook, run_shutdown_hooks

LOGGER = "shopmesh.app"


class Hooks:
    """Hooks that record what happened to them, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.stubborn: asyncio.Task[object] | None = None

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
        self.stubborn = asyncio.current_task()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("stubborn swallowed its cancellation")
        await asyncio.Event().wait()

    async def fail(self) -> None:
        raise ConnectionError("the database went away")


def cut_off_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "did not finish" in r.getMessage()]


async def run(hooks: list[ShutdownHook], budget: float, caplog: pytest.LogCaptureFixture) -> tuple[list[str], float]:
    """The hooks run as `serve` runs them; returns the names cut off and how long they took altogether."""
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
    assert record.__dict__["hook_seconds"] == pytest.approx(budget - HOOK_RESERVE_SECONDS, abs=0.2)
    assert "Hooks.hang did not finish within the 1.0 s it had" in record.getMessage()
    assert took < budget + 0.5


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
        assert took < budget + 0.5
    finally:
        assert hooks.stubborn is not None
        hooks.stubborn.cancel()  # the second cancellation ends it, as the event loop's own at exit does
        await asyncio.gather(hooks.stubborn, return_exceptions=True)


async def test_every_hook_after_one_that_hangs_gets_its_reserve(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, _ = await run([hooks.hang, hooks.hang, hooks.quick], 3.0, caplog)
    assert hooks.events == ["hang started", "hang cancelled", "hang started", "hang cancelled", "quick finished"]
    assert cut_off == ["Hooks.hang", "Hooks.hang"]
    seconds = [r.__dict__["hook_seconds"] for r in cut_off_records(caplog)]
    assert seconds == [pytest.approx(1.0, abs=0.2), pytest.approx(HOOK_RESERVE_SECONDS, abs=0.2)]


async def test_more_hooks_than_seconds_share_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, took = await run([hooks.hang, hooks.hang, hooks.hang, hooks.hang], 1.0, caplog)
    assert cut_off == ["Hooks.hang"] * 4, "each was started, none was skipped"
    assert took < 1.0 + 0.5


async def test_a_failing_hook_is_logged_by_name_and_the_rest_run(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    cut_off, _ = await run([hooks.fail, hooks.quick], 5.0, caplog)
    assert hooks.events == ["quick finished"]
    assert cut_off == [], "it failed, but in time"
    (record,) = [r for r in caplog.records if r.name == LOGGER and "failed" in r.getMessage()]
    assert record.getMessage() == "shutdown hook Hooks.fail failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConnectionError)
