"""Inventory tables: stock, reservations, reservation items.

Revision ID: inventory_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "inventory_0001"
down_revision = None
branch_labels = ("inventory",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stock",
        sa.Column("product_id", sa.String(64), primary_key=True),
        sa.Column("on_hand", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False),
        sa.CheckConstraint("on_hand >= 0", name="ck_stock_on_hand_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
        sa.CheckConstraint("reserved <= on_hand", name="ck_stock_reserved_within_on_hand"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("order_id", name="uq_reservations_order_id"),
    )
    op.create_index("ix_reservations_state_expires_at", "reservations", ["state", "expires_at"])
    op.create_table(
        "reservation_items",
        sa.Column("reservation_id", sa.String(64), sa.ForeignKey("reservations.id"), primary_key=True),
        sa.Column("product_id", sa.String(64), primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
    )
    op.create_index("ix_reservation_items_product_id", "reservation_items", ["product_id"])


def downgrade() -> None:
    op.drop_index("ix_reservation_items_product_id", "reservation_items")
    op.drop_table("reservation_items")
    op.drop_index("ix_reservations_state_expires_at", "reservations")
    op.drop_table("reservations")
    op.drop_table("stock")
