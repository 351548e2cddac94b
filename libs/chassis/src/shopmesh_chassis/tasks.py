"""Stopping a background task without swallowing the cancellation of whoever stops it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("shopmesh.tasks")

# How long a cancelled task has to end before it is cancelled again. Long enough for the unwinding that
# follows a cancel (a rollback, naks, closing a connection) to end untouched; short next to the 1 s each
# shutdown hook holds back for the next (app.HOOK_RESERVE_SECONDS), so a task that lost its cancel still
# ends within its hook's time.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it to end, cancelling it again every RECANCEL_SECONDS until it does; its own
    CancelledError is swallowed, the caller's is not.

    Why again: a library may lose a cancel. Python 3.11's `wait_for` returns the result of a wait that
    completes as its caller is cancelled (nats-py waits so for every request's reply: the outbox relay's
    publish, the consumer's fetch), and the task carries on as if never cancelled, into its next wait: the
    shutdown hook stopping it was cut off at its budget, and the process exited 1.

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
        while not (await asyncio.wait({task}, timeout=RECANCEL_SECONDS))[0]:
            log.warning(
                "task %s has not ended %.1f s after it was cancelled (a library may have lost the cancel): "
                "cancelling it again",
                task.get_name(),
                RECANCEL_SECONDS,
                extra={"task": task.get_name()},
            )
            task.cancel()
    except asyncio.CancelledError:
        task.cancel()  # the caller's cancellation reaches the task too, as awaiting it would pass it on
        raise
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
