"""Looking for overdue reservations costs what is pending, not what a product ever sold: with many finished
reservations of one product and fresh statistics, GetStock's and Reserve's looks go through the partial index
of pending reservations and the items' primary key, never through the product's items (all its reservations
ever made). On SQLite, whose plans EXPLAIN QUERY PLAN shows as they run."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from shopmesh_chassis.db import Database
from shopmesh_inventory.application import Inventory

from .conftest import FakeClock

FINISHED = 2_000


async def _sold_many_times(database: Database, clock: FakeClock) -> None:
    """`FINISHED` committed reservations of prod_hot, one pending one, and the statistics ANALYZE gathers."""
    long_ago = clock.now - timedelta(days=3)
    rows: list[dict[str, Any]] = [
        {"id": f"res_{i:05d}", "order": f"ord_{i:05d}", "state": "COMMITTED", "at": long_ago} for i in range(FINISHED)
    ]
    rows.append({"id": "res_pending", "order": "ord_pending", "state": "PENDING", "at": clock.now})
    async with database.transaction() as connection:
        await connection.execute(text("INSERT INTO stock VALUES ('prod_hot', 100000, 1)"))
        await connection.execute(
            text("INSERT INTO reservations VALUES (:id, :order, :state, :at, :at, :at)"),
            [{**row, "at": row["at"] + timedelta(minutes=15)} for row in rows],
        )
        await connection.execute(
            text("INSERT INTO reservation_items VALUES (:id, 'prod_hot', 1)"), [{"id": row["id"]} for row in rows]
        )
        await connection.execute(text("ANALYZE"))


async def test_overdue_lookups_of_a_product_with_many_finished_reservations_go_through_the_pending_ones(
    database: Database, clock: FakeClock
) -> None:
    await _sold_many_times(database, clock)
    clock.advance(3600)  # the pending reservation is overdue too: the looks find something
    inventory = Inventory(database, clock=clock)
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "expires_at <=" in statement:
            statements.append((statement, parameters))

    event.listen(database.sync_engine, "before_cursor_execute", seen)
    try:
        [level] = await inventory.get_stock(["prod_hot"])  # overdue_units
        assert level.reserved == 0  # the overdue pending unit counts as available
        await inventory.set_stock("prod_hot", 0)  # short by the overdue unit: overdue_ids of the product
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", seen)
    assert len(statements) >= 2
    with sqlite3.connect(str(make_url(database.url).database)) as plain:
        plans = [
            [row[-1] for row in plain.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            for statement, parameters in statements
        ]
    # Each names its table by the index on what it asks (the pending reservations past expires_at); none goes
    # through the product's items, nor gathers every reservation id of the product first (LIST SUBQUERY).
    through_the_product = [
        "\n".join(plan)
        for plan in plans
        if any("ix_reservation_items_product_id" in step or "LIST SUBQUERY" in step for step in plan)
        or not any(step.startswith("SEARCH reservations USING INDEX") for step in plan)
    ]
    assert through_the_product == []
