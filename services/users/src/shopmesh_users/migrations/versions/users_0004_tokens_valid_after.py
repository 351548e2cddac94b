"""users.tokens_valid_after: when each user last signed out; tokens issued at or before it are revoked.

SignOut sets it; the gateway reads it (GetTokenCutoff) and refuses older tokens; Login stamps a token's iat
after it (docs/auth.md, "Signing out").

Expand-only: a nullable column (NULL: never signed out). The previous release neither reads nor writes it:
during a rollout, its pods answer no SignOut (UNIMPLEMENTED, which the gateway relays) and their logins may
stamp a token within the second of a sign-out, which the gateway then refuses as revoked (sign in again).
Their GetTokenCutoff is UNIMPLEMENTED too, which the gateway takes as users unavailable: failing open (the
default), the user is taken as not signed out; failing closed, the call is refused UNAVAILABLE. So turn
TOKEN_CUTOFF_FAIL_CLOSED=true on only once every users pod runs this release, never during its rollout:
every signed-in call whose cutoff fetch reached an old pod would be refused.

Revision ID: users_0004
Revises: users_0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0004"
down_revision = "users_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("tokens_valid_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tokens_valid_after")
