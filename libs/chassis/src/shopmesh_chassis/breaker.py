"""A client circuit breaker: consecutive failures open it, a half-open probe closes it again.

Hand-written because it must count gRPC status codes inside an aio client interceptor and run on an
injectable clock for tests; the async breaker libraries (aiobreaker, purgatory) wrap coroutines, not
calls whose outcome arrives as a status.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    # Consecutive failures that open the breaker.
    failure_threshold: int = 5
    # How long it stays open before letting a probe through.
    reset_timeout_seconds: float = 5.0
    # Probes allowed at once while half-open; every other call fails fast.
    half_open_max_calls: int = 1


class CircuitBreaker:
    """State machine only; the interceptor in `client` asks `allow()` and reports outcomes."""

    def __init__(self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        # How many times it has opened, for metrics.
        self.opened = 0
        # Whether the last probe failed and no call has succeeded since: the dependency was still failing
        # when last tried. Kept through the half-open wait that follows, however long no call comes: the
        # state alone reads the same half_open for that as for an idle breaker after a blip.
        self.probe_failed = False
        # When (on `clock`) a probe last failed, None before any: how fresh that evidence is. A dependency
        # back since, with no call to find it so, leaves `probe_failed` set for ever; its age tells.
        self.probe_failed_at: float | None = None

    @property
    def clock(self) -> Callable[[], float]:
        """The breaker's clock: the client interceptor times its calls on it too (their usual latency, how
        near their deadline a cancellation came), so a test holding it decides those as well."""
        return self._clock

    @property
    def state(self) -> BreakerState:
        if self.observed_state() is not self._state:  # open past its timeout: a probe may go now
            self._state = BreakerState.HALF_OPEN
            self._probes = 0
        return self._state

    def observed_state(self) -> BreakerState:
        """`state` without its side effect (an open breaker past its timeout turns half-open only when a
        call asks): for metrics, read from the scrape's thread."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.config.reset_timeout_seconds:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_after(self) -> float:
        """Seconds a call refused now should wait before trying again: until the open period ends, or,
        half-open with every probe slot taken, a whole reset timeout."""
        state = self.state
        if state is BreakerState.HALF_OPEN and self._probes >= self.config.half_open_max_calls:
            # The running probe's end is unknown here (its deadline is its caller's: seconds for a login, 15 s
            # for a checkout). A failed probe opens the breaker for a reset timeout from its end, a successful
            # one closes it: a reset timeout is never sooner than the next chance, and at most that much later
            # than a closing. 0 would send every refused caller straight back to be refused again.
            return self.config.reset_timeout_seconds
        if state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.config.reset_timeout_seconds - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go out now? A True in half-open state takes a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.config.half_open_max_calls:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probes = 0
        self.probe_failed = False

    def record_failure(self) -> None:
        if self.state is BreakerState.OPEN:
            # A call sent before it opened, failing late: the same outage, not a new one; the open period
            # runs from the opening.
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            self.probe_failed = True
            self.probe_failed_at = self._opened_at
            return
        self._failures += 1
        if self._failures >= self.config.failure_threshold:
            self._open()

    def record_neutral(self) -> None:
        """An outcome that says nothing about the target's health (e.g. a client error)."""
        if self._state is BreakerState.HALF_OPEN:
            # The probe reached a live server that answered; that is health enough.
            self.record_success()
        else:
            self._failures = 0

    def release_probe(self) -> None:
        """A call that ended without a verdict on the target (cancelled by its caller): in half-open state
        its probe slot is given back; the count of failures so far stands."""
        if self._state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self.opened += 1
        self._opened_at = self._clock()
        self._failures = 0
        self._probes = 0
