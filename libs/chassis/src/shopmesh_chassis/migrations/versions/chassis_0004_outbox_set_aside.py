"""Outbox rows NATS refuses for good are set aside, so that the events behind them go on.

`chassis_outbox_events.failed_at` and `.error`: the relay sets both on an event JetStream will never take
(larger than the server's max_payload or the stream's max message size) and skips it from then on; an
operator re-sends it (both back to NULL) or deletes it (docs/operations.md). Expand-only: both nullable,
and the previous release neither writes nor reads them (its relay retries such a row, as it always did).
The index on `failed_at` lets the relay count the set-aside rows without reading the unpublished ones.

Revision ID: chassis_0004
Revises: chassis_0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "chassis_0004"
down_revision = "chassis_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On PostgreSQL the index build below commits the columns first, and a start that ends during the build
    # (which waits for every older snapshot) runs this again: IF NOT EXISTS, or every later start fails on
    # "column already exists". SQLite runs it all in one transaction (and knows no ADD COLUMN IF NOT EXISTS).
    rerun = op.get_bind().dialect.name == "postgresql"
    failed_at = sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True)
    op.add_column("chassis_outbox_events", failed_at, if_not_exists=rerun)
    op.add_column("chassis_outbox_events", sa.Column("error", sa.Text, nullable=True), if_not_exists=rerun)
    # Concurrently: the outbox takes every state change's events while it builds.
    create_index_concurrently("ix_chassis_outbox_failed", "chassis_outbox_events", ["failed_at"])


def downgrade() -> None:
    op.drop_index("ix_chassis_outbox_failed", "chassis_outbox_events")
    with op.batch_alter_table("chassis_outbox_events") as batch:
        batch.drop_column("error")
        batch.drop_column("failed_at")
