"""The wall clock every service reads (`utc_now`, injected as a `Clock` so tests can fix the time), and the
clock skew the project assumes between any two of its processes (replicas of a service, services, NATS).

Times written by one pod's wall clock are judged by another's: a saga's lease and a charge's in-doubt window
(orders), a login bucket's last refill (users), a token's iat/nbf (gateway against users), a stream's timestamp
(consumer). NTP keeps pods' clocks well under a second apart, but a step or a VM resume can put one a few
seconds off; each of those decisions waits this much longer before it takes another's time as passed, or
caps a time written ahead of its own clock at this much ahead. Beyond it, docs/architecture.md ("Clocks")
says what breaks. One value for all, so that the bound an operator must keep is one number.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

MAX_CLOCK_SKEW_SECONDS = 5.0
MAX_CLOCK_SKEW = timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
