"""An order cancelled for INSUFFICIENT_STOCK keeps what inventory said: which products are short.

`orders.short_product_ids` (the short products, comma-separated, as inventory listed them: the first ones,
whole ids, when they are many) and `orders.short_count` (how many are short in all), so that PlaceOrder and
its retries, which answer from the stored order, name them. NULL for every other order, and for the ones
cancelled before this revision (their answer names no products, as before).

Expand-only: both columns are nullable, so the previous release's writes leave them NULL (or as they are).
On PostgreSQL an ADD COLUMN that is nullable with no default changes the catalog, not the rows: it holds
the table's exclusive lock for an instant (under the migrations' lock_timeout), and the previous release's
pods keep serving `orders`. No index, no backfill: the migration is its own transaction, rerun whole after
a start that failed.

Revision ID: orders_0003
Revises: orders_0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "orders_0003"
down_revision = "orders_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("short_product_ids", sa.Text(), nullable=True))
    op.add_column("orders", sa.Column("short_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("short_count")
        batch.drop_column("short_product_ids")
