"""Verifying an access token with nothing but the published JWKS, as any verifier must.

This is the users service's own reference for its tests; the gateway has its own verifier and does not
import this package (services never import each other). It depends on PyJWT only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

from shopmesh_users.domain.tokens import ALGORITHM, AUDIENCE, ISSUER

REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]


def verify_access_token(token: str, jwks: Mapping[str, Any], *, leeway_seconds: float = 0) -> dict[str, Any]:
    """The claims of `token` when a key of `jwks` (a JWKS document) with its kid verifies it and iss,
    aud, exp, nbf and iat hold; `jwt.InvalidTokenError` (or a subclass) otherwise."""
    kid = jwt.get_unverified_header(token).get("kid")
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(dict(jwks)).keys}
    if not isinstance(kid, str) or kid not in keys:
        raise jwt.InvalidTokenError(f"no published key has kid {kid!r}")
    return jwt.decode(
        token,
        keys[kid],
        algorithms=[ALGORITHM],
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=leeway_seconds,
        options={"require": REQUIRED_CLAIMS},
    )
