"""Reading and counting purchases. Portable SQL only: every statement runs on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, delete, func, select, update

from shopmesh_chassis.db import Database, DbConnection, code_point_order, dialect_insert, insert_skipping_existing
from shopmesh_chassis.periodic import delete_in_batches
from shopmesh_recommendations.domain.copurchase import PurchaseEffects
from shopmesh_recommendations.store.tables import (
    CANCELLED,
    COUNTED,
    co_purchases,
    counted_orders,
    product_purchases,
    user_purchases,
)

log = logging.getLogger("shopmesh.recommendations")

# Bound as b_<column>: SQLAlchemy reserves a table's column names for its own binds in UPDATE.
_FORGET_ORDER = (
    update(counted_orders)
    .where(counted_orders.c.order_id == bindparam("b_order_id"), counted_orders.c.state == COUNTED)
    .values(state=CANCELLED)
)


async def forget_cancelled_orders(database: Database, before: datetime, *, batch_size: int = 500) -> int:
    """Delete the CANCELLED marks recorded before `before`, in batches; how many, logged. A mark only keeps
    a confirmation that comes after its cancellation from being counted. Its counted_at is when it was
    recorded: a cancellation before any confirmation, or the confirmation of an order cancelled since (the
    cancellation keeps the time; that mark may go at the next purge, harmlessly: its confirmation came
    already, and the cancellation's event id is kept by the consumer's own retention). Past the consumer's
    purge cutoff no event can come again, so it keeps nothing. COUNTED marks stay: a confirmed order may be
    cancelled any time later, and its cancellation must find what to take back."""
    old_cancelled = (counted_orders.c.state == CANCELLED) & (counted_orders.c.counted_at < before)
    deleted = await delete_in_batches(
        database, counted_orders, counted_orders.c.order_id, old_cancelled, batch_size=batch_size
    )
    if deleted:
        log.info("forgot %d cancelled orders recorded before %s", deleted, before.isoformat(timespec="seconds"))
    return deleted


class RecommendationsRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def record(self, effects: PurchaseEffects, now: datetime) -> bool:
        """Add one to every count the order touches, its mark recorded at `now`; False (and nothing added) if
        it was counted before or has been cancelled already (its cancellation arrived first)."""
        if not await self._mark(effects.order_id, COUNTED, now):
            return False
        for table, key, rows in _counted_rows(effects):
            await self._increment(table, key, [{**row, "count": 1} for row in rows])
        return True

    async def take_back(self, effects: PurchaseEffects, now: datetime) -> bool:
        """Subtract what `record` added for this order; False (and nothing changed) if it was never counted.

        Either way the order is marked CANCELLED, so that its confirmation, should it arrive later (retried,
        parked and replayed, or applied by another replica), is not counted. Rows that reach zero are
        deleted, so a product nobody kept is not "bought together" at count 0."""
        # The mark first: the key's insert waits for a concurrent `record` of the same order to commit,
        # so the UPDATE below then sees its row (PostgreSQL; SQLite runs one writer at a time).
        if await self._mark(effects.order_id, CANCELLED, now):
            return False  # Cancelled before it was counted: nothing to take back.
        forgotten = await self._session.execute(_FORGET_ORDER, {"b_order_id": effects.order_id})
        if forgotten.rowcount == 0:
            return False  # Taken back before (a redelivered cancellation).
        for table, key, rows in _counted_rows(effects):
            await self._decrement(table, key, rows)
        return True

    async def _mark(self, order_id: str, state: str, now: datetime) -> bool:
        """Record the order in `state` at `now`; False (nothing written) if it is recorded already, in any state."""
        marked = await self._session.execute(
            insert_skipping_existing(self._session.dialect.name, counted_orders),
            {"order_id": order_id, "counted_at": now, "state": state},
        )
        return bool(marked.rowcount)

    async def _decrement(self, table: Table, key: Sequence[str], rows: list[dict[str, Any]]) -> None:
        # Bound as b_<column>: SQLAlchemy reserves a table's column names for its own binds in UPDATE.
        this_row = and_(*(table.c[k] == bindparam(f"b_{k}") for k in key))
        bound = [{f"b_{k}": v for k, v in row.items()} for row in rows]
        await self._session.execute(update(table).where(this_row).values(count=table.c.count - 1), bound)
        await self._session.execute(delete(table).where(this_row, table.c.count <= 0), bound)

    async def _increment(self, table: Table, key: Sequence[str], rows: list[dict[str, Any]]) -> None:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET count = count + excluded.count.

        An atomic increment: replicas consuming concurrently never lose an update as a read-then-write
        could. SQLite and PostgreSQL both have this upsert; only the dialect's insert() differs.
        """
        insert = dialect_insert(self._session.dialect.name, table)
        statement = insert.on_conflict_do_update(
            index_elements=[table.c[k] for k in key], set_={"count": table.c.count + insert.excluded.count}
        )
        await self._session.execute(statement, rows)

    def _by_id(self, product_id: ColumnElement[str]) -> ColumnElement[str]:
        # Ties in count are cut by LIMIT here and ordered again in Python (ranking.by_count): both by code point.
        return code_point_order(self._session.dialect.name, product_id)

    async def co_purchase_counts(self, product_ids: Sequence[str], limit: int) -> dict[str, int]:
        """Products bought together with any of `product_ids`, summed over them, most first.

        The sources themselves may appear (bought with one another); the caller excludes them.
        """
        if not product_ids:
            return {}
        total = func.sum(co_purchases.c.count).label("total")
        rows = await self._session.execute(
            select(co_purchases.c.other_product_id, total)
            .where(co_purchases.c.product_id.in_(list(product_ids)))
            .group_by(co_purchases.c.other_product_id)
            .order_by(total.desc(), self._by_id(co_purchases.c.other_product_id))
            .limit(limit)
        )
        return {product_id: int(summed) for product_id, summed in rows}

    async def purchases_of(self, user_id: str, limit: int) -> dict[str, int]:
        """The user's products, most often bought first."""
        rows = await self._session.execute(
            select(user_purchases.c.product_id, user_purchases.c.count)
            .where(user_purchases.c.user_id == user_id)
            .order_by(user_purchases.c.count.desc(), self._by_id(user_purchases.c.product_id))
            .limit(limit)
        )
        # Rows are tuples: `row.count` would be tuple.count, hence the unpacking.
        return {product_id: int(count) for product_id, count in rows}

    async def bought_among(self, user_id: str, product_ids: Sequence[str]) -> set[str]:
        """Those of `product_ids` the user has bought."""
        if not product_ids:
            return set()
        rows = await self._session.execute(
            select(user_purchases.c.product_id).where(
                user_purchases.c.user_id == user_id, user_purchases.c.product_id.in_(list(product_ids))
            )
        )
        return set(rows.scalars())

    async def most_popular(self, limit: int) -> dict[str, int]:
        rows = await self._session.execute(
            select(product_purchases.c.product_id, product_purchases.c.count)
            .order_by(product_purchases.c.count.desc(), self._by_id(product_purchases.c.product_id))
            .limit(limit)
        )
        return {product_id: int(count) for product_id, count in rows}

    async def popularity(self, product_ids: Sequence[str]) -> Mapping[str, int]:
        """Orders per product, for those of `product_ids` ever bought."""
        if not product_ids:
            return {}
        rows = await self._session.execute(
            select(product_purchases.c.product_id, product_purchases.c.count).where(
                product_purchases.c.product_id.in_(list(product_ids))
            )
        )
        return {product_id: int(count) for product_id, count in rows}


def _counted_rows(effects: PurchaseEffects) -> list[tuple[Table, tuple[str, ...], list[dict[str, Any]]]]:
    """The count rows one order touches, per table: (table, its key columns, one key per row)."""
    touched: list[tuple[Table, tuple[str, ...], list[dict[str, Any]]]] = []
    if effects.pairs:
        pairs = [{"product_id": a, "other_product_id": b} for a, b in effects.pairs]
        touched.append((co_purchases, ("product_id", "other_product_id"), pairs))
    if effects.user_id and effects.products:
        owned = [{"user_id": effects.user_id, "product_id": p} for p in effects.products]
        touched.append((user_purchases, ("user_id", "product_id"), owned))
    if effects.products:
        touched.append((product_purchases, ("product_id",), [{"product_id": p} for p in effects.products]))
    return touched
