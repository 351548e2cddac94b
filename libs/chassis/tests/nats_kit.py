"""What several NATS tests share: a started publisher of a scratch stream, and the dead-letters command."""

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
