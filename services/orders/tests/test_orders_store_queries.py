"""The SQL statements orders' store runs for a listing, counted on the real engine (SQLite and PostgreSQL): a
ListOrders page loads its orders' lines in one query, not one query per order."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from shopmesh_chassis.db import Database
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import Address, Order, OrderLine
from shopmesh_orders.store.repository import IdempotentOrigin, OrderRepository, UnreadableOrder

from .saga_kit import _stored_by_a_newer_release

_ADDRESS = Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB")
_CREATED = datetime(2026, 1, 1, tzinfo=UTC)


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    """Every statement the database's engine sends to its driver while the block runs."""
    sent: list[str] = []

    def before_cursor_execute(
        _connection: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
    ) -> None:
        sent.append(statement)

    event.listen(database.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield sent
    finally:
        event.remove(database.sync_engine, "before_cursor_execute", before_cursor_execute)


async def _stored_orders(database: Database, count: int) -> list[str]:
    """`count` orders of usr_1, one second apart, the i-th with i % 3 + 1 lines (so that a line given to the
    wrong order shows); their ids, newest first as ListOrders lists them."""
    ids = [f"ord_{i:03d}" for i in range(count)]
    async with database.transaction() as session:
        repository = OrderRepository(session)
        for i, order_id in enumerate(ids):
            created = _CREATED + timedelta(seconds=i)
            lines = tuple(OrderLine(f"prod_{i}_{n}", f"Product {i}/{n}", n + 1, 100 * i + n) for n in range(i % 3 + 1))
            order = Order(order_id, "usr_1", "ada@example.com", "USD", lines, _ADDRESS, created, created)
            await repository.add(order, IdempotentOrigin("usr_1|PlaceOrder", order_id, "hash"), "seed", created, {})
    return list(reversed(ids))


async def test_a_list_orders_page_runs_as_many_statements_for_twenty_orders_as_for_one(
    app: OrdersApplication, database: Database
) -> None:
    """Each listed order's lines were a query of their own: a page of 20 ran 22 statements (the orders,
    then one per order of the 21 fetched to know whether a next page follows). The page's lines now come
    in one query, whatever its size; the orders built from it are those GetOrder answers, lines and all."""
    newest_first = await _stored_orders(database, 21)
    with statements(database) as one:
        await app.list_orders("usr_1", 1, "")
    with statements(database) as twenty:
        page, _ = await app.list_orders("usr_1", 20, "")
    # The orders' query and their lines' query (a page of 1 reads 2 orders: whether a next page follows).
    assert (len(one), len(twenty)) == (2, 2), twenty
    assert [order.id for order in page] == newest_first[:20]
    assert page == [await app.get_order(order_id) for order_id in newest_first[:20]]


async def test_a_listed_order_a_newer_release_wrote_stays_in_its_place_beside_the_others_lines(
    database: Database,
) -> None:
    """An order this release cannot read is listed as UnreadableOrder where it stands, and the orders around
    it keep their own lines (its lines are not loaded, nor given to a neighbour)."""
    newest_first = await _stored_orders(database, 5)
    await _stored_by_a_newer_release(database, [newest_first[2]])
    async with database.read() as session:
        listed = await OrderRepository(session).list_for_user("usr_1", 10, None)
        readable = [await OrderRepository(session).get(order_id) for order_id in newest_first if order_id != "ord_002"]
    assert [row.id for row in listed] == newest_first
    assert isinstance(listed[2], UnreadableOrder)
    assert [row for row in listed if not isinstance(row, UnreadableOrder)] == readable
