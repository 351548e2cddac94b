"""What several NATS tests share: a started publisher of a scratch stream, the dead-letters command, and a
nats-py request that loses its caller's cancel."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from shopmesh_chassis.events import DeferredJetStream

DAY = 86400.0


async def a_month_publisher(url: str, *, subjects: list[str] | None = None) -> DeferredJetStream:
    """THINGS' publisher, keeping events 30 days, once it has declared its stream."""
    publisher = DeferredJetStream(
        url,
        name="tests",
        stream="THINGS",
        subjects=subjects or ["things.v1.>"],
        duplicate_window_seconds=600,
        max_age_seconds=30 * DAY,
    )
    ready = asyncio.Event()
    publisher.start(on_ready=ready.set)
    await asyncio.wait_for(ready.wait(), 10)
    return publisher


def deadletters_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`shopmesh-deadletters --nats-url URL ARGS...`, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "shopmesh_chassis.deadletters_cli", "--nats-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class LostCancel:
    """A nats-py request whose reply comes as its caller is cancelled: Python 3.11's `wait_for` then returns the
    reply (or raises its error) and drops the cancel. `await hold()` at the start of a stand-in for the request:
    every call until one has lost a cancel waits (`asked` set) until cancelled, then goes on as if it was not
    (`lost`)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.lost = False

    async def hold(self) -> None:
        if self.lost:
            return
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost = True  # the reply came as the cancel did
