"""A job run every `interval` seconds in the background until stopped; a failing run is logged and the
next one tried on schedule."""

# chassis-candidate: any service with housekeeping (purging idempotency keys, expiring reservations) needs
# this loop; it belongs next to the IdempotencyStore it mostly serves.

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("shopmesh.payments.periodic")


class Periodic:
    def __init__(self, name: str, interval_seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        self._name = name
        self._interval = interval_seconds
        self._job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            try:
                result = await self._job()
                log.debug("%s done: %s", self._name, result)
            except Exception:
                log.exception("%s failed; next run in %.0fs", self._name, self._interval)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
