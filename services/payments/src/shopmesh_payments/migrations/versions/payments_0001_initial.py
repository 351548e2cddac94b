"""Payments tables: payments, the order-charge guard, the fake processor's ledger.

Revision ID: payments_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "payments_0001"
down_revision = None
branch_labels = ("payments",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("card_last4", sa.String(4), nullable=False),
        sa.Column("decline_reason", sa.String(32), nullable=False),
        sa.Column("refund_reason", sa.String(500), nullable=False),
        sa.Column("processor_charge_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_payments_order_id_created_at_id", "payments", ["order_id", "created_at", "id"])
    op.create_table(
        "order_charges",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("payment_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "processor_charges",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("card_last4", sa.String(4), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("decline_code", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_processor_charges_reference", "processor_charges", ["reference"])


def downgrade() -> None:
    op.drop_index("ix_processor_charges_reference", "processor_charges")
    op.drop_table("processor_charges")
    op.drop_table("order_charges")
    op.drop_index("ix_payments_order_id_created_at_id", "payments")
    op.drop_table("payments")
