"""Command-line tools that end cleanly on Ctrl-C (SIGINT) and SIGTERM.

Under Python's defaults a Ctrl-C is a KeyboardInterrupt raised wherever the tool happens to be: a traceback
instead of what the tool had to say (`make shoppers` lost the tallies of the minute it had run). Here the
first signal cancels the tool's asyncio main, which unwinds as any cancelled task does (its channels and
connections closed), and the caller gets `Interrupted`: it says what it had so far, and exits with the
status a shell gives the signal (130, 143). A further signal, while that unwinding hangs, ends the process at
once with the same status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(sig: int) -> int:
    """As a shell reports a process the signal `sig` ended: 128 + its number."""
    return 128 + sig


class Interrupted(Exception):
    """The tool's main was stopped by `signal` (and has unwound)."""

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__(f"stopped by {sig.name}")
        self.signal = sig

    @property
    def exit_status(self) -> int:
        return exit_status(self.signal)


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, except that SIGINT or SIGTERM cancels `main` and, once it has unwound, raises
    `Interrupted`. A `main` that swallows the cancellation and returns is still reported as interrupted: it
    was stopped early, whatever it returned."""
    stopped_by: list[signal.Signals] = []
    try:
        result = asyncio.run(_cancelled_by_signals(main, stopped_by))
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        raise Interrupted(stopped_by[0]) from None
    if stopped_by:
        raise Interrupted(stopped_by[0])
    return result


async def _cancelled_by_signals(main: Coroutine[Any, Any, T], stopped_by: list[signal.Signals]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(sig: signal.Signals) -> None:
        if stopped_by:
            _exit_now(sig)
        stopped_by.append(sig)
        task.cancel()

    # Signals reach the main thread only: a tool's main run from another (a test calling it in a thread)
    # runs as under asyncio.run, with no handlers to install.
    handled = STOPPING_SIGNALS if threading.current_thread() is threading.main_thread() else ()
    for sig in handled:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await main
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _exit_now(sig: signal.Signals) -> None:
    # os._exit: a second signal is for a tool whose unwinding hangs, which nothing else would end; what was
    # printed so far is flushed first.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(exit_status(sig))


def exit_status_on_interrupt(main: Callable[[], int]) -> int:
    """`main()` of a tool without an event loop (a few blocking calls, a file read): Ctrl-C ends it with status
    130 and no traceback. SIGTERM needs nothing: its default ends the process with 143, printing nothing."""
    try:
        return main()
    except KeyboardInterrupt:
        return exit_status(signal.SIGINT)
