"""Tables the chassis keeps in every service's database (migrated by the `chassis` Alembic branch)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# The width of an idempotency record's scope (`idempotency.scope_for`).
IDEMPOTENCY_SCOPE_LENGTH = 300

# Stored outcomes of idempotent requests (Stripe's semantics; see `idempotency`).
idempotency_records = Table(
    "chassis_idempotency_records",
    metadata,
    Column("scope", String(IDEMPOTENCY_SCOPE_LENGTH), primary_key=True),  # caller, user and method
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # in_progress | completed
    Column("status_code", Integer, nullable=True),  # gRPC code of the stored outcome
    Column("response", LargeBinary, nullable=True),  # serialized response message (OK)
    Column("status", LargeBinary, nullable=True),  # serialized google.rpc.Status (errors)
    Column("locked_until", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Whose claim this is: set by the claim and by a takeover; NULL on rows of releases before it.
    Column("claim_token", String(32), nullable=True),
    Index("ix_chassis_idempotency_created_at", "created_at"),
)

# The transactional outbox: events written in the same transaction as the state change they describe.
outbox_events = Table(
    "chassis_outbox_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("subject", String(200), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),  # JSON object: traceparent, content type, ...
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    # Set aside by the relay: NATS refuses this event for good (too large); it waits for an operator, and the
    # events behind it go on (docs/operations.md). NULL on every other row.
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),  # why it was refused, as NATS said it
    Index("ix_chassis_outbox_unpublished", "published_at", "seq"),
    # The set-aside rows' count reads only them: NULLs are the rest.
    Index("ix_chassis_outbox_failed", "failed_at"),
)

# Events a consumer has applied: the consumer-side half of exactly-once effects.
processed_events = Table(
    "chassis_processed_events",
    metadata,
    Column("consumer", String(100), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    # The purge of ids past their retention reads by age (consumer.purge_processed).
    Index("ix_chassis_processed_events_age", "consumer", "processed_at"),
)
