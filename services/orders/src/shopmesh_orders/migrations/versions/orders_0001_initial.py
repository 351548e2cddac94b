"""Orders and order lines.

Revision ID: orders_0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "orders_0001"
down_revision = None
branch_labels = ("orders",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("reservation_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("payment_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("cancel_code", sa.String(32), nullable=True),
        sa.Column("cancel_message", sa.String(500), nullable=False, server_default=""),
        sa.Column("reserve_attempted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("charge_attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refunded", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_scope", sa.String(300), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("cancel_key", sa.String(255), nullable=True),
        sa.Column("cancel_request_hash", sa.String(64), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_orders_idempotency"),
    )
    op.create_index("ix_orders_user_created", "orders", ["user_id", "created_at", "id"])
    op.create_index("ix_orders_step", "orders", ["step"])
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("product_name", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("order_lines")
    op.drop_index("ix_orders_step", "orders")
    op.drop_index("ix_orders_user_created", "orders")
    op.drop_table("orders")
