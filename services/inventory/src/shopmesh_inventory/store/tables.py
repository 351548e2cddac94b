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
    # The sweep's and GetStock's question: which PENDING reservations are past expires_at?
    Index("ix_reservations_state_expires_at", "state", "expires_at"),
)

reservation_items = Table(
    "reservation_items",
    metadata,
    Column("reservation_id", String(64), ForeignKey("reservations.id"), primary_key=True),
    Column("product_id", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Index("ix_reservation_items_product_id", "product_id"),
)
