"""Stopping a background task without swallowing the cancellation of whoever stops it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it to end; its own CancelledError is swallowed, the caller's is not.

    Why not `task.cancel(); with suppress(CancelledError): await task`: when the caller is itself cancelled
    while it waits (a shutdown hook cut off at SHUTDOWN_HOOKS_BUDGET_SECONDS, app.run_shutdown_hooks), the
    CancelledError it gets looks the same as the task's, and the suppress swallows it: the hook carries on
    past its budget into its next wait, and at exit the event loop's runner, which cancels what is left
    and waits for it with no timeout, could hang the process until SIGKILL. So the error is re-raised when
    the caller is being cancelled (`Task.cancelling()`). A task that ends with another exception raises it
    here, as awaiting it would.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def finish_despite_one_cancel(work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; cancelled once meanwhile, let it finish first, then raise the cancel. Cancelled again
    (the stop that cancelled it is itself cut off at its budget), cut it off too: never unbounded.

    For a short write that records what was already done outside the database (the outbox relay marking the
    events JetStream acknowledged): rolled back by a stop's cancel, the work would be done again after it."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # Awaited without the shield: a second cancel reaches the task. Its own failure is the caller's
        # outcome either way (the work is done again); the cancel is what must go on.
        with contextlib.suppress(Exception):
            await task
        raise


def stop_if_cancelled() -> None:
    """Raise CancelledError when the current task was cancelled and no CancelledError reached it.

    Why: Python 3.11's `wait_for` returns the result (or raises the error) of a wait that completes as its
    caller is cancelled, and the cancel is lost (nats-py waits so for every request's reply: a JetStream
    publish, a fetch, a stream or consumer lookup; so do our own waits on an event with a timeout). The task
    carries on as if never cancelled, into its next wait, and the shutdown hook stopping it is cut off at its
    budget. `Task.cancelling()` still counts the cancel: a loop that awaits such calls asks here once a round
    and stops. Not to be called while unwinding (in a `finally` or an `except CancelledError`), where the
    count is above 0 too; nor in a task that waited for an `asyncio.TaskGroup` one of whose tasks failed:
    Python 3.11's leaves the cancel it made of that task counted (`EventConsumer._stop_if_stopping`).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Detached:
    """Tasks that outlive the call that started them (a saga driven for a caller, a write shielded from its
    caller's cancellation), kept until they end so that shutdown can wait for them: the event loop's end would
    cut them off ("Task was destroyed but it is pending") and leave their work half-done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(
        self, work: Coroutine[Any, Any, T], *, context: contextvars.Context | None = None, name: str | None = None
    ) -> asyncio.Task[T]:
        """`work` as a task of its own, kept until it ends; `name` (the task's) says what it works on, in the
        owner's log of those `wait` left running."""
        task = asyncio.get_running_loop().create_task(work, context=context, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(set(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> set[asyncio.Task[Any]]:
        """Give the tasks running now up to `timeout` seconds to end, and return those still running then (what
        they leave undone, something else finishes: a lease, a retry; the owner logs them, or nobody can tell a
        stop that left work to it from a clean one)."""
        if not self._tasks:
            return set()
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return pending

    async def settle(self, waiting: Callable[[int], None]) -> None:
        """Wait until none runs, those the tasks start meanwhile included, telling `waiting` how many it waits
        for each time (the owner's log line).
        Cut off (its caller cancelled: a shutdown hook at its budget), cancel those left and wait for them to
        unwind (a transaction rolling back) before the cancellation goes on, so that what they use (the
        database) is not closed under them."""
        try:
            while self._tasks:
                waiting(len(self._tasks))
                await asyncio.wait(set(self._tasks))
        except asyncio.CancelledError:
            # Again while any is left: one ending meanwhile may have started another.
            while self._tasks:
                left = set(self._tasks)
                for task in left:
                    task.cancel()
                await asyncio.wait(left)
            raise
