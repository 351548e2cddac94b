"""Index processed events by age, for the purge of ids past their retention.

Revision ID: chassis_0002
Revises: chassis_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "chassis_0002"
down_revision = "chassis_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Expand-only: a release without the purge runs on it as before. Built inside the migration's
    # transaction: on a table that grew for months (ids were never deleted before) that takes a while,
    # once, and an older replica's consumer inserts wait for it meanwhile rather than fail.
    op.create_index("ix_chassis_processed_events_age", "chassis_processed_events", ["consumer", "processed_at"])


def downgrade() -> None:
    op.drop_index("ix_chassis_processed_events_age", "chassis_processed_events")
