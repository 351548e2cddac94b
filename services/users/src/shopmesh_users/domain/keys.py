"""The schedule of the token-signing keys: which key signs now, which keys are published, when to rotate.

A key's life: created and published in the JWKS at once; signs from `activates_at` (publish-ahead later,
so verifiers that cache the JWKS have it before they meet a token it signed); stops signing at
`retired_at`, when its successor activates; stays published until the last token it signed has expired
(`retired_at` + token lifetime); then it is deleted. A revocation (a key may have leaked) ends every
key's life at once: all are deleted, and their successor signs from the moment it is created.

Keys are numbered by `generation`; the store keeps generations unique, so two replicas that rotate at
the same moment cannot both add a key: one insert fails and that replica keeps the other's key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A fresh key pair: the public JWK (with its kid) and the private key in PEM."""

    kid: str
    public_jwk: Mapping[str, str]
    private_key_pem: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    generation: int
    public_jwk: Mapping[str, str]
    private_key_pem: str = field(repr=False)
    created_at: datetime
    activates_at: datetime
    retired_at: datetime | None = None

    def signs_at(self, now: datetime) -> bool:
        return self.activates_at <= now and (self.retired_at is None or now < self.retired_at)

    def published_at(self, now: datetime, token_lifetime: timedelta) -> bool:
        # The last token this key signed was issued before `retired_at` and expires within the lifetime.
        return self.retired_at is None or now < self.retired_at + token_lifetime


@dataclass(frozen=True, slots=True)
class Rotation:
    """What one rotation changes: a key to add, the key it replaces, and the keys to delete."""

    new_key: SigningKey
    # The newest key so far; it stops signing when `new_key` starts.
    replaced: SigningKey | None
    # Keys no longer published: nothing they signed is still valid, so their private keys can go.
    expired: tuple[str, ...]


def newest(keys: Sequence[SigningKey]) -> SigningKey | None:
    return max(keys, key=lambda k: k.generation, default=None)


def signing_key(keys: Sequence[SigningKey], now: datetime) -> SigningKey | None:
    """The key that signs tokens issued at `now`: the newest one active then."""
    return newest([k for k in keys if k.signs_at(now)])


def published_keys(keys: Sequence[SigningKey], now: datetime, token_lifetime: timedelta) -> list[SigningKey]:
    """The keys a verifier needs at `now`, newest first (the order the contract gives GetJwks)."""
    published = [k for k in keys if k.published_at(now, token_lifetime)]
    return sorted(published, key=lambda k: k.generation, reverse=True)


def rotation_due(keys: Sequence[SigningKey], now: datetime, interval: timedelta) -> bool:
    """Whether periodic rotation should add a key: the newest key is `interval` old. A zero interval
    turns periodic rotation off."""
    if interval <= timedelta(0):
        return False
    latest = newest(keys)
    return latest is None or latest.created_at + interval <= now


def _successor(keys: Sequence[SigningKey], material: KeyMaterial, now: datetime, activates_at: datetime) -> SigningKey:
    """`material` as the key of the next generation, created at `now`."""
    latest = newest(keys)
    return SigningKey(
        kid=material.kid,
        generation=latest.generation + 1 if latest is not None else 1,
        public_jwk=material.public_jwk,
        private_key_pem=material.private_key_pem,
        created_at=now,
        activates_at=activates_at,
    )


def plan_rotation(
    keys: Sequence[SigningKey],
    material: KeyMaterial,
    now: datetime,
    publish_ahead: timedelta,
    token_lifetime: timedelta,
) -> Rotation:
    """Add `material` as the next key: published now, signing from `now + publish_ahead`, when the
    current newest key retires."""
    expired = tuple(k.kid for k in keys if not k.published_at(now, token_lifetime))
    return Rotation(
        new_key=_successor(keys, material, now, now + publish_ahead), replaced=newest(keys), expired=expired
    )


def plan_revocation(keys: Sequence[SigningKey], material: KeyMaterial, now: datetime) -> Rotation:
    """Replace every key with `material`, which signs at once: for a key that may have leaked.

    Every key goes, not only the newest: a leak of one private key is usually a leak of the store that
    holds them all. Tokens they signed stop verifying as soon as verifiers refetch the key set; their
    holders log in again."""
    return Rotation(new_key=_successor(keys, material, now, now), replaced=None, expired=tuple(k.kid for k in keys))
