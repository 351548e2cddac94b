"""Co-purchase counts, users' purchases, product popularity.

Revision ID: recommendations_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommendations_0001"
down_revision = None
branch_labels = ("recommendations",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "co_purchases",
        sa.Column("product_id", sa.String(64), primary_key=True),
        sa.Column("other_product_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "user_purchases",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("product_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "product_purchases",
        sa.Column("product_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ix_product_purchases_count", "product_purchases", ["count", "product_id"])


def downgrade() -> None:
    op.drop_index("ix_product_purchases_count", "product_purchases")
    op.drop_table("product_purchases")
    op.drop_table("user_purchases")
    op.drop_table("co_purchases")
