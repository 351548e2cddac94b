"""Work in another process (a process pool's) that lasts until the test lets it end, not for a time: a test that
checks what happens while it runs holds however slowly the machine goes, where work of a fixed length may end
before the check on a loaded one. Its events are a `multiprocessing` manager's: their proxies can be handed to a
pool's process, which a plain `multiprocessing.Event` cannot. `held_until_released` is module-level, so that a
pool can run it (pickled by name)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

# Every wait's bound: a gate never opened, or work that never starts, fails its test instead of hanging it.
WAIT_SECONDS = 60.0


class _Event(Protocol):
    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def held_until_released(started: _Event, release: _Event, *_arguments: object) -> bool:
    """Sets `started`, then waits for `release`, within `WAIT_SECONDS`. Any further arguments are ignored, so it
    can stand in for a check given its caller's; returns False."""
    started.set()
    if not release.wait(WAIT_SECONDS):
        raise TimeoutError(f"the gate was not opened within {WAIT_SECONDS} s")
    return False


@dataclass(frozen=True)
class ProcessGate:
    started: _Event
    release: _Event

    def work(self) -> Callable[..., bool]:
        """`held_until_released` on this gate's events, for a process pool to run."""
        return functools.partial(held_until_released, self.started, self.release)

    async def reached(self) -> None:
        """Waits, off the event loop, until the work has started, within `WAIT_SECONDS`."""
        if not await asyncio.to_thread(self.started.wait, WAIT_SECONDS):
            raise TimeoutError(f"the held work did not start within {WAIT_SECONDS} s")

    def open(self) -> None:
        self.release.set()


@contextlib.contextmanager
def process_gate() -> Iterator[ProcessGate]:
    """A gate for work in other processes; opened on leaving, so that nothing waits for it after the test."""
    # Spawned, as the pools under test are: a fork would copy this process' threads' locks mid-use.
    with multiprocessing.get_context("spawn").Manager() as manager:
        gate = ProcessGate(manager.Event(), manager.Event())
        try:
            yield gate
        finally:
            gate.open()
