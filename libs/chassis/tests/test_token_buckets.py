"""Token buckets per key (the gateway's per client and per address), on a fake clock."""

from __future__ import annotations

import pytest

from shopmesh_chassis.token_buckets import TokenBuckets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_new_client_gets_its_whole_burst_at_once_then_is_refused(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)


def test_the_retry_delay_is_the_time_until_the_next_whole_token(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=4.0, burst=1, max_keys=10, clock=clock)
    buckets.take("a")
    clock.now += 0.1
    assert buckets.take("a") == pytest.approx(0.15)


def test_tokens_refill_at_the_rate_and_a_refused_request_costs_nothing(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=2.0, burst=2, max_keys=10, clock=clock)
    buckets.take("a")
    buckets.take("a")
    # Many refusals in a row (users' parallel login guesses) push the next token no further than one refill.
    assert [buckets.take("a") for _ in range(30)] == pytest.approx([0.5] * 30)
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_an_idle_bucket_fills_up_to_the_burst_and_no_further(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=10.0, burst=2, max_keys=10, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)][2] > 0


def test_clients_have_separate_buckets(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_the_number_of_buckets_is_bounded_by_forgetting_the_least_recently_used(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=2, clock=clock)
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # refused, but "a" is now the most recently used
    buckets.take("c")  # forgets "b"
    assert len(buckets) == 2
    assert buckets.take("a") > 0, "a recently used bucket is kept"
    assert buckets.take("b") == 0.0, "a forgotten client starts again with a full bucket"


def test_many_clients_never_grow_the_table_past_its_bound(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=5, max_keys=100, clock=clock)
    for i in range(10_000):
        buckets.take(f"client-{i}")
    assert len(buckets) == 100


def test_a_token_given_back_may_be_taken_again_but_never_beyond_the_burst(clock: FakeClock) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=1 / 30, burst=2, max_keys=10, clock=clock)
    assert buckets.take("a") == buckets.take("a") == 0.0
    buckets.give_back("a")
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    for _ in range(5):
        buckets.give_back("a")
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_a_call_that_costs_several_tokens_takes_them_all_or_none(clock: FakeClock) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=0.5, burst=5, max_keys=10, clock=clock)
    assert [buckets.take("a", 2) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a", 2) == pytest.approx(2.0), "one token left: the second comes in 2 s"
    assert buckets.take("a") == 0.0, "the refused call took nothing"
    buckets.give_back("a", 2)
    assert buckets.take("a", 2) == 0.0
    assert buckets.take("a") == pytest.approx(2.0)


def test_a_call_that_costs_more_than_the_burst_takes_a_full_bucket(clock: FakeClock) -> None:
    """Refused for ever otherwise: no bucket ever holds more than its burst."""
    buckets: TokenBuckets[str] = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    assert buckets.take("a", 2) == 0.0
    assert buckets.take("a", 2) == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take("a", 2) == 0.0


def test_giving_back_to_a_key_without_a_bucket_makes_none(clock: FakeClock) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    buckets.take("a")
    buckets.give_back("b")
    assert len(buckets) == 1


def test_giving_back_counts_as_a_use_for_the_bound(clock: FakeClock) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=1.0, burst=1, max_keys=2, clock=clock)
    buckets.take("a")
    buckets.take("b")
    buckets.give_back("a")
    buckets.take("a")
    buckets.take("c")  # forgets "b", not "a"
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_a_forgotten_key_starts_again_with_a_full_bucket(clock: FakeClock) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=1 / 30, burst=2, max_keys=10, clock=clock)
    buckets.take("a")
    buckets.take("a")
    buckets.forget("a")
    buckets.forget("never seen")
    assert len(buckets) == 0
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_keys_are_any_hashable_value(clock: FakeClock) -> None:
    buckets: TokenBuckets[bytes] = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    assert buckets.take(b"\x00" * 32) == 0.0
    assert buckets.take(b"\x00" * 32) == pytest.approx(1.0)
    assert buckets.take(b"\x01" * 32) == 0.0


@pytest.mark.parametrize(("rate", "burst", "max_keys"), [(0.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)])
def test_unusable_limits_are_refused(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBuckets(rate=rate, burst=burst, max_keys=max_keys)
