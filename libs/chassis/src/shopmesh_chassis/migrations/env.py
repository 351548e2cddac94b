"""The Alembic environment of every shopmesh service; see `shopmesh_chassis.migrations`."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    # SQLite cannot ALTER most things; batch mode rebuilds tables so one migration fits both databases.
    render_as_batch=connection.dialect.name == "sqlite",
    # migrate() decides: one transaction for all on SQLite, one per migration on PostgreSQL (so that a
    # migration can build an index CONCURRENTLY in `autocommit_block()` and none holds its locks for the
    # next ones).
    transaction_per_migration=context.config.attributes.get("transaction_per_migration", False),
)
with context.begin_transaction():
    context.run_migrations()
