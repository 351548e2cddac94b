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


def build_access_claims(user_id: str, now: datetime, lifetime: timedelta, token_id: str) -> AccessClaims:
    """Claims of a token for `user_id` issued at `now`. NumericDate has whole seconds, so the times are
    truncated to the second: `expires_at` is exactly the token's "exp"."""
    issued_at = datetime.fromtimestamp(int(now.timestamp()), UTC)
    return AccessClaims(
        subject=user_id,
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        token_id=token_id,
    )
