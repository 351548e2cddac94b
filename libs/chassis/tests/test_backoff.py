"""The shared backoff doubles from its base, never goes below it, and stops at its cap."""

from __future__ import annotations

import math

from shopmesh_chassis.backoff import backoff_delay


def test_the_wait_doubles_from_the_base_with_each_attempt() -> None:
    assert [backoff_delay(0.5, attempt) for attempt in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_the_wait_stops_at_the_cap() -> None:
    assert [backoff_delay(1.0, attempt, cap=3.0) for attempt in range(4)] == [1.0, 2.0, 3.0, 3.0]


def test_a_cap_below_the_base_caps_the_first_wait_too() -> None:
    assert backoff_delay(5.0, 0, cap=2.0) == 2.0


def test_a_negative_attempt_waits_the_base() -> None:
    assert backoff_delay(0.25, -3) == 0.25


def test_an_attempt_far_past_the_cap_waits_the_cap_instead_of_overflowing() -> None:
    assert backoff_delay(1.0, 10_000, cap=60.0) == 60.0


def test_an_attempt_far_past_any_sane_wait_without_a_cap_is_still_a_finite_wait() -> None:
    assert math.isfinite(backoff_delay(1.0, 10_000))
