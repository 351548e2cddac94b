"""Index processed events by age, for the purge of ids past their retention.

Revision ID: chassis_0002
Revises: chassis_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "chassis_0002"
down_revision = "chassis_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Expand-only: a release without the purge runs on it as before. On a table that grew for months (ids
    # were never deleted before) the build takes a while, once: concurrently, so that the older replicas'
    # consumers go on inserting meanwhile, and a long transaction on the table delays it instead of failing
    # the start under migrate()'s lock timeout.
    columns = ["consumer", "processed_at"]
    create_index_concurrently("ix_chassis_processed_events_age", "chassis_processed_events", columns)


def downgrade() -> None:
    op.drop_index("ix_chassis_processed_events_age", "chassis_processed_events")
