"""Retention of finished reservations: what is left of a purged one, and finished ones by age.

`purged_reservations` keeps the order, id and final state of each reservation the purge deletes past
RESERVATION_RETENTION_SECONDS (without its items), so that a replayed Reserve for the order is refused
instead of reserving again. `ix_reservations_updated_at` finds the finished reservations that ended before
the cutoff, a batch at a time.

Expand-only: a new table, and an index the previous release does not use. On PostgreSQL built CONCURRENTLY:
the previous release's pods keep reserving meanwhile; safe to run again after a start that failed half-way
(the table is created IF NOT EXISTS: the build's autocommit block commits it first).

Revision ID: inventory_0003
Revises: inventory_0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "inventory_0003"
down_revision = "inventory_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "purged_reservations",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("reservation_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("reservation_id", name="uq_purged_reservations_reservation_id"),
        # On PostgreSQL the index build below commits the table first, and a start that ends during the build
        # (which waits for every older snapshot) runs this again: without it every later start would fail
        # on "relation already exists".
        if_not_exists=True,
    )
    create_index_concurrently("ix_reservations_updated_at", "reservations", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_reservations_updated_at", "reservations")
    op.drop_table("purged_reservations")
