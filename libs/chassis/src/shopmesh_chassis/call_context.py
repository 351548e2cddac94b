"""What an inbound call hands to the outbound calls it makes: its deadline and the caller's identity.

The server interceptor enters a context per RPC (each RPC runs in its own asyncio task, so context
variables are per call); the client interceptors read it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextvars import Context, ContextVar, Token, copy_context
from dataclasses import dataclass, replace
from typing import Any

from shopmesh_chassis import errors

USER_ID = "x-user-id"
CALLER = "x-caller"
# PERMISSION_DENIED's reason for a request naming another user than the one the gateway acts for.
USER_MISMATCH = "USER_MISMATCH"


@dataclass(frozen=True, slots=True)
class InboundCall:
    deadline: float | None  # time.monotonic() value, None when the call has none
    user_id: str | None  # the authenticated end user, as asserted by the gateway
    caller: str | None  # the calling service, as it names itself (the mesh authenticates it)


_current: ContextVar[InboundCall | None] = ContextVar("shopmesh_inbound_call", default=None)


def _metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else bytes(value).decode()
    return None


def enter(time_remaining: float | None, metadata: Iterable[Any] | None) -> Token[InboundCall | None]:
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    call = InboundCall(deadline, _metadata_value(metadata, USER_ID), _metadata_value(metadata, CALLER))
    return _current.set(call)


def leave(token: Token[InboundCall | None]) -> None:
    _current.reset(token)


def current() -> InboundCall | None:
    return _current.get()


def acting_for() -> str | None:
    """The user the gateway acts for in the inbound call (`x-user-id`); None without the header or outside a
    call, when any user may be named."""
    call = _current.get()
    return None if call is None else call.user_id


def check_acting_for(user_id: str) -> None:
    """When the gateway asserts whom it acts for (`x-user-id`), a request about one user may name only that one:
    PERMISSION_DENIED, reason USER_MISMATCH. A call without the header (an internal tool) may name any user: the
    gateway makes every call's header anew from the verified token (docs/auth.md), so a client cannot drop it."""
    acting = acting_for()
    if acting is not None and acting != user_id:
        raise errors.PermissionDenied("you can only act for yourself", reason=USER_MISMATCH)


def inbound_time_remaining() -> float | None:
    """Seconds left before the inbound call's deadline, or None outside a call or without a deadline."""
    call = _current.get()
    if call is None or call.deadline is None:
        return None
    return call.deadline - time.monotonic()


@contextlib.contextmanager
def deadline_within(seconds: float) -> Iterator[None]:
    """Outbound calls made inside end within `seconds` from now (or at the inbound deadline, if sooner), as
    if the inbound call's deadline were that close: a share of the caller's time for one optional call.
    Unlike a shorter timeout or a timer of one's own, the call still ends as DEADLINE_EXCEEDED, and the
    client's breaker sees its own timeout cut by the caller (shopmesh_chassis.client): a miss counts against
    the target only when the time left was ample for it."""
    call = _current.get()
    deadline = time.monotonic() + seconds
    if call is not None and call.deadline is not None and call.deadline <= deadline:
        yield
        return
    token = _current.set(replace(call or InboundCall(None, None, None), deadline=deadline))
    try:
        yield
    finally:
        _current.reset(token)


def detached_context() -> Context:
    """A copy of the current context without the inbound deadline, for work that must outlive the call
    (a saga that runs to completion even when its caller gives up). Trace and identity stay."""
    context = copy_context()
    call = _current.get()
    if call is not None:
        context.run(_current.set, replace(call, deadline=None))
    return context
