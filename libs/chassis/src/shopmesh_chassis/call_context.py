"""What an inbound call hands to the outbound calls it makes: its deadline (and later, identity).

The server interceptor sets these per RPC (each RPC runs in its own asyncio task, so context variables
are per call); the client interceptors read them.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_inbound_deadline: ContextVar[float | None] = ContextVar("shopmesh_inbound_deadline", default=None)


def set_inbound_deadline(time_remaining: float | None) -> object:
    """Record the inbound call's deadline (seconds from now, None for none); returns a reset token."""
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return _inbound_deadline.set(deadline)


def reset_inbound_deadline(token: object) -> None:
    _inbound_deadline.reset(token)  # type: ignore[arg-type]


def inbound_time_remaining() -> float | None:
    """Seconds left before the inbound call's deadline, or None outside a call or without a deadline."""
    deadline = _inbound_deadline.get()
    return None if deadline is None else deadline - time.monotonic()
