from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

notifications = Table(
    "notifications",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", String(500), nullable=False),
    Column("failure_reason", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    # JSON: the W3C trace context (traceparent, tracestate) the sender's span continues; NULL for rows
    # recorded before notifications_0003 or by the release before it.
    Column("trace_context", Text, nullable=True),
    # The contract's promise, kept by the database too: one notification per event and channel.
    UniqueConstraint("event_id", "channel", name="uq_notifications_event_channel"),
    Index("ix_notifications_user_created", "user_id", "created_at", "id"),
    Index("ix_notifications_due", "state", "next_attempt_at"),
    # A late confirmation looks for its order's cancellation (notifications_0002).
    Index("ix_notifications_order", "order_id"),
)
