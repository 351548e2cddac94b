"""login_attempts: each e-mail's login attempts, shared by the replicas instead of kept in each one's memory.

Login throttling per e-mail address was a token bucket in each replica's memory: with N replicas an address
got N times the budget, and a restart refilled it. The buckets now live in this table (docs/auth.md, "Login
throttling"), one row per address whose bucket is not full, keyed by the e-mail's SHA-256; a periodic prune
deletes the rows whose bucket has refilled since (found by the updated_at index).

Expand-only: a new table, with its index built in the same migration (nobody reads it yet). The previous
release neither reads nor writes it: during a rollout its pods keep throttling in their own memory, beside
the new pods' shared buckets.

Revision ID: users_0003
Revises: users_0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0003"
down_revision = "users_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("email_key", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_login_attempts_updated_at", "login_attempts", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_login_attempts_updated_at", table_name="login_attempts")
    op.drop_table("login_attempts")
