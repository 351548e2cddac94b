"""An index on counted_orders (state, counted_at), for the purge of old CANCELLED marks.

Each purge batch looks for CANCELLED marks recorded before the cutoff; COUNTED marks are kept for good, so
without it every batch read the whole table, every order ever counted, to find a few hundred rows.
Expand-only: the previous release neither reads nor minds the index. On PostgreSQL built CONCURRENTLY, so the
previous release's pods keep counting orders meanwhile; safe to run again after a start that failed half-way.

Revision ID: recommendations_0004
Revises: recommendations_0003
Create Date: 2026-12-09
"""

from __future__ import annotations

from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "recommendations_0004"
down_revision = "recommendations_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently("ix_counted_orders_state_counted_at", "counted_orders", ["state", "counted_at"])


def downgrade() -> None:
    op.drop_index("ix_counted_orders_state_counted_at", "counted_orders")
