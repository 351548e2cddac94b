"""`testing.eventually`, the one bounded wait every test uses for outcomes of background work."""

from __future__ import annotations

import pytest

from shopmesh_chassis.testing import eventually


async def test_returns_the_first_truthy_value_of_a_plain_function() -> None:
    seen = iter([None, [], {"order": "ord_1"}, "never reached"])
    assert await eventually(lambda: next(seen), "a value", interval=0) == {"order": "ord_1"}


async def test_awaits_a_coroutine_function_each_time() -> None:
    calls = 0

    async def probe() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else None

    assert await eventually(probe, "the third call", interval=0) == 3


async def test_a_condition_that_never_holds_fails_naming_it_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never happened within 0\.05 s: the relay published \(last seen: \[\]\)"):
        await eventually(lambda: [], "the relay published", timeout=0.05, interval=0.01)


async def test_an_exception_of_the_condition_propagates_at_once() -> None:
    calls = 0

    def probe() -> None:
        nonlocal calls
        calls += 1
        raise LookupError("no such order")

    with pytest.raises(LookupError, match="no such order"):
        await eventually(probe, "an order", timeout=5)
    assert calls == 1
