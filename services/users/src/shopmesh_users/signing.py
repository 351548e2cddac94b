"""Ed25519 key pairs and EdDSA-signed JWTs (cryptography and PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shopmesh_users.domain.keys import KeyMaterial, SigningKey
from shopmesh_users.domain.tokens import ALGORITHM, AccessClaims


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(kty: str, crv: str, x: str) -> str:
    """RFC 7638 thumbprint of an OKP key (RFC 8037 §2): SHA-256 over the required members in
    lexicographic order, without whitespace. A kid that anyone can recompute from the key itself."""
    canonical = json.dumps({"crv": crv, "kty": kty, "x": x}, separators=(",", ":"), sort_keys=True)
    return _base64url(hashlib.sha256(canonical.encode("ascii")).digest())


def generate_key_material() -> KeyMaterial:
    private_key = Ed25519PrivateKey.generate()
    x = _base64url(private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    kid = jwk_thumbprint("OKP", "Ed25519", x)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public_jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}
    return KeyMaterial(kid=kid, public_jwk=public_jwk, private_key_pem=pem)


def sign_access_token(claims: AccessClaims, key: SigningKey) -> str:
    private_key = serialization.load_pem_private_key(key.private_key_pem.encode("ascii"), password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"signing key {key.kid} is not an Ed25519 key")
    # PyJWT adds "alg" and "typ": "JWT"; the contract's header is {"alg", "typ", "kid"}.
    return jwt.encode(claims.as_dict(), private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
