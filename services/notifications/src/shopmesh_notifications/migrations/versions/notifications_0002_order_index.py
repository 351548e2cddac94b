"""An index on notifications.order_id, for the intake's look for an order's cancellation.

A confirmation applied after its order's cancellation sends no e-mail; the intake finds the cancellation by
order id. Expand-only: the previous release neither reads nor minds the index. On PostgreSQL it is built
CONCURRENTLY, so the previous release's pods keep writing notifications meanwhile; safe to run again after
a start that failed half-way.

Revision ID: notifications_0002
Revises: notifications_0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "notifications_0002"
down_revision = "notifications_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently("ix_notifications_order", "notifications", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_order", "notifications")
