"""Stopping a background task without swallowing the cancellation of whoever stops it."""

from __future__ import annotations

import asyncio
from typing import Any


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
