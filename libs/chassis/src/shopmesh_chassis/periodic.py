"""Background housekeeping: a job run now and then every `interval_seconds` until stopped.

A failing run is logged and the next one comes on schedule. Stopping lets a run in progress finish its
transaction (cancelling it only past a timeout), so shutdown never leaves half a sweep behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shopmesh_chassis.tasks import cancel_and_wait

log = logging.getLogger("shopmesh.periodic")


class Periodic:
    def __init__(self, name: str, interval_seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._interval = interval_seconds
        self._job = job
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        self._stopping.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        finally:
            # Past the timeout, or the stop itself cancelled (its shutdown hook cut off at
            # SHUTDOWN_HOOKS_BUDGET_SECONDS): the shield kept the run going, and it must not outlive the stop.
            # A run that already ended is left as it is.
            await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                result = await self._job()
                log.debug("%s done: %s", self.name, result)
            except Exception:
                log.exception("%s failed; next run in %.1fs", self.name, self._interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
