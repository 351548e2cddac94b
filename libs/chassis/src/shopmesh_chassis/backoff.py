"""Exponential backoff: the one formula the retry loops share (a saga's step retries, a delivery's next
attempt, a background loop's pause after a failure), so their waits grow alike and a cap means the same."""

from __future__ import annotations


def backoff_delay(base: float, attempt: int, cap: float | None = None) -> float:
    """The wait before retry `attempt` (0 for the first): `base` doubled `attempt` times, at most `cap`.

    A negative `attempt` counts as 0: a caller's count that starts late never asks for less than `base`."""
    delay = float(base * 2 ** max(attempt, 0))
    return delay if cap is None else min(delay, cap)
