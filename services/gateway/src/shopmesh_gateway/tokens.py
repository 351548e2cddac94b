"""Access-token verification: EdDSA JWTs from users, checked locally against its cached JSON Web Key Set.

The users contract fixes the rules: the header users signs (alg, typ JWT, kid), the key whose kid matches the
token's, the "iss", "aud", "sub", "exp" and "iat" claims (and "nbf" when present); the key set is cached up to 5
minutes and refetched on an unknown kid at most every 30 seconds, so that a key rotation is picked up without a
refetch per forged token (a second after a fetch that failed, so that one failure does not hold back the key
users just published).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from shopmesh_chassis import errors
from shopmesh_chassis.contract_limits import MAX_ID_LENGTH
from shopmesh_gateway import coalesced

log = logging.getLogger("shopmesh.gateway.tokens")

ALGORITHM = "EdDSA"
TOKEN_MISSING = "TOKEN_MISSING"
TOKEN_INVALID = "TOKEN_INVALID"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
# The subject is a user id, which no id of the contracts exceeds.
SUBJECT = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_LENGTH}}}")
# The longest access token verified; a longer one is refused TOKEN_INVALID unread. users' tokens are under
# 500 characters (a 64-character subject included), and this leaves room for claims to come. gRPC metadata
# takes 256 KiB: a forged token that size cost ~40 ms of the event loop to parse, for every call, before
# the rate limit (charged after the verification fails) could refuse it. At this bound the worst a forged
# token costs is a few times a real token's verification.
MAX_TOKEN_CHARS = 4096

# The header users signs (shopmesh_users.signing: PyJWT's alg and typ, and the key's kid), and its typ. A token
# whose header says more is refused: a jku, jwk, x5u or x5c names a key, or where to fetch one, chosen by
# whoever made the token, and the gateway verifies with users' published keys alone (PyJWT ignores them, and the
# refusal says so). Another typ (RFC 9068's at+jwt) is another kind of token, with rules of its own.
TOKEN_HEADER = frozenset({"alg", "typ", "kid"})
TOKEN_TYPE = "JWT"
# The claims every token of users' has, numbers where they are times; jti and nbf are not read.
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]

# Fetches the published keys, each in JWK form ({"kid", "kty", "crv", "alg", "x", "use"}); raises
# shopmesh_chassis.errors.Unavailable when the key set cannot be had now.
FetchJwks = Callable[[], Awaitable[Sequence[Mapping[str, str]]]]


def _usable_keys(jwks: Sequence[Mapping[str, str]]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in jwks:
        kid = jwk.get("kid", "")
        if not kid or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or jwk.get("use", "sig") != "sig":
            log.warning("ignoring a published key that cannot verify EdDSA tokens", extra={"kid": kid})
            continue
        try:
            keys[kid] = jwt.PyJWK(dict(jwk), algorithm=ALGORITHM)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            log.warning("ignoring a malformed published key", extra={"kid": kid})
    return keys


# How long a call whose key is cached waits for a refetch that the key set's age made due, before it verifies
# with the keys it has while the refetch goes on. Long enough for a users replica that answers to replace a
# revoked key before the call that fetched is verified; short enough that a hanging users (a black-holed
# route, a stalled replica) does not hold every signed-in call for USERS_TIMEOUT_SECONDS, again and again.
STALE_KEYS_WAIT_SECONDS = 0.2
# The one fetch of the key set (coalesced.Fetches holds it by this key).
_KEY_SET = "jwks"


class JwksCache:
    """The verification keys by kid, refetched when older than `max_age` or when a kid is unknown.

    Once a key set is known, refetches are at least `min_refetch_interval` apart, so neither forged kids
    nor an unreachable users service cause a fetch per request. When a refetch fails the keys already
    known keep serving: a key stays published until every token it signed has expired, so stale keys can
    only miss new ones (and a revoked key keeps verifying until a refetch succeeds). A call whose kid is
    known waits for a refetch due to the key set's age at most `stale_keys_wait`, then verifies with the keys
    it has; a call whose kid is unknown waits for the refetch's answer, the only one that can know its key.

    After a fetch that failed, an unknown kid may refetch once `failed_refetch_interval` has passed instead:
    the new key users published ahead may be the one missing. (Held to the 30 s interval, the fetch that would
    learn a new key, published ahead while the age refetch that should have brought it failed, was held back and
    fresh logins were refused TOKEN_INVALID for up to 30 s though users answered again; the breaker on GetJwks
    caps these further while users stays unreachable.) Until a fetch succeeds such a kid is answered
    UNAVAILABLE with a retry hint (the gateway cannot tell a new key from a forged one), not TOKEN_INVALID.

    Past `hard_max_age` (0: never), counted from the last fetch that succeeded, the keys are no longer
    used: a revoked key is then sure to stop verifying, at the price of refusing every token while users
    cannot give a key set. Only while no usable key set is had does a failure fail the verification
    (UNAVAILABLE), and then every verification that finds no fetch running starts one, whatever the
    interval: nothing can be verified without it, and held to the interval the gateway would go on refusing
    every token for up to that long after users is back. While users is unreachable, the gateway's breaker of
    GetJwks caps them (open after five failed fetches, it fails them without a call until its probe); while
    users answers but has no key set to give, each such verification asks it once. Such calls are charged
    to their address's rate limit (guard.admit_user), after the fetch. Refusing every token past the hard
    age is logged once as it begins and once as it ends, not per failed fetch (so not per call).

    A refetch is one task for everyone (coalesced.Fetches), run without the deadline of the call that started
    it: a client sending short deadlines cannot cancel every refetch due, each counted as an attempt.
    """

    def __init__(
        self,
        fetch: FetchJwks,
        *,
        max_age_seconds: float = 300.0,
        min_refetch_interval_seconds: float = 30.0,
        hard_max_age_seconds: float = 0.0,
        stale_keys_wait_seconds: float = STALE_KEYS_WAIT_SECONDS,
        failed_refetch_interval_seconds: float = coalesced.FAILED_FETCH_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max_age = max_age_seconds
        self._min_interval = min_refetch_interval_seconds
        self._hard_max_age = hard_max_age_seconds
        self._stale_keys_wait = stale_keys_wait_seconds
        # Never later than the interval that holds after a success (a setting, which may be shorter).
        self._failed_interval = min(failed_refetch_interval_seconds, min_refetch_interval_seconds)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._fetches: coalesced.Fetches[str] = coalesced.Fetches("jwks-refetch")
        # The last fetch that ended failed: the keys known may lack one users publishes now.
        self._last_fetch_failed = False
        # Every token is being refused: past `hard_max_age`, a fetch failed. Logged as it begins and ends only:
        # while it lasts every signed-in call that finds no fetch running starts one, and each fails.
        self._refusing = False

    def _usable(self) -> dict[str, jwt.PyJWK] | None:
        """The keys, unless none were ever fetched or the last fetch that succeeded is past `hard_max_age`."""
        if self._keys is not None and self._hard_max_age and self._clock() - self._fetched_at >= self._hard_max_age:
            return None
        return self._keys

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with this kid, or None when the key set does not have it; UNAVAILABLE when the kid is unknown
        and the last fetch failed, so that the set users publishes now may have it."""
        keys = self._usable()
        if keys is None:
            await self._refetch(required=True)
        elif kid not in keys:
            await self._refetch(required=False, interval=self._failed_interval if self._last_fetch_failed else None)
            if kid not in (self._keys or {}) and self._last_fetch_failed:
                raise errors.Unavailable(
                    "the access token's key is not among those known, and the key set cannot be fetched now",
                    reason=errors.DEPENDENCY_UNAVAILABLE,
                    retry_after_seconds=self._until_refetch(self._failed_interval),
                )
        elif self._clock() - self._fetched_at >= self._max_age:
            await self._refetch(required=False, wait_at_most=self._stale_keys_wait)
        return (self._keys or {}).get(kid)

    def _until_refetch(self, interval: float) -> float:
        """Seconds until a refetch held to `interval` may start (0: it may now)."""
        if self._attempted_at is None:
            return 0.0
        return max(0.0, interval - (self._clock() - self._attempted_at))

    async def _refetch(
        self, *, required: bool, interval: float | None = None, wait_at_most: float | None = None
    ) -> None:
        """`interval`: the least time since the last attempt, unless `required` (default: the minimum one)."""
        fetching = self._fetches.running(_KEY_SET)
        if fetching is None:
            if not required and self._until_refetch(self._min_interval if interval is None else interval) > 0:
                return
            self._attempted_at = self._clock()
            fetching = self._fetches.start(_KEY_SET, self._fetch_keys)
        if wait_at_most is not None and not await coalesced.ended(fetching, within=wait_at_most):
            return
        try:
            await coalesced.outcome(fetching)
        except errors.Unavailable:
            if self._usable() is None:
                raise

    async def _fetch_keys(self) -> None:
        try:
            jwks = await self._fetch()
        except errors.Unavailable:
            self._last_fetch_failed = True
            if self._usable() is not None:
                log.warning("could not refetch the key set; verifying with the keys already known")
            elif self._keys is not None and not self._refusing:
                self._refusing = True
                log.warning(
                    "could not refetch the key set, past JWKS_HARD_MAX_AGE_SECONDS; refusing every token until "
                    "a fetch succeeds"
                )
            raise
        else:
            self._keys = _usable_keys(jwks)
            self._fetched_at = self._clock()
            self._last_fetch_failed = False
            if self._refusing:
                self._refusing = False
                log.warning("refetched the key set past JWKS_HARD_MAX_AGE_SECONDS; verifying tokens again")


