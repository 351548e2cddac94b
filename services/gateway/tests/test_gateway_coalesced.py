"""The gateway's coalesced fetches (the key set's and the sign-out cutoffs'): callers missing one thing share
one fetch, which outlives their deadlines and cancellations, and a failed fetch nobody waited for to the end is
not reported as an unretrieved error."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field
from typing import Any

import pytest

from shopmesh_chassis import call_context, errors
from shopmesh_gateway import coalesced

# Bounds a hang only: every wait below is for something that, with the behaviour intact, comes at once.
HANG = 10.0


@dataclass
class Source:
    """A fetch held until the test releases it, failing when told to; what it saw of the calling call."""

    released: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False
    started: int = 0
    deadlines: list[float | None] = field(default_factory=list)

    async def fetch(self) -> None:
        self.started += 1
        call = call_context.current()
        self.deadlines.append(call.deadline if call is not None else None)
        await asyncio.wait_for(self.released.wait(), HANG)
        if self.fail:
            raise errors.Unavailable("users is down", reason=errors.DEPENDENCY_UNAVAILABLE)


async def test_callers_of_one_key_share_one_fetch_and_the_next_after_it_starts_another() -> None:
    fetches: coalesced.Fetches[str] = coalesced.Fetches("test-fetch")
    source = Source()
    first = fetches.start("usr_ann", source.fetch)
    assert fetches.start("usr_ann", source.fetch) is first
    assert fetches.running("usr_ann") is first
    other = fetches.start("usr_bob", source.fetch)
    assert other is not first, "another key has a fetch of its own"
    source.released.set()
    await asyncio.wait_for(asyncio.gather(coalesced.outcome(first), coalesced.outcome(other)), HANG)
    assert source.started == 2
    assert fetches.running("usr_ann") is None, "an ended fetch is forgotten"
    await asyncio.wait_for(coalesced.outcome(fetches.start("usr_ann", source.fetch)), HANG)
    assert source.started == 3


async def test_the_fetch_runs_without_the_starting_calls_deadline() -> None:
    fetches: coalesced.Fetches[str] = coalesced.Fetches("test-fetch")
    source = Source()
    source.released.set()
    token = call_context.enter(0.5, [(call_context.USER_ID, "usr_ann")])
    try:
        fetching = fetches.start("usr_ann", source.fetch)
    finally:
        call_context.leave(token)
    await asyncio.wait_for(coalesced.outcome(fetching), HANG)
    assert source.deadlines == [None]


async def test_a_caller_cancelled_or_out_of_time_leaves_the_fetch_running() -> None:
    fetches: coalesced.Fetches[str] = coalesced.Fetches("test-fetch")
    source = Source()
    fetching = fetches.start("usr_ann", source.fetch)
    assert not await coalesced.ended(fetching, within=0.01)
    waiter = asyncio.ensure_future(coalesced.outcome(fetching))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not fetching.done(), "neither the time running out nor the cancel is the fetch's"
    source.released.set()
    assert await coalesced.ended(fetching, within=HANG)
    assert not coalesced.failed(fetching)


async def test_a_failed_fetch_raises_to_its_waiters_and_is_never_reported_unretrieved() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        fetches: coalesced.Fetches[str] = coalesced.Fetches("test-fetch")
        source = Source(fail=True)
        waited = fetches.start("usr_ann", source.fetch)
        source.released.set()
        with pytest.raises(errors.Unavailable):
            await asyncio.wait_for(coalesced.outcome(waited), HANG)
        # Nobody waits for this one to the end: a caller that gave up at the stale wait.
        source.released.clear()
        fetching = fetches.start("usr_ann", source.fetch)
        assert not await coalesced.ended(fetching, within=0.01)
        source.released.set()
        # Not coalesced.failed: asking the task for its error retrieves it, as the helper's callback must.
        assert await coalesced.ended(fetching, within=HANG)
        assert fetches.running("usr_ann") is None
        await asyncio.sleep(0)  # the done-callbacks' turn
        del fetching, waited
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
