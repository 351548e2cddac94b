"""Login attempts per e-mail address, so that guessing one account's password is slow however many client
addresses the guesses come from: the gateway limits each address, not each account.

A token bucket per e-mail: `burst` attempts at once, then one more every `refill_seconds`. An attempt takes
its token when it is admitted, before its password is hashed, not when it fails: counting only failures let
every attempt admitted before the first failure was recorded through (the ~34 a hashing queue holds, at
each refill). An attempt that ends without an answer about the password (hashing busy, database down, the
caller gone) gives its token back, and a successful login forgets the e-mail's bucket, so only wrong
guesses keep tokens. An attempt is refused while the bucket is empty, for a known and an unknown e-mail
alike, so the refusal says nothing about which accounts exist.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from shopmesh_chassis.token_buckets import TokenBuckets


def _key(email: str) -> bytes:
    # A digest, not the text: Login does not bound the e-mail's length, and a megabyte each would make
    # `max_emails` entries gigabytes.
    return hashlib.sha256(email.encode("utf-8", "surrogatepass")).digest()


class FailedLogins:
    """The attempts of the last while, per e-mail; beyond `max_emails` the least recently seen is
    forgotten (it starts again with a full bucket, as after `burst * refill_seconds` of quiet)."""

    def __init__(
        self, burst: int, refill_seconds: float, max_emails: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1 or refill_seconds <= 0 or max_emails < 1:
            raise ValueError("burst and max_emails must be >= 1, refill_seconds > 0")
        self._buckets: TokenBuckets[bytes] = TokenBuckets(1.0 / refill_seconds, burst, max_emails, clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, email: str) -> float:
        """Takes one attempt for `email` and returns 0.0, or takes nothing and returns the seconds until one
        may be taken."""
        return self._buckets.take(_key(email))

    def give_back(self, email: str) -> None:
        """Returns an attempt taken by `try_acquire` that checked no password. Nothing when the bucket is gone
        (a success forgot it, or it was the least recently seen): it is full already."""
        self._buckets.give_back(_key(email))

    def succeeded(self, email: str) -> None:
        self._buckets.forget(_key(email))
