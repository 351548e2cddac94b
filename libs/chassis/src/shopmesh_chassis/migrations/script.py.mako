"""${message}

Expand-only: say why the previous release's pods keep working beside this schema (what they still read and
write), and whether it is safe to run again (docs/chassis.md, "Migrations are expand-only").

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date.date().isoformat()}
"""

from __future__ import annotations
% if upgrades:

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
% endif

revision = "${up_revision}"
down_revision = ${'"%s"' % down_revision if isinstance(down_revision, str) else repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
% if upgrades:
    ${upgrades}
% else:
    # Until written, every start that migrates fails here: an empty revision, once recorded as applied in a
    # database, would never run the change written into it later.
    raise NotImplementedError("${up_revision}: write upgrade() with alembic.op (from alembic import op)")
% endif


def downgrade() -> None:
% if downgrades:
    ${downgrades}
% else:
    raise NotImplementedError("${up_revision}: write downgrade(), or say in a comment why it does nothing")
% endif
