"""orders_0002 (the charge recheck) on a database the previous release keeps serving: the backfill marks
the orders whose charge may have landed after their cancellation, and on PostgreSQL the previous
release's pods go on reading `orders` while it runs (a rolling update)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import eventually, migrate_to
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.wiring import VERSIONS

INSERT_ORDERS = (
    "INSERT INTO orders (id, user_id, email, currency, address, state, step, version, created_at, updated_at,"
    " idempotency_scope, idempotency_key, request_hash, charge_attempted_at, refunded)"
    " SELECT 'o' || g, 'u' || (g % 1000), 'a@example.com', 'USD', repeat('x', 200),"
    " CASE WHEN g % 2 = 0 THEN 'CANCELLED' ELSE 'CONFIRMED' END, 'DONE', 1, {now}, {now}, 's', 'k' || g, 'h',"
    " CASE WHEN g % 4 = 0 THEN NULL ELSE {now} END, g % 6 = 0"
    " FROM {series}"
)
# Of g in 1..n: CANCELLED (even), charged (not a multiple of 4), not refunded (not a multiple of 6).
DUE = "SELECT count(*) FROM orders WHERE charge_recheck_at IS NOT NULL"


def expected_due(rows: int) -> int:
    return sum(1 for g in range(1, rows + 1) if g % 2 == 0 and g % 4 != 0 and g % 6 != 0)


async def previous_release_with_orders(db: Database, rows: int) -> None:
    await migrate_to(db, VERSIONS, "orders_0001")
    if db.dialect == "postgresql":
        statement = INSERT_ORDERS.format(now="now()", series=f"generate_series(1, {rows}) g")
    else:
        series = f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {rows}) SELECT g FROM s)"
        statement = INSERT_ORDERS.format(now="CURRENT_TIMESTAMP", series=series).replace("repeat('x', 200)", "'x'")
    async with db.transaction() as connection:
        await connection.execute(text(statement))


# Locks another session holds on the orders table: the migration at work on it (a look at the lock table,
# which waits for none).
MIGRATION_ON_ORDERS = "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass AND pid <> pg_backend_pid()"


@pytest.fixture
def db(blank_db: Database) -> Database:
    return blank_db


async def test_the_charge_recheck_migration_marks_charged_unrefunded_cancelled_orders_due(db: Database) -> None:
    rows = 12_001  # more than one backfill batch on PostgreSQL
    await previous_release_with_orders(db, rows)
    await migrate(db, VERSIONS, metadata)
    async with db.transaction() as connection:
        assert await connection.scalar(text(DUE)) == expected_due(rows)


async def test_the_charge_recheck_migration_lets_the_previous_release_read_orders_meanwhile(
    postgres: PostgresServer,
) -> None:
    db = Database(postgres.create_database())
    rows = 300_000
    try:
        await previous_release_with_orders(db, rows)
        reader = await asyncpg.connect(db.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            # A read queued behind the migration's locks fails (LockNotAvailable) instead of waiting: the
            # instant ADD COLUMN takes is far below it, a migration holding the table for its backfill not.
            await reader.execute("SET lock_timeout = '1s'")
            upgrade = asyncio.create_task(migrate(db, VERSIONS, metadata))
            # Under way: at work on the table (altering it, building the index or backfilling).
            await eventually(lambda: reader.fetchval(MIGRATION_ON_ORDERS), "the migration took a lock on orders")
            assert not upgrade.done(), "the migration ended before the read: nothing was read meanwhile"
            row = await reader.fetchrow("SELECT id, state FROM orders WHERE id = 'o7'")  # GetOrder
            read_while_migrating = not upgrade.done()
            await upgrade
        finally:
            await reader.close()
        assert row is not None
        assert read_while_migrating
        async with db.transaction() as connection:
            assert await connection.scalar(text(DUE)) == expected_due(rows)
    finally:
        await db.dispose()


@pytest.mark.parametrize("rows", [0, 20_000])
async def test_replicas_starting_together_all_start_while_one_builds_the_index_concurrently(
    postgres: PostgresServer, rows: int
) -> None:
    """A replica waiting for the migration lock must hold no snapshot: CREATE INDEX CONCURRENTLY in the one
    migrating waits for every older snapshot, and PostgreSQL broke the wait by failing one of them."""
    url = postgres.create_database()
    if rows:
        first = Database(url)
        await previous_release_with_orders(first, rows)
        await first.dispose()
    replicas = [Database(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(replica, VERSIONS, metadata) for replica in replicas))
    finally:
        for replica in replicas:
            await replica.dispose()
    check = Database(url)
    try:
        async with check.transaction() as connection:
            valid = await connection.scalar(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_orders_charge_recheck_at'::regclass")
            )
    finally:
        await check.dispose()
    assert valid is True
