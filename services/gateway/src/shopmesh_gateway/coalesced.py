"""Coalesced fetches from users: one background task per thing fetched, which every call missing it waits for.

The key set's cache (tokens.JwksCache) and the sign-out cutoffs' (sign_outs.TokenCutoffs) fetch from users the
same way. A fetch is one task for everyone, run without the deadline of the call that started it (the gateway's
own, USERS_TIMEOUT_SECONDS, bounds it): callers wait for it and may give up, the fetch goes on. Tied to the first
caller, a client sending short deadlines (or hanging up) would cancel every fetch due, and keep a revoked key
accepted, a new key refused or a sign-out unseen for as long as it liked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from shopmesh_chassis import call_context

# How soon after a fetch from users that failed the same thing may be asked again. Without it every call of an
# outage that misses (an unknown kid, a user's cutoff) would start its own fetch; one a second per replica still
# bounds what that costs users, and is soon enough that a call is not refused long after users answers again.
FAILED_FETCH_BACKOFF_SECONDS = 1.0

K = TypeVar("K", bound=Hashable)


class Fetches(Generic[K]):
    """At most one fetch running per key; the task is forgotten as the fetch ends, after what it learnt is kept."""

    def __init__(self, task_name: str) -> None:
        self._task_name = task_name
        self._running: dict[K, asyncio.Task[None]] = {}

    def running(self, key: K) -> asyncio.Task[None] | None:
        return self._running.get(key)

    def start(self, key: K, fetch: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """The fetch of `key` running, or `fetch()` started as it, outside the calling call's context."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._run(key, fetch), name=self._task_name, context=call_context.detached_context()
            )
            # Retrieved here, so that a failure nobody waited for to the end is not reported as unseen.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._running[key] = task
        return task

    async def _run(self, key: K, fetch: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await fetch()
        finally:
            self._running.pop(key, None)


async def ended(fetch: asyncio.Task[None], *, within: float) -> bool:
    """Whether `fetch` ended within `within` seconds. Neither the time running out nor this caller's cancellation
    cancels it, and its error is not raised (`outcome` raises it)."""
    await asyncio.wait((fetch,), timeout=within)
    return fetch.done()


def failed(fetch: asyncio.Task[None]) -> bool:
    """Whether `fetch`, ended, failed (or was cancelled, the gateway stopping)."""
    return fetch.cancelled() or fetch.exception() is not None


async def outcome(fetch: asyncio.Task[None]) -> None:
    """Waits for `fetch` to end and raises its error, if any; this caller's cancellation leaves it running."""
    await asyncio.shield(fetch)
