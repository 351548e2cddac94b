"""Per-user revocation: a token issued at or before its user's last sign-out is refused, TOKEN_REVOKED.

users keeps each user's cutoff (`tokens_valid_after`: SignOut sets it, GetTokenCutoff reads it); the gateway
asks for it once per user per `ttl` and keeps the answer, so a signed-in call costs users a read per user every
30 s (TOKEN_CUTOFF_CACHE_SECONDS), not one per call. The replica that signs a user out learns the new cutoff from
SignOut's answer at once; the others when their cached one ages out, within the TTL.

When users cannot answer, in the spirit of the key set's cache (tokens.JwksCache, docs/auth.md): a cutoff known
keeps serving past its TTL (a cutoff only ever moves forward, so a stale one still refuses every token it
refused), and a user whose cutoff was never learnt is taken as not signed out (fail open): signed-in shopping
goes on through a users outage, and a sign-out made meanwhile takes effect on the other replicas once users
answers again. A call waits for users at most `stale_wait_seconds` then, cached user or not: the fetch goes on
in the background and serves the calls after it. `fail_closed` (TOKEN_CUTOFF_FAIL_CLOSED) trades that for
certainty: a cutoff users has not confirmed within the TTL refuses the call UNAVAILABLE (DEPENDENCY_UNAVAILABLE,
with RetryInfo), after waiting for users' answer as long as users takes (USERS_TIMEOUT_SECONDS at most).

After a fetch that failed, as the key set's cache after its (coalesced.FAILED_FETCH_BACKOFF_SECONDS), the user's
calls ask users nothing for `retry_after_seconds`: they take what is known (fail open; "not signed out" for a user
never learnt) or are refused UNAVAILABLE at once (fail closed). Without it, every signed-in call of an outage
started its own GetTokenCutoff.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shopmesh_chassis import errors
from shopmesh_gateway import coalesced

# A logger of its own, held to a line per message a minute (wiring: `limit_repeats`): while users is away every
# signed-in call of a user not cached would write one.
LOGGER = "shopmesh.gateway.sign_outs"
log = logging.getLogger(LOGGER)

TOKEN_REVOKED = "TOKEN_REVOKED"
# How long a call whose user's cached cutoff has aged out waits for users' fresh answer before it goes on with
# the cached one (fail open), as a call with a stale key set waits (tokens.STALE_KEYS_WAIT_SECONDS): a hanging
# users must not hold every signed-in call for USERS_TIMEOUT_SECONDS.
STALE_CUTOFF_WAIT_SECONDS = 0.2

# The user's cutoff, seconds since the epoch (None: never signed out); raises shopmesh_chassis.errors.Unavailable
# when users cannot say now.
FetchCutoff = Callable[[str], Awaitable[float | None]]


@dataclass(slots=True)
class _Known:
    cutoff: float | None
    learnt_at: float | None  # the clock's time when users said it (or SignOut answered it); None: never
    failed_at: float | None = None  # the clock's time when a fetch last failed, if after `learnt_at`


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two cutoffs (None: none)."""
    if a is None:
        return b
    return a if b is None else max(a, b)


def revoked(issued_at: float | None, cutoff: float | None) -> bool:
    """Whether a token issued at `issued_at` (its iat; None: it has none) is revoked: not after the cutoff. users
    stamps iat in whole seconds, a Login's after its user's cutoff (docs/auth.md, "Signing out")."""
    if cutoff is None:
        return False
    return issued_at is None or issued_at <= cutoff


class TokenCutoffs:
    """Each user's sign-out cutoff, learnt from users and kept for `ttl_seconds`, at most `max_users` of them (the
    least recently used is dropped beyond it). Concurrent calls of a user whose cutoff is not fresh share one
    fetch (coalesced.Fetches), run without any caller's deadline: a client sending short deadlines cannot cut it
    short and keep a sign-out unseen. `retry_after_seconds`: how long after a fetch that failed a user's calls ask
    users nothing, and the RetryInfo of a call refused meanwhile because its cutoff cannot be had (fail closed)."""

    def __init__(
        self,
        fetch: FetchCutoff,
        *,
        ttl_seconds: float = 30.0,
        max_users: int = 100_000,
        fail_closed: bool = False,
        stale_wait_seconds: float = STALE_CUTOFF_WAIT_SECONDS,
        retry_after_seconds: float = coalesced.FAILED_FETCH_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._max_users = max_users
        self._fail_closed = fail_closed
        self._stale_wait = stale_wait_seconds
        self._retry_after = retry_after_seconds
        self._clock = clock
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._fetches: coalesced.Fetches[str] = coalesced.Fetches("token-cutoff-fetch")

    async def refuse_revoked(self, user_id: str, issued_at: float | None) -> None:
        """UNAUTHENTICATED (TOKEN_REVOKED) when the user signed out after the token was issued; UNAVAILABLE when
        failing closed and users cannot say."""
        if revoked(issued_at, await self._cutoff(user_id)):
            raise errors.Unauthenticated(
                "the access token was revoked: its user signed out after it was issued; sign in again",
                reason=TOKEN_REVOKED,
            )

    def record(self, user_id: str, cutoff: float) -> None:
        """A cutoff this replica was told by SignOut's answer: in force here at once, fresh for a TTL."""
        known = self._known.get(user_id)
        self._remember(user_id, _later(known.cutoff if known else None, cutoff))

    def _remember(self, user_id: str, cutoff: float | None) -> None:
        self._keep(user_id, _Known(cutoff, self._clock()))

    def _remember_failure(self, user_id: str) -> None:
        known = self._known.get(user_id)
        if known is None:
            self._keep(user_id, _Known(None, None, self._clock()))
        else:
            known.failed_at = self._clock()

    def _keep(self, user_id: str, known: _Known) -> None:
        self._known[user_id] = known
        self._known.move_to_end(user_id)
        while len(self._known) > self._max_users:
            self._known.popitem(last=False)

    def _unavailable(self) -> errors.Unavailable:
        return errors.Unavailable(
            "cannot learn whether this user signed out: users is unavailable",
            reason=errors.DEPENDENCY_UNAVAILABLE,
            retry_after_seconds=self._retry_after,
        )

    async def _cutoff(self, user_id: str) -> float | None:
        known = self._known.get(user_id)
        if known is not None:
            self._known.move_to_end(user_id)
            now = self._clock()
            if known.learnt_at is not None and now - known.learnt_at < self._ttl:
                return known.cutoff
            if known.failed_at is not None and now - known.failed_at < self._retry_after:
                # users failed a moment ago: no new fetch yet.
                if self._fail_closed:
                    raise self._unavailable()
                return known.cutoff
        fetching = self._fetches.start(user_id, lambda: self._learn(user_id))
        if self._fail_closed:
            try:
                await coalesced.outcome(fetching)
            except errors.Unavailable:
                raise self._unavailable() from None
        elif not await coalesced.ended(fetching, within=self._stale_wait) or coalesced.failed(fetching):
            # The cutoff known, if any (a cutoff only moves forward); none: taken as not signed out.
            log.warning("could not learn a user's sign-out cutoff from users now; using the one known, if any")
            return known.cutoff if known is not None else None
        learnt = self._known.get(user_id)
        return learnt.cutoff if learnt is not None else None

    async def _learn(self, user_id: str) -> None:
        try:
            cutoff = await self._fetch(user_id)
        except BaseException:
            self._remember_failure(user_id)
            raise
        else:
            known = self._known.get(user_id)
            # A SignOut answered while the fetch ran may have recorded a later cutoff: the later one stays.
            self._remember(user_id, _later(known.cutoff if known else None, cutoff))
