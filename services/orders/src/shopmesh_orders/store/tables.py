from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("email", String(254), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("address", Text, nullable=False),  # JSON: the shipping address as given
    Column("state", String(16), nullable=False),
    Column("step", String(16), nullable=False),
    Column("reservation_id", String(64), nullable=False, default=""),
    Column("payment_id", String(64), nullable=False, default=""),
    Column("cancel_code", String(32), nullable=True),
    Column("cancel_message", String(500), nullable=False, default=""),
    Column("reserve_attempted", Boolean, nullable=False, default=False),
    Column("charge_attempted_at", DateTime(timezone=True), nullable=True),
    Column("refunded", Boolean, nullable=False, default=False),
    # A cancelled order whose charge was in doubt when compensation asked payments: when to ask again
    # (refunding a capture that landed late); NULL once checked, and for every other order.
    Column("charge_recheck_at", DateTime(timezone=True), nullable=True),
    # Cancelled for INSUFFICIENT_STOCK: the short products inventory named (comma-separated, as it listed
    # them) and how many are short in all; NULL for every other order.
    Column("short_product_ids", Text, nullable=True),
    Column("short_count", Integer, nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # PlaceOrder's idempotency: the order is the stored outcome of its key.
    Column("idempotency_scope", String(300), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    # CancelOrder's idempotency: the key that cancelled this order.
    Column("cancel_key", String(255), nullable=True),
    Column("cancel_request_hash", String(64), nullable=True),
    # Which saga driver works on the order, until when.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    # The order's `version` when its last driver gave up on a dependency (it waits for one at its step); any save
    # bumps `version`, so the mark holds only until the order moves on, whichever release moves it. NULL when
    # its last driver did not give up so (it finished a step, or failed with an error of the order's own).
    Column("waiting_version", Integer, nullable=True),
    # The W3C trace context of the PlaceOrder that recorded the order (JSON; tracing.stored_context_column):
    # the recovery loop drives the order in that trace. NULL for orders recorded before orders kept it.
    Column("trace_context", Text, nullable=True),
    UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_orders_idempotency"),
    Index("ix_orders_user_created", "user_id", "created_at", "id"),
    Index("ix_orders_step", "step"),
    Index("ix_orders_charge_recheck_at", "charge_recheck_at"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(64), ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("product_id", String(64), nullable=False),
    Column("product_name", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
)
