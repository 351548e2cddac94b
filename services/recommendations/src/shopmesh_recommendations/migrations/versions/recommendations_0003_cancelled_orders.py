"""Orders cancelled before they were counted are remembered, so that a late confirmation is not counted.

A confirmation can arrive after its order's cancellation: a retried or parked event, or two replicas on one
consumer.

`counted_orders` gets a `state`: COUNTED (the counts include the order; every row before this revision)
or CANCELLED (the counts do not include it, and never will again). Expand-only: the column has a default,
so the previous release's inserts still read as COUNTED.

Revision ID: recommendations_0003
Revises: recommendations_0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommendations_0003"
down_revision = "recommendations_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("counted_orders", sa.Column("state", sa.String(16), nullable=False, server_default="COUNTED"))


def downgrade() -> None:
    # What a CANCELLED row stands for cannot be kept without the column: those rows go, as before they existed.
    op.execute(sa.text("DELETE FROM counted_orders WHERE state = 'CANCELLED'"))
    with op.batch_alter_table("counted_orders") as batch:
        batch.drop_column("state")
