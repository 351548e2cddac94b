"""The orders the counts include, so that a cancelled confirmed order can be taken back out.

Orders counted before this revision are not listed: cancelling one of them later leaves its counts.

Revision ID: recommendations_0002
Revises: recommendations_0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommendations_0002"
down_revision = "recommendations_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counted_orders",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("counted_orders")
