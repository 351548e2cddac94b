"""Exponential backoff: the one formula the retry loops share (a saga's step retries, a delivery's next
attempt, a background loop's pause after a failure), so their waits grow alike and a cap means the same."""

from __future__ import annotations

# The most times the base is doubled: 2**1000 times it is past any cap a caller names (for a base above about
# 1e-290 s) and still a finite float (for a base below about 1e7 s), where an int 2**attempt past 1023 is too
# large to convert to a float at all, and a loop failing for hours in a row would count that far.
MAX_DOUBLINGS = 1000


def backoff_delay(base: float, attempt: int, cap: float | None = None) -> float:
    """The wait before retry `attempt` (0 for the first): `base` doubled `attempt` times (at most
    MAX_DOUBLINGS), at most `cap`.

    A negative `attempt` counts as 0: a caller's count that starts late never asks for less than `base`."""
    delay = base * 2.0 ** min(max(attempt, 0), MAX_DOUBLINGS)
    return delay if cap is None else min(delay, cap)
