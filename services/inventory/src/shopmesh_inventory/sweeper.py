"""The background task that records expired reservations (`Inventory.sweep_expired`) on an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("shopmesh.inventory.sweeper")


class ExpirySweeper:
    """Runs `sweep` every `interval_seconds` until stopped; a failed sweep is logged and retried."""

    def __init__(self, sweep: Callable[[], Awaitable[int]], interval_seconds: float) -> None:
        self._sweep = sweep
        self._interval = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reservation-expiry-sweeper")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let a sweep in progress finish its transaction, then end; cancel it only past `timeout`."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._sweep()
            except Exception:
                # A database blip must not end expiry for the life of the process.
                log.exception("reservation sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
