"""Login attempts per e-mail address, so that guessing one account's password is slow however many client
addresses the guesses come from: the gateway limits each address, not each account.

A token bucket per e-mail: `burst` attempts at once, then one more every `refill`. An attempt takes its
token when it is admitted, before its password is hashed, not when it fails: counting only failures let
every attempt admitted before the first failure was recorded through (the ~34 a hashing queue holds, at
each refill). An attempt that ends without an answer about the password (hashing busy, database down, the
caller gone) gives its token back, and a successful login forgets the e-mail's bucket, so only wrong
guesses keep tokens. An attempt is refused while the bucket is empty, for a known and an unknown e-mail
alike, so the refusal says nothing about which accounts exist.

The buckets are stored in the users database, shared by every replica (docs/auth.md, "Login throttling"):
this module is the arithmetic only, on a bucket the store has locked and on wall-clock time (replicas share
no monotonic clock). No stored bucket means a full one: a bucket left alone for `burst` refills is full
again, which is why such rows can be pruned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shopmesh_chassis.clocks import MAX_CLOCK_SKEW


def email_key(email: str) -> str:
    """The key an e-mail's bucket is stored under: a digest, not the text. Login does not bound the e-mail's
    length, and the stored attempts should not be a list of the addresses people tried."""
    return hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Attempts:
    """An e-mail's bucket as stored: the attempts left at `updated_at` (a fraction while refilling)."""

    tokens: float
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Taken:
    """A `LoginThrottle.take`: `stored` is what to store (None: nothing changed), `retry_after_seconds` 0.0
    when an attempt was taken, else the seconds until one may be. A refusal stores something only when it
    capped a stored time too far ahead (`_refilled`)."""

    stored: Attempts | None
    retry_after_seconds: float


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    burst: int
    refill: timedelta

    def __post_init__(self) -> None:
        if self.burst < 1 or self.refill <= timedelta(0):
            raise ValueError("burst must be >= 1, refill > 0")

    def take(self, stored: Attempts | None, now: datetime) -> Taken:
        """Take one attempt from `stored` (None: a full bucket) at `now`, or refuse and store nothing."""
        bucket = self._refilled(stored, now)
        if bucket.tokens >= 1.0:
            return Taken(Attempts(bucket.tokens - 1.0, bucket.updated_at), 0.0)
        # The next attempt comes a refill's share after the bucket's time, which may be ahead of `now` (another
        # replica's clock): that remainder is waited too, or a client retrying when told finds it still refused.
        ahead = max(0.0, (bucket.updated_at - now).total_seconds())
        retry_after = ahead + (1.0 - bucket.tokens) * self.refill.total_seconds()
        # Nothing to write: refilling is arithmetic on the stored row, which gives the same later. Unless its
        # time was capped: stored as it was, every later refusal would cap it anew and refill nothing.
        return Taken(bucket if stored is not None and bucket.updated_at < stored.updated_at else None, retry_after)

    def give_back(self, stored: Attempts, now: datetime) -> Attempts:
        """Return an attempt `take` granted, never beyond the burst."""
        bucket = self._refilled(stored, now)
        return Attempts(min(float(self.burst), bucket.tokens + 1.0), bucket.updated_at)

    def full_since(self, now: datetime) -> datetime:
        """Buckets last changed at or before this are full by `now` whatever they held: storing them or not
        is the same, so they may be pruned."""
        try:
            return now - self.refill * self.burst
        except OverflowError:
            # Longer than datetime reaches back (a refill of a day and a burst of millions): nothing is full.
            return datetime.min.replace(tzinfo=UTC)

    def _refilled(self, stored: Attempts | None, now: datetime) -> Attempts:
        if stored is None:
            return Attempts(float(self.burst), now)
        # Replicas' clocks disagree a little: a `now` behind the stored time refills nothing and leaves that
        # time as it is, so that no replica is credited the same interval twice. But by no more than the skew
        # the project assumes: a time further ahead was written by a clock that jumped (an NTP step, a VM
        # resumed), and kept, it would refill nothing on every other replica for the whole jump.
        updated_at = min(stored.updated_at, now + MAX_CLOCK_SKEW)
        elapsed = max(0.0, (now - updated_at).total_seconds())
        tokens = min(float(self.burst), stored.tokens + elapsed / self.refill.total_seconds())
        return Attempts(tokens, max(updated_at, now))
