"""signing_keys.token_lifetime_seconds: the longest lifetime of a token each key signed.

A retired key stays published until the last token it signed has expired. That used to be judged with the
current TOKEN_LIFETIME_SECONDS, so lowering it dropped keys whose tokens, signed under the longer one, were
still valid ("signed by an unknown key"). Each key now records the lifetime it signs with, raised before it
signs a longer-lived token, and is judged by that (docs/auth.md).

Keys from before this revision have no record (NULL): the lifetime they signed with is not known, so they
count as having signed with the longest the settings allow, a day; at worst a retired key stays published
a day after it retired. Expand-only: a nullable column without default, a catalog change on PostgreSQL (the
exclusive lock only for that, under the migrations' lock_timeout). The previous release neither reads nor
writes it: the keys it adds during a rollout have no record either, and count as the existing ones.

Revision ID: users_0002
Revises: users_0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0002"
down_revision = "users_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("signing_keys", sa.Column("token_lifetime_seconds", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("token_lifetime_seconds")
