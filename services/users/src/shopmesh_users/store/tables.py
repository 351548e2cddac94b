"""The users service's tables (migrated by the `users` Alembic branch; this metadata mirrors the
migrations)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("display_name", String(50), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Tokens issued at or before it are revoked (SignOut sets it; docs/auth.md, "Signing out"). NULL: the user
    # never signed out (users_0004).
    Column("tokens_valid_after", DateTime(timezone=True), nullable=True),
    # The one guard against duplicate accounts, also when two registrations race.
    UniqueConstraint("email", name="uq_users_email"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
    # Stored unencrypted: encrypting keys at rest (a KMS or a key-encryption key from a secret) is out
    # of scope here; the database's own access control is what protects them.
    Column("private_key_pem", Text, nullable=False),
    # The public key as the JWK that GetJwks serves (JSON).
    Column("public_jwk", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activates_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    # The longest lifetime (seconds) of a token the key signed: how long it stays published after it
    # retires. NULL for keys from before users_0002: a day, the longest the settings allow.
    Column("token_lifetime_seconds", Integer, nullable=True),
    # Two replicas rotating at once both try the next generation; only one insert succeeds.
    UniqueConstraint("generation", name="uq_signing_keys_generation"),
)

# Login attempts per e-mail address (domain/failed_logins.py), shared by the replicas. A row is a bucket
# that is not full; one missing is full. Rows whose bucket is full again are pruned (users_0003).
login_attempts = Table(
    "login_attempts",
    metadata,
    # SHA-256 of the normalized e-mail, hex: not the address itself, and bounded however long that is.
    Column("email_key", String(64), primary_key=True),
    # The attempts left at updated_at; a fraction while refilling.
    Column("tokens", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The prune finds full buckets by it.
    Index("ix_login_attempts_updated_at", "updated_at"),
)
