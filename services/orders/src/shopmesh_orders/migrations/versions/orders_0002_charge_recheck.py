"""A cancelled order whose charge may have landed after compensation asked payments is checked again.

`orders.charge_recheck_at`: when to ask payments once more whether the order's charge was captured (and
refund it); NULL once asked, and for every order whose charge was never in doubt. Expand-only: the column
is nullable, so the previous release's writes leave it NULL.

Cancelled orders from before this revision that got as far as the charge and were not refunded are due at
once: compensation used to ask payments without waiting for the charge to settle, so a capture that landed
afterwards may be sitting on one of them. Each is checked once, oldest first.

On PostgreSQL the previous release's pods keep serving `orders` while this runs: only the ADD COLUMN
(nullable, no default: a change of the catalog, not of the rows) takes the table's exclusive lock, for an
instant, and commits; the index is built CONCURRENTLY and the backfill runs in short batches, neither
stopping reads or writes. Those steps commit as they go, so each is safe to run again after a start that
failed half-way (a lock timeout: `shopmesh_chassis.migrations`).

Revision ID: orders_0002
Revises: orders_0001
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shopmesh_chassis.migrations import create_index_concurrently

revision = "orders_0002"
down_revision = "orders_0001"
branch_labels = None
depends_on = None


_DUE = "state = 'CANCELLED' AND charge_attempted_at IS NOT NULL AND NOT refunded"
_BACKFILL_BATCH = 5000


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.add_column("orders", sa.Column("charge_recheck_at", sa.DateTime(timezone=True), nullable=True))
        op.create_index("ix_orders_charge_recheck_at", "orders", ["charge_recheck_at"])
        op.execute(sa.text(f"UPDATE orders SET charge_recheck_at = charge_attempted_at WHERE {_DUE}"))
        return
    op.execute(sa.text("ALTER TABLE orders ADD COLUMN IF NOT EXISTS charge_recheck_at TIMESTAMP WITH TIME ZONE"))
    create_index_concurrently("ix_orders_charge_recheck_at", "orders", ["charge_recheck_at"])
    with op.get_context().autocommit_block():
        _backfill(op.get_bind())


def _backfill(connection: sa.Connection) -> None:
    # By primary-key ranges, each UPDATE its own transaction: a row is locked only while its batch runs.
    after = ""
    while True:
        upto = connection.scalar(
            sa.text("SELECT max(id) FROM (SELECT id FROM orders WHERE id > :after ORDER BY id LIMIT :batch) ids"),
            {"after": after, "batch": _BACKFILL_BATCH},
        )
        if upto is None:
            return
        connection.execute(
            sa.text(
                "UPDATE orders SET charge_recheck_at = charge_attempted_at"
                f" WHERE id > :after AND id <= :upto AND {_DUE} AND charge_recheck_at IS NULL"
            ),
            {"after": after, "upto": upto},
        )
        after = upto


def downgrade() -> None:
    op.drop_index("ix_orders_charge_recheck_at", "orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("charge_recheck_at")
