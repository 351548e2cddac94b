"""The purge of old CANCELLED marks costs what it deletes, not every order ever counted: with many COUNTED marks
(kept for good) and fresh statistics, each batch's look for old CANCELLED marks goes through the index on
(state, counted_at), on SQLite and on PostgreSQL, as EXPLAIN shows the very statements the purge runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, event, insert, text

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_recommendations.store.repository import forget_cancelled_orders
from shopmesh_recommendations.store.tables import CANCELLED, COUNTED, counted_orders, metadata
from shopmesh_recommendations.wiring import VERSIONS

COUNTED_ORDERS = 20_000
OLD_CANCELLED = 40
INDEX = "ix_counted_orders_state_counted_at"


@pytest.fixture
async def database(blank_db: Database) -> Database:
    await migrate(blank_db, VERSIONS, metadata)
    return blank_db


async def test_each_purge_batch_finds_old_cancelled_marks_through_the_state_and_time_index(database: Database) -> None:
    now = datetime.now(UTC)
    rows = [
        {"order_id": f"ord_{i:06d}", "counted_at": now - timedelta(days=i % 400), "state": COUNTED}
        for i in range(COUNTED_ORDERS)
    ]
    rows += [
        {"order_id": f"ord_c{i:04d}", "counted_at": now - timedelta(days=30), "state": CANCELLED}
        for i in range(OLD_CANCELLED)
    ]
    async with database.transaction() as session:
        await session.execute(insert(counted_orders), rows)
        await session.execute(text("ANALYZE"))
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM COUNTED_ORDERS"):
            statements.append((statement, parameters))

    event.listen(database.sync_engine, "before_cursor_execute", seen)
    try:
        # Batches of 16: two full ones and the last, shorter one.
        assert await forget_cancelled_orders(database, now - timedelta(days=7), batch_size=16) == OLD_CANCELLED
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 3
    explain = "EXPLAIN QUERY PLAN " if database.sync_engine.dialect.name == "sqlite" else "EXPLAIN "

    def plans(connection: Connection) -> list[str]:
        return [
            "\n".join(str(row[-1]) for row in connection.exec_driver_sql(explain + statement, parameters))
            for statement, parameters in statements
        ]

    async with database.read() as session:
        found = await session.run_sync(plans)
    # Never a walk over the whole table (SQLite: SCAN counted_orders; PostgreSQL: Seq Scan on counted_orders).
    unindexed = [plan for plan in found if INDEX not in plan or "SCAN counted_orders" in plan or "Seq Scan" in plan]
    assert unindexed == [], "\n\n".join(unindexed)
