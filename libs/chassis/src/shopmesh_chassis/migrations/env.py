"""The Alembic environment of every shopmesh service; see `shopmesh_chassis.migrations`."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    # SQLite cannot ALTER most things; batch mode rebuilds tables so one migration fits both databases.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
