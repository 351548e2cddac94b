"""orders.waiting_version: the order's version when its last saga driver gave up on a dependency.

What `shopmesh_orders_waiting_for_dependency{step}` counts (OrderRepository.waiting_for_dependency): orders whose
saga waits for inventory or payments at a step, during an outage, before any of them ends cancelled. A count of
unfinished orders alone would count every checkout in flight; a lease held or free says nothing either (a
recovery pass holds a waiting order for the whole of a step's retries).

Expand-only: a nullable column without default, a catalog change on PostgreSQL (the exclusive lock only for
that, under the migrations' lock_timeout). The previous release neither reads nor writes it, and its saves bump
`version` as this release's do, so an order it moves on is no longer counted.

Revision ID: orders_0005
Revises: orders_0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "orders_0005"
down_revision = "orders_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("waiting_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("waiting_version")
