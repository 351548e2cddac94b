"""The inventory tables; `migrations/versions` creates the same schema."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)

metadata = MetaData()

stock = Table(
    "stock",
    metadata,
    Column("product_id", String(64), primary_key=True),
    Column("on_hand", Integer, nullable=False),
    # Units held by PENDING reservations, including overdue ones until they are swept.
    Column("reserved", Integer, nullable=False),
    # The last line of defence against overselling; the conditional updates never get here.
    CheckConstraint("on_hand >= 0", name="ck_stock_on_hand_not_negative"),
    CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
    CheckConstraint("reserved <= on_hand", name="ck_stock_reserved_within_on_hand"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Reserve is idempotent by order: concurrent duplicates collide here.
    UniqueConstraint("order_id", name="uq_reservations_order_id"),
    # Which PENDING reservations are past expires_at (the sweep, GetStock, Reserve's retry, SetStock)? Only
    # the pending ones, however many finished reservations pile up: its statistics are of them alone, so the
    # planner never prefers a popular product's items (all its reservations ever). The queries name the state
    # as this literal, for the planner to see that the index holds every row they want (inventory_0002).
    Index(
        "ix_reservations_pending_expires_at",
        "expires_at",
        postgresql_where=text("state = 'PENDING'"),
        sqlite_where=text("state = 'PENDING'"),
    ),
    # The previous release's index for that question, left for its pods during a rollout; a later one drops it.
    Index("ix_reservations_state_expires_at", "state", "expires_at"),
    # Which finished reservations ended before the retention's cutoff (the purge, inventory_0003)?
    Index("ix_reservations_updated_at", "updated_at"),
)

reservation_items = Table(
    "reservation_items",
    metadata,
    Column("reservation_id", String(64), ForeignKey("reservations.id"), primary_key=True),
    Column("product_id", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Index("ix_reservation_items_product_id", "product_id"),
)

# What is left of a reservation the purge deleted past RESERVATION_RETENTION_SECONDS: its order (Reserve is
# idempotent by order, and must never reserve for it again), its id and the state it ended in (a late Commit,
# Release or GetReservation is told it was purged, and how it ended). One narrow row per order, none per item:
# a product's history of items is what the purge bounds.
purged_reservations = Table(
    "purged_reservations",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("reservation_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("purged_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("reservation_id", name="uq_purged_reservations_reservation_id"),
)
