"""Reading and loading the catalog. Portable SQL (every statement runs on SQLite and PostgreSQL) but one lock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_, select, text

from shopmesh_catalog.domain.models import Category, CategoryData, Money, Product, ProductData
from shopmesh_catalog.domain.search import DESCRIPTION_WEIGHT, NAME_WEIGHT, fold
from shopmesh_catalog.domain.validation import ListProductsQuery, SearchProductsQuery
from shopmesh_catalog.store.tables import categories, products
from shopmesh_chassis.db import DbConnection, as_utc, insert_skipping_existing

_PRODUCT_COLUMNS = (
    products.c.id,
    products.c.name,
    products.c.description,
    products.c.category_id,
    products.c.price_amount_minor,
    products.c.price_currency,
    products.c.image_url,
    products.c.created_at,
)

# PostgreSQL only (`category_ids_for_adding`), the one statement here that is not portable.
_LOCK_CATEGORIES_FOR_A_LOAD = text(f"LOCK TABLE {categories.name} IN SHARE ROW EXCLUSIVE MODE")
# Built once: orders prices every checkout with it (building a statement costs more than running it).
_BY_IDS = select(*_PRODUCT_COLUMNS).where(products.c.id.in_(bindparam("b_ids", expanding=True)))


def _product(row: Any) -> Product:
    return Product(
        id=row.id,
        name=row.name,
        description=row.description,
        category=row.category_id,
        price=Money(row.price_amount_minor, row.price_currency),
        image_url=row.image_url,
        created_at=as_utc(row.created_at),
    )


def _contains(column: Any, term: str) -> ColumnElement[bool]:
    # autoescape: a % or _ typed by a user is a literal character, not a wildcard (LIKE ... ESCAPE '/').
    return column.contains(term, autoescape=True)  # type: ignore[no-any-return]


class CatalogRepository:
    """The catalog's rows in one session (one transaction)."""

    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def list_products(self, query: ListProductsQuery) -> list[Product]:
        """Up to `query.limit + 1` products after `query.after` by (name, id); the extra one tells the
        caller whether another page follows."""
        statement = select(*_PRODUCT_COLUMNS).order_by(products.c.name, products.c.id).limit(query.limit + 1)
        if query.category:
            statement = statement.where(products.c.category_id == query.category)
        if query.after is not None:
            name, product_id = query.after
            statement = statement.where(
                or_(products.c.name > name, and_(products.c.name == name, products.c.id > product_id))
            )
        rows = await self._session.execute(statement)
        return [_product(row) for row in rows]

    async def search_products(self, query: SearchProductsQuery) -> list[tuple[int, Product]]:
        """Up to `query.limit + 1` (relevance, product) pairs after `query.after` by relevance descending,
        then id; the relevance rule is `domain.search`'s, computed in SQL."""
        relevance: ColumnElement[int] = literal(0)
        matches: list[ColumnElement[bool]] = []
        for term in query.terms:
            in_name = _contains(products.c.search_name, term)
            in_description = _contains(products.c.search_description, term)
            matches.append(or_(in_name, in_description))
            relevance = (
                relevance + case((in_name, NAME_WEIGHT), else_=0) + case((in_description, DESCRIPTION_WEIGHT), else_=0)
            )
        score = relevance.label("relevance")
        statement = (
            select(*_PRODUCT_COLUMNS, score)
            .where(*matches)
            .order_by(score.desc(), products.c.id)
            .limit(query.limit + 1)
        )
        if query.category:
            statement = statement.where(products.c.category_id == query.category)
        if query.after is not None:
            last_relevance, last_id = query.after
            statement = statement.where(
                or_(relevance < last_relevance, and_(relevance == last_relevance, products.c.id > last_id))
            )
        rows = await self._session.execute(statement)
        return [(int(row.relevance), _product(row)) for row in rows]

    async def products_by_id(self, product_ids: Sequence[str]) -> dict[str, Product]:
        rows = await self._session.execute(_BY_IDS, {"b_ids": sorted(set(product_ids))})
        return {row.id: _product(row) for row in rows}

    async def list_categories(self) -> list[Category]:
        count = func.count(products.c.id)
        statement = (
            select(categories.c.id, categories.c.display_name, count.label("product_count"))
            .select_from(categories.outerjoin(products, products.c.category_id == categories.c.id))
            .group_by(categories.c.id, categories.c.display_name)
            .order_by(categories.c.display_name, categories.c.id)
        )
        rows = await self._session.execute(statement)
        return [Category(row.id, row.display_name, int(row.product_count)) for row in rows]

    async def category_ids_for_adding(self) -> set[str]:
        """The stored category ids, for a load that adds to them in this transaction and is bounded by how many
        are stored. On PostgreSQL under READ COMMITTED two loads would each count without the other's rows and
        together pass the bound: the count waits first for a lock that conflicts with itself (SHARE ROW
        EXCLUSIVE: reads go on), held to the end of the transaction, so the second load counts what the
        first added. SQLite serialises writers already (one writer lock per transaction)."""
        if self._session.dialect.name == "postgresql":
            await self._session.execute(_LOCK_CATEGORIES_FOR_A_LOAD)
        return set(await self._session.scalars(select(categories.c.id)))

    async def insert_missing(
        self,
        new_categories: Sequence[CategoryData],
        new_products: Sequence[ProductData],
        stored_categories: set[str],
        now: datetime,
    ) -> tuple[int, int]:
        """Insert the categories and products whose ids are not stored yet (`stored_categories`, read by
        `category_ids_for_adding` in this transaction); returns how many of each.

        Replicas starting together on PostgreSQL may both find an id missing: the loser's row is skipped
        instead of failing its startup, and a stored row is never overwritten."""
        missing_categories = [c for c in new_categories if c.id not in stored_categories]
        if missing_categories:
            await self._session.execute(
                insert_skipping_existing(self._session.dialect.name, categories),
                [{"id": c.id, "display_name": c.display_name} for c in missing_categories],
            )
        stored_products = set(await self._session.scalars(select(products.c.id)))
        missing_products = [p for p in new_products if p.id not in stored_products]
        if missing_products:
            await self._session.execute(
                insert_skipping_existing(self._session.dialect.name, products),
                [
                    {
                        "id": p.id,
                        "name": p.name,
                        "description": p.description,
                        "category_id": p.category,
                        "price_amount_minor": p.price.amount_minor,
                        "price_currency": p.price.currency,
                        "image_url": p.image_url,
                        "created_at": now,
                        "search_name": fold(p.name),
                        "search_description": fold(p.description),
                    }
                    for p in missing_products
                ],
            )
        return len(missing_categories), len(missing_products)
