"""A shopper's access token and when it renews it (docs/auth.md "Tokens": users signs it for an hour by default).

A load run's shoppers all log in within its first seconds, so tokens kept until the gateway refused them expired
together: every shopper's next signed-in step was a 401 and a login in the same few seconds, an hourly burst of
failures and of password hashing that users' queue sheds. Each shopper therefore renews at a random point of its
token's remaining lifetime, which spreads the renewals out and spreads them further at each round.

No Locust here: importing Locust monkey-patches the process for gevent, which the unit tests must not get.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

# The share of the remaining lifetime after which a token is renewed, drawn uniformly: an hour's token is renewed
# 36 to 54 minutes after the login, well before it expires even when the renewal has to wait out a 429.
RENEW_AFTER = (0.6, 0.9)
# At least this long between a login and the renewal, whatever the answer says: with a clock ahead of users' by
# more than the lifetime, the token looks expired at once and would otherwise be renewed at every step.
MIN_RENEWAL_SECONDS = 10.0


def timestamp(value: Any) -> float | None:
    """A google.protobuf.Timestamp in JSON (RFC 3339, "2030-01-01T10:00:20.021Z") as POSIX seconds; None when it is
    not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class Credentials:
    """The token a shopper sends, renewed before it expires (`due`), and dropped once it may no longer be good."""

    def __init__(self, clock: Callable[[], float] = time.time, draw: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._draw = draw
        self.token = ""
        self._renew_at = math.inf
        self._expires_at = math.inf

    def due(self) -> bool:
        """Whether the shopper is to log in (again) before its next signed-in step."""
        return not self.token or self._clock() >= self._renew_at

    def logged_in(self, answer: Mapping[str, Any] | None) -> None:
        """Takes a login's answer (None: the login failed). A failed renewal keeps the token while it is still
        good, and the next signed-in step tries again; a token whose expiry the answer does not state is kept
        until the gateway refuses it."""
        now = self._clock()
        answer = answer or {}
        token = answer.get("accessToken")
        if not isinstance(token, str) or not token:
            if now >= self._expires_at:
                self.refused()
            return
        self.token = token
        expires_at = timestamp(answer.get("expiresAt"))
        if expires_at is None:
            self._renew_at = self._expires_at = math.inf
            return
        low, high = RENEW_AFTER
        share = low + (high - low) * self._draw()
        self._renew_at = now + max(MIN_RENEWAL_SECONDS, (expires_at - now) * share)
        # An expiry already past says this clock is ahead of users' (the gateway took the token a moment ago): the
        # token is good for as long as the gateway takes it, and a failed renewal would otherwise drop it.
        self._expires_at = expires_at if expires_at > now else math.inf

    def refused(self) -> None:
        """The gateway refused the token (401) or it expired: the shopper has none until it logs in again."""
        self.token = ""
        self._renew_at = self._expires_at = math.inf