# How far in the future a token's nbf and iat may be by this replica's clock. A token users stamped ahead of it
# is a clock off, not a forgery (only users' key signs): refused TOKEN_INVALID, its client threw it away and
# logged in again, to get another refused alike, in a loop for as long as the clocks stayed apart. Accepting it
# extends no token's life (`exp` keeps JWT_LEEWAY_SECONDS), so this tolerance is well beyond the clock skew the
# project assumes (chassis clocks.MAX_CLOCK_SKEW), which PyJWT's one leeway would also have stretched `exp` by.
NOT_BEFORE_LEEWAY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class TokenRules:
    issuer: str
    audience: str
    # For `exp`; `nbf` and `iat` take NOT_BEFORE_LEEWAY_SECONDS, or this if longer.
    leeway_seconds: float = 0.0


def _invalid(message: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(message, reason=TOKEN_INVALID)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    # Its iat (seconds since the epoch): what a sign-out's cutoff is compared with.
    issued_at: float


class TokenVerifier:
    """Turns an access token into the user id it was issued to, or UNAUTHENTICATED saying why not."""

    def __init__(self, keys: JwksCache, rules: TokenRules) -> None:
        self._keys = keys
        self._rules = rules

    async def subject(self, token: str) -> str:
        return (await self.verify(token)).subject

    async def verify(self, token: str) -> VerifiedToken:
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid(f"the access token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid("the access token is malformed") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not kid:
            raise _invalid("the access token is not an EdDSA token with a key id")
        if not TOKEN_HEADER.issuperset(header) or header.get("typ") != TOKEN_TYPE:
            raise _invalid(f"the access token's header is not users': alg, typ {TOKEN_TYPE} and kid, nothing else")
        key = await self._keys.key(kid)
        if key is None:
            raise _invalid("the access token is signed by an unknown key")
        claims = self._decode(token, key)
        subject = claims.get("sub")
        # The subject goes on as gRPC metadata (x-user-id): printable ASCII without spaces, as every id users
        # issues is (a signed token with another one is a bug or a forgery, and gRPC could not send it).
        if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
            raise _invalid("the access token has no usable subject")
        # A number by now (`_decode`).
        return VerifiedToken(subject, float(claims["iat"]))

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._rules.issuer,
                audience=self._rules.audience,
                leeway=self._rules.leeway_seconds,
                # exp, nbf and iat are checked below: PyJWT has one leeway for all three, and takes whatever
                # int() reads as a time: "9999999999", a string, was a valid exp, and true (a bool, an int) an
                # exp of 1, refused TOKEN_EXPIRED rather than as no number.
                options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"the access token is invalid: {exc}") from None
        now = time.time()
        latest = now + max(self._rules.leeway_seconds, NOT_BEFORE_LEEWAY_SECONDS)
        for claim in ("exp", "nbf", "iat"):
            value = claims.get(claim)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _invalid(f"the access token is invalid: its {claim} is not a number")
            if claim == "exp":
                # PyJWT's own rule: expired at exp, not after it.
                if value <= now - self._rules.leeway_seconds:
                    raise errors.Unauthenticated("the access token has expired", reason=TOKEN_EXPIRED)
            elif value > latest:
                raise _invalid(f"the access token is invalid: it is not yet valid ({claim})")
        return claims
