"""The catalog answer cache: expiry after its time to live, a size bound, cached absences."""

from __future__ import annotations

from shopmesh_recommendations.cache import Hit, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_served_until_its_time_to_live_is_over() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(30, 10, clock)
    cache.put("a", 1)
    clock.now += 29.9
    assert cache.get("a") == Hit(1)
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_a_cached_none_is_a_hit_not_a_miss() -> None:
    cache: TtlCache[str, int | None] = TtlCache(30, 10, Clock())
    cache.put("unknown", None)
    assert cache.get("unknown") == Hit(None)
    assert cache.get("never-asked") is None


def test_beyond_the_size_bound_the_least_recently_used_entry_goes() -> None:
    cache: TtlCache[str, int] = TtlCache(30, 2, Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == Hit(1)  # "b" is now the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (Hit(1), None, Hit(3))


def test_a_zero_time_to_live_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(0, 10, Clock())
    cache.put("a", 1)
    assert cache.get("a") is None
