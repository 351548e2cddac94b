"""Each idempotency claim carries a token, so an attempt can tell its claim from a takeover's.

`chassis_idempotency_records.claim_token`: written by the claim and again by a takeover after the lease;
the operation's transaction, the stored outcome and the release of a key act only on the claim holding
their token. Expand-only: the column is nullable, and the previous release's writes leave it NULL (its
attempts complete and release unconditionally, as they always did).

Revision ID: chassis_0003
Revises: chassis_0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "chassis_0003"
down_revision = "chassis_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chassis_idempotency_records", sa.Column("claim_token", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chassis_idempotency_records") as batch:
        batch.drop_column("claim_token")
