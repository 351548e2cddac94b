"""Token buckets per key, with a bounded number of keys, in one process's memory: the gateway's per-client and
per-address limits. (Users' login attempts per e-mail must hold across replicas: stored in its database.)

Hand-written: `limits` offers fixed, moving and sliding windows but no token bucket; `aiolimiter` is one
leaky bucket that makes callers wait rather than refusing them with a retry delay; `token-bucket` keys
buckets but answers only yes or no (no time until the next token), keeps every key forever and reads
time.monotonic itself. What is needed here — refuse with "retry after", an injectable clock for tests,
an LRU bound on the keys, a token given back — is the lines below. Pure: no I/O, no locks (one event loop
calls it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class TokenBuckets(Generic[K]):
    """`burst` tokens at once per key, refilled at `rate` per second.

    Beyond `max_keys`, the least recently used bucket is forgotten. A forgotten key starts again with a
    full bucket, which is what its bucket would hold anyway after `burst / rate` seconds of silence: with
    enough keys only keys idle that long are dropped, and nothing is lost.
    """

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: K, tokens: int = 1) -> float:
        """Take `tokens` tokens for `key` (a call that costs that much): 0.0 when granted, else (taking nothing)
        the seconds until they will be available. More than the burst takes a whole bucket: a full one is all a
        key can ever hold, and asking for more would refuse that call for ever."""
        wanted = float(min(tokens, self._burst))
        bucket = self._refilled(key)
        if bucket is None:
            bucket = _Bucket(self._burst, self._clock())
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        if bucket.tokens >= wanted:
            bucket.tokens -= wanted
            return 0.0
        return (wanted - bucket.tokens) / self._rate

    def give_back(self, key: K, tokens: int = 1) -> None:
        """Return the tokens `take` granted, never beyond the burst. Nothing when the key has no bucket
        (forgotten, or the least recently used): it would start full anyway."""
        bucket = self._refilled(key)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + tokens)

    def forget(self, key: K) -> None:
        """Drop `key`'s bucket: its next `take` finds a full one."""
        self._buckets.pop(key, None)

    def _refilled(self, key: K) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        self._buckets.move_to_end(key)
        now = self._clock()
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated_at) * self._rate)
        bucket.updated_at = now
        return bucket
