"""Ed25519 signing keys and access tokens made the way the users contract describes them, for tests."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "shopmesh-users"
AUDIENCE = "shopmesh"


@dataclass
class SigningKey:
    kid: str = field(default_factory=lambda: f"kid-{uuid.uuid4().hex[:8]}")
    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def jwk(self) -> dict[str, str]:
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"kid": self.kid, "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": x, "use": "sig"}

    def token(
        self,
        subject: str = "usr_alice",
        *,
        expires_in: float = 3600,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + int(expires_in),
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        # `headers`: more of them, or others (a None typ: none, as PyJWT takes it).
        return jwt.encode(payload, self.private_key, algorithm="EdDSA", headers={"kid": self.kid, **(headers or {})})


def tampered(token: str, **claims: Any) -> str:
    """The token with its payload replaced and its signature kept (as an attacker would try)."""
    header, _payload, signature = token.split(".")
    unsigned = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")[1]
    return f"{header}.{unsigned}.{signature}"
