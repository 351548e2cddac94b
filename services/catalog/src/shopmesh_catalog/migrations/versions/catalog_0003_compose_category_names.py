"""Categories' display names composed (NFC), as loads now store them.

A name stored decomposed by an earlier release (a seed file saved on macOS) was listed, and sorted, apart
from the same name typed composed. Composed here where that keeps it within its column (NFC lengthens a few
characters: a name it would take past 200 is left as it is), and written only where it changes.

Expand-only: no schema change; the previous release's pods read the same column. At most 100 categories are
stored (validation.MAX_CATEGORIES), so one pass in the migration's transaction locks them only as long as
that few updates take. Safe to run again.

Revision ID: catalog_0003
Revises: catalog_0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "catalog_0003"
down_revision = "catalog_0002"
branch_labels = None
depends_on = None

_MAX_NAME_LENGTH = 200  # the display_name column's length (catalog_0001)
_READ = sa.text("SELECT id, display_name FROM categories")
_WRITE = sa.text("UPDATE categories SET display_name = :display_name WHERE id = :id")


def upgrade() -> None:
    connection = op.get_bind()
    changed = [
        {"id": row.id, "display_name": name}
        for row in connection.execute(_READ)
        if (name := unicodedata.normalize("NFC", row.display_name)) != row.display_name
        and len(name) <= _MAX_NAME_LENGTH
    ]
    if changed:
        connection.execute(_WRITE, changed)


def downgrade() -> None:
    # The decomposed form is not kept: composed, the previous release lists the same names.
    pass
