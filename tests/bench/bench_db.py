"""Database benchmark (`make bench-db`): CPU per transaction of the chassis' `Database` on SQLite.

The shapes services run on every call, on a scratch table in a temporary SQLite file, through
`Database` exactly as stores use it (`transaction()` with the writer queue and `BEGIN IMMEDIATE`,
`read()` as a snapshot): a one-statement write transaction, a write transaction with an insert and a
read back, and a one-query read. And one store's read as it is: a ListOrders page of orders with their
lines (orders' `OrderRepository.list_for_user`, on its own tables in the same file). CPU time of this
process (user + system), not wall time, so that other processes on the machine disturb the figure
less; the median of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update

from shopmesh_chassis.db import Database
from shopmesh_orders.domain.model import Address, Order, OrderLine
from shopmesh_orders.store import tables as order_tables
from shopmesh_orders.store.repository import IdempotentOrigin, OrderRepository

sys.path.insert(0, str(Path(__file__).parent))
from report import machine, write_section

HEADING = "## Database transactions (`make bench-db`)"

scratch = MetaData()
rows = Table("rows", scratch, Column("id", Integer, primary_key=True), Column("value", String, nullable=False))
_INSERT = insert(rows)
_UPDATE = update(rows).where(rows.c.id == bindparam("b_id")).values(value=bindparam("b_value"))
_SELECT = select(rows.c.value).where(rows.c.id == bindparam("b_id"))


async def one_statement_write(db: Database, i: int) -> None:
    async with db.transaction() as connection:
        await connection.execute(_UPDATE, {"b_id": 1, "b_value": str(i)})


async def insert_and_read_back(db: Database, i: int) -> None:
    async with db.transaction() as connection:
        await connection.execute(_INSERT, {"value": str(i)})
        await connection.execute(_SELECT, {"b_id": 1})


async def one_query_read(db: Database, i: int) -> None:
    async with db.read() as connection:
        (await connection.execute(_SELECT, {"b_id": 1})).one()


# ListOrders' default page size; it reads one order more, to know whether a next page follows.
LIST_PAGE = 20


async def store_orders(db: Database) -> None:
    """LIST_PAGE + 1 orders of one user, with 1 to 3 lines each (2 on average, as checkouts of a few items)."""
    async with db.transaction() as connection:
        await connection.run_sync(order_tables.metadata.create_all)
        repository = OrderRepository(connection)
        address = Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB")
        for i in range(LIST_PAGE + 1):
            created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=i)
            lines = tuple(OrderLine(f"prod_{n}", f"Product {n}", 1, 1250) for n in range(i % 3 + 1))
            order = Order(f"ord_{i:03d}", "usr_1", "ada@example.com", "USD", lines, address, created, created)
            await repository.add(order, IdempotentOrigin("usr_1|PlaceOrder", order.id, "hash"), "bench", created, {})


async def list_orders_page(db: Database, i: int) -> None:
    async with db.read() as connection:
        await OrderRepository(connection).list_for_user("usr_1", LIST_PAGE + 1, None)


SHAPES: dict[str, Callable[[Database, int], Awaitable[None]]] = {
    "write transaction, one UPDATE": one_statement_write,
    "write transaction, INSERT + SELECT": insert_and_read_back,
    "read snapshot, one SELECT": one_query_read,
    f"read snapshot, a ListOrders page of {LIST_PAGE} orders": list_orders_page,
}


async def measure(transactions: int, repeats: int) -> dict[str, list[float]]:
    """CPU µs per transaction of each shape, one figure per round."""
    figures: dict[str, list[float]] = {name: [] for name in SHAPES}
    with tempfile.TemporaryDirectory() as directory:
        db = Database(f"sqlite:///{directory}/bench.db")
        async with db.transaction() as connection:
            await connection.run_sync(scratch.create_all)
            await connection.execute(_INSERT, {"id": 1, "value": "0"})
        await store_orders(db)
        for _ in range(repeats):
            for name, shape in SHAPES.items():
                for i in range(transactions // 10):  # warm: pool, compiled statements, pages
                    await shape(db, i)
                started = time.process_time()
                for i in range(transactions):
                    await shape(db, i)
                figures[name].append((time.process_time() - started) / transactions * 1e6)
        await db.dispose()
    return figures


def report(figures: dict[str, list[float]], transactions: int, repeats: int, command: str) -> str:
    table = "| transaction | CPU µs (median) | rounds min-max |\n|---|--:|--:|\n" + "\n".join(
        f"| {name} | {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} |"
        for name, values in figures.items()
    )
    return (
        "\n\n".join(
            [
                HEADING,
                f"Command: `{command}` ({transactions} transactions per shape and round, {repeats} rounds).",
                f"Machine: {machine(('grpcio', 'sqlalchemy'))}.",
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
                table,
                "SQLite file in WAL mode with `synchronous=NORMAL`, through `shopmesh_chassis.db.Database` as the "
                "stores use it; CPU time of the benchmark process (SQLite runs on its event loop's thread). "
                f"The ListOrders page: orders' store reading {LIST_PAGE + 1} orders of 1 to 3 lines each (the "
                "page and the one that tells whether a next page follows), as ListOrders calls it.",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=3000, help="per shape and round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="update this benchmarks document")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.transactions, args.repeats))
    command = f".venv/bin/python tests/bench/bench_db.py --transactions {args.transactions} --repeats {args.repeats}"
    text = report(figures, args.transactions, args.repeats, command)
    print(text)
    if args.write:
        write_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
