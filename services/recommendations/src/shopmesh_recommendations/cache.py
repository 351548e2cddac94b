"""A small in-memory cache with a time to live and a size bound, for answers of other services.

chassis-candidate: any service that reads another service's slow-changing data (catalog products,
categories) wants this; it has no dependency on recommendations.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Hit(Generic[V]):
    """A cached value; a wrapper, so that a cached None ("the catalog does not know it") is a hit too."""

    value: V


class TtlCache(Generic[K, V]):
    """Entries expire `ttl_seconds` after they were stored; beyond `max_entries` the least recently used
    go first. Not shared between processes: each replica warms its own."""

    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> Hit[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return Hit(value)

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
