"""A cancelled order whose charge may have landed after compensation asked payments is checked again.

`orders.charge_recheck_at`: when to ask payments once more whether the order's charge was captured (and
refund it); NULL once asked, and for every order whose charge was never in doubt. Expand-only: the column
is nullable, so the previous release's writes leave it NULL.

Cancelled orders from before this revision that got as far as the charge and were not refunded are due at
once: compensation used to ask payments without waiting for the charge to settle, so a capture that landed
afterwards may be sitting on one of them. Each is checked once, oldest first.

Revision ID: orders_0002
Revises: orders_0001
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "orders_0002"
down_revision = "orders_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("charge_recheck_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_orders_charge_recheck_at", "orders", ["charge_recheck_at"])
    op.execute(
        sa.text(
            "UPDATE orders SET charge_recheck_at = charge_attempted_at"
            " WHERE state = 'CANCELLED' AND charge_attempted_at IS NOT NULL AND NOT refunded"
        )
    )


def downgrade() -> None:
    op.drop_index("ix_orders_charge_recheck_at", "orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("charge_recheck_at")
