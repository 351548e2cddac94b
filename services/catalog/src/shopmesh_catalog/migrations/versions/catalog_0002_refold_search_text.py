"""Products' search text recomputed with the current fold, and their names and descriptions composed (NFC).

`fold` (domain/search.py) now drops the dot case folding gives a dotted capital I and the characters drawn as
nothing, so `search_name` and `search_description` stored by an earlier release may hold what no query folds
to any more ("i" and U+0307 for "İ": "İSTANBUL" not found by "istanbul"). Loads now store names and
descriptions composed; the ones stored before are composed here too, where that keeps a name within its
column (NFC lengthens a few characters: a name it would take past 200 is left as it is).

Computed in Python (fold is Python's Unicode, not SQL's) and written only where a value changes. Expand-only:
no schema change; the previous release's pods read the same columns, and their queries find what they found
before, but for one with a dotted capital I or an invisible character in it (folded the old way, it no longer
matches the rows that had one). A product the previous release's pods add after this ran (a seed load of a
product the new release's pods have not loaded) keeps the old fold.
On PostgreSQL in batches by id, each its own transaction (no row locked longer than its batch, reads go on),
safe to run again after a start that failed half-way; SQLite in the migration's transaction.

It imports the live `fold`, not a copy frozen at this release's: a later change to `fold` comes with its own
migration that refolds the stored text again, and a database replaying this one with that later fold (a new
install, one upgraded across both) gets the later fold's text at once, which the later migration then leaves
as it is. That is intended.

Revision ID: catalog_0002
Revises: catalog_0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

from shopmesh_catalog.domain.search import fold

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None

_BATCH = 500
_MAX_NAME_LENGTH = 200  # the name column's length (catalog_0001)
_READ = sa.text(
    "SELECT id, name, description, search_name, search_description FROM products WHERE id > :after ORDER BY id"
    " LIMIT :batch"
)
_WRITE = sa.text(
    "UPDATE products SET name = :name, description = :description, search_name = :search_name,"
    " search_description = :search_description WHERE id = :id"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _refold(op.get_bind())
        return
    with op.get_context().autocommit_block():
        _refold(op.get_bind())


def _refold(connection: sa.Connection) -> None:
    after = ""
    while rows := connection.execute(_READ, {"after": after, "batch": _BATCH}).all():
        changed = [values for row in rows if (values := _recomputed(row)) is not None]
        if changed:
            connection.execute(_WRITE, changed)
        after = rows[-1].id


def _recomputed(row: sa.Row[tuple[str, str, str, str, str]]) -> dict[str, str] | None:
    name = unicodedata.normalize("NFC", row.name)
    if len(name) > _MAX_NAME_LENGTH:
        name = row.name
    description = unicodedata.normalize("NFC", row.description)
    values = {
        "id": row.id,
        "name": name,
        "description": description,
        "search_name": fold(name),
        "search_description": fold(description),
    }
    stored = {"id": row.id, "name": row.name, "description": row.description}
    stored |= {"search_name": row.search_name, "search_description": row.search_description}
    return None if values == stored else values


def downgrade() -> None:
    # The previous fold's values are not kept: the previous release reads these, and finds a little more.
    pass
