"""The access token's claims, as the contract fixes them (RFC 7519; EdDSA per RFC 8037)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ISSUER = "shopmesh-users"
AUDIENCE = "shopmesh"
ALGORITHM = "EdDSA"
TOKEN_TYPE = "Bearer"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    subject: str
    issued_at: datetime
    expires_at: datetime
    token_id: str

    def as_dict(self) -> dict[str, Any]:
        issued_at = int(self.issued_at.timestamp())
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": self.subject,
            "iat": issued_at,
            # Valid from the moment of issue: verifiers with a clock slightly behind use their leeway.
            "nbf": issued_at,
            "exp": int(self.expires_at.timestamp()),
            "jti": self.token_id,
        }


def new_token_id() -> str:
    return secrets.token_urlsafe(16)


def issued_at(now: datetime, tokens_valid_after: datetime | None = None) -> datetime:
    """The "iat" of a token issued at `now`, in whole seconds (NumericDate): `now` truncated, but after the
    user's sign-out cutoff, which is kept to the microsecond. Truncated alone, a Login in the second of a
    sign-out (out at 100.7, in at 100.8) stamped 100, not after 100.7, and its brand-new token was refused as
    revoked; the cutoff's next whole second instead (101) is after it, a token at most a second ahead, and
    never one a token from before the sign-out can have. A cutoff stamped by a replica whose clock is ahead
    is honoured the same way (the gateway takes an iat up to a minute ahead)."""
    whole = datetime.fromtimestamp(int(now.timestamp()), UTC)
    if tokens_valid_after is None or whole > tokens_valid_after:
        return whole
    return datetime.fromtimestamp(int(tokens_valid_after.timestamp()) + 1, UTC)


def next_cutoff(stored: datetime | None, now: datetime) -> datetime:
    """The cutoff a sign-out at `now` leaves: now, but never below the iat a Login would stamp now. A Login
    after the stored cutoff stamps its next whole second, up to a second ahead of now (out at 100.7, in at
    100.8 with iat 101, out again at 100.9): a cutoff of now alone (100.9) spared that token, and keeping the
    stored cutoff (a replica whose clock is behind) spared it too. `issued_at` only grows with time and with
    the cutoff, so no token issued so far has an iat past `issued_at(now, stored)`; and whatever the cutoff, the
    next Login stamps an iat after it (`issued_at`), so signing in again still works."""
    return max(now, issued_at(now, stored))


def build_access_claims(
    user_id: str, now: datetime, lifetime: timedelta, token_id: str, tokens_valid_after: datetime | None = None
) -> AccessClaims:
    """Claims of a token for `user_id` issued at `now`. NumericDate has whole seconds, so the times are
    whole seconds (`issued_at`: after the user's cutoff too): `expires_at` is exactly the token's "exp"."""
    issued = issued_at(now, tokens_valid_after)
    return AccessClaims(
        subject=user_id,
        issued_at=issued,
        expires_at=issued + lifetime,
        token_id=token_id,
    )
