"""The schedule of the token-signing keys: which key signs now, which keys are published, when to rotate.

A key's life: created and published in the JWKS at once; signs from `activates_at` (publish-ahead later,
so verifiers that cache the JWKS have it before they meet a token it signed); stops signing at
`retired_at`, when its successor activates; stays published until the last token it signed has expired
(`retired_at` + the longest lifetime it signed with, recorded per key: the setting may have changed
since); then it is deleted. A revocation (a key may have leaked) ends every key's life at once: all are
deleted, and their successor signs from the moment it is created.

Keys are numbered by `generation`; the store keeps generations unique, so two replicas that rotate at
the same moment cannot both add a key: one insert fails and that replica keeps the other's key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# The longest token lifetime the settings allow: what a key stored before its own lifetime was recorded
# may have signed with.
LONGEST_TOKEN_LIFETIME = timedelta(days=1)


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
    # The longest lifetime of a token this key signed: recorded before the key signs one that lives
    # longer, so the setting can change (a restart, a rollout) without a token outliving its key's
    # publication. None for keys stored before it was recorded (or by a release that does not record it).
    token_lifetime: timedelta | None = None
    retired_at: datetime | None = None

    def signs_at(self, now: datetime) -> bool:
        return self.activates_at <= now and (self.retired_at is None or now < self.retired_at)

    def covers(self, token_lifetime: timedelta) -> bool:
        """Whether this key's record already allows tokens of `token_lifetime`."""
        return self.token_lifetime is None or token_lifetime <= self.token_lifetime

    def published_until(self) -> datetime | None:
        """When the last token this key signed expires (None while it may still sign): it was issued
        before `retired_at` with at most the recorded lifetime. Never the current setting: tokens signed
        under an earlier, longer one would lose their key early."""
        if self.retired_at is None:
            return None
        lifetime = self.token_lifetime if self.token_lifetime is not None else LONGEST_TOKEN_LIFETIME
        return self.retired_at + lifetime

    def published_at(self, now: datetime) -> bool:
        until = self.published_until()
        return until is None or now < until


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


def published_keys(keys: Sequence[SigningKey], now: datetime) -> list[SigningKey]:
    """The keys a verifier needs at `now`, newest first (the order the contract gives GetJwks)."""
    published = [k for k in keys if k.published_at(now)]
    return sorted(published, key=lambda k: k.generation, reverse=True)


def rotation_due(keys: Sequence[SigningKey], now: datetime, interval: timedelta) -> bool:
    """Whether periodic rotation should add a key: the newest key is `interval` old. A zero interval
    turns periodic rotation off."""
    if interval <= timedelta(0):
        return False
    latest = newest(keys)
    return latest is None or latest.created_at + interval <= now


def _successor(
    keys: Sequence[SigningKey], material: KeyMaterial, now: datetime, activates_at: datetime, token_lifetime: timedelta
) -> SigningKey:
    """`material` as the key of the next generation, created at `now`, to sign tokens of `token_lifetime`."""
    latest = newest(keys)
    return SigningKey(
        kid=material.kid,
        generation=latest.generation + 1 if latest is not None else 1,
        public_jwk=material.public_jwk,
        private_key_pem=material.private_key_pem,
        created_at=now,
        activates_at=activates_at,
        token_lifetime=token_lifetime,
    )


def plan_rotation(
    keys: Sequence[SigningKey],
    material: KeyMaterial,
    now: datetime,
    publish_ahead: timedelta,
    token_lifetime: timedelta,
) -> Rotation:
    """Add `material` as the next key: published now, signing tokens of `token_lifetime` from
    `now + publish_ahead`, when the current newest key retires."""
    expired = tuple(k.kid for k in keys if not k.published_at(now))
    new_key = _successor(keys, material, now, now + publish_ahead, token_lifetime)
    return Rotation(new_key=new_key, replaced=newest(keys), expired=expired)


def plan_revocation(
    keys: Sequence[SigningKey], material: KeyMaterial, now: datetime, token_lifetime: timedelta
) -> Rotation:
    """Replace every key with `material`, which signs at once: for a key that may have leaked.

    Every key goes, not only the newest: a leak of one private key is usually a leak of the store that
    holds them all. Tokens they signed stop verifying as soon as verifiers refetch the key set; their
    holders log in again."""
    new_key = _successor(keys, material, now, now, token_lifetime)
    return Rotation(new_key=new_key, replaced=None, expired=tuple(k.kid for k in keys))
