"""The catalog's use cases: validate with the domain, read or load through the store, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shopmesh_catalog.domain import validation
from shopmesh_catalog.domain.lookup import batch_in_request_order, product_not_found
from shopmesh_catalog.domain.models import Category, CategoryData, Product, ProductData, ProductPage
from shopmesh_catalog.store.repository import CatalogRepository
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database
from shopmesh_chassis.errors import InvalidArgument

log = logging.getLogger("shopmesh.catalog")


class CatalogApplication:
    def __init__(self, database: Database, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def list_products(self, page_size: int, page_token: str, category: str) -> ProductPage:
        query = validation.validate_list_products(page_size, page_token, category)
        async with self._database.read() as session:
            found = await CatalogRepository(session).list_products(query)
        page = found[: query.limit]
        more = len(found) > query.limit
        token = query.next_page_token(page[-1].name, page[-1].id) if more else ""
        return ProductPage(tuple(page), token)

    async def get_product(self, product_id: str) -> Product:
        product_id = validation.validate_product_id(product_id)
        async with self._database.read() as session:
            found = await CatalogRepository(session).products_by_id([product_id])
        if product_id not in found:
            raise product_not_found(product_id)
        return found[product_id]

    async def batch_get_products(self, product_ids: Sequence[str]) -> tuple[Product, ...]:
        product_ids = validation.validate_product_ids(product_ids)
        async with self._database.read() as session:
            found = await CatalogRepository(session).products_by_id(product_ids)
        return batch_in_request_order(product_ids, found)

    async def search_products(self, query: str, category: str, page_size: int, page_token: str) -> ProductPage:
        search = validation.validate_search_products(query, category, page_size, page_token)
        async with self._database.read() as session:
            found = await CatalogRepository(session).search_products(search)
        page = found[: search.limit]
        more = len(found) > search.limit
        token = search.next_page_token(page[-1][0], page[-1][1].id) if more else ""
        return ProductPage(tuple(product for _, product in page), token)

    async def list_categories(self) -> list[Category]:
        async with self._database.read() as session:
            return await CatalogRepository(session).list_categories()

    async def load(self, categories: Sequence[CategoryData], products: Sequence[ProductData]) -> None:
        """Add the categories and products that are not in the catalog yet (by id); stored ones are kept
        as they are. Invalid data stops here, before anything is written, and so does data that would leave
        more than MAX_CATEGORIES categories stored (counted in the transaction that adds them, one load at a
        time)."""
        categories = validation.composed_categories(categories)
        products = validation.composed_products(products)
        violations = validation.catalog_data_violations(categories, products)
        if violations:
            raise InvalidArgument(f"invalid catalog data: {violations}", violations)
        async with self._database.transaction() as session:
            repository = CatalogRepository(session)
            stored = await repository.category_ids_for_adding()
            violations = validation.stored_categories_violations(stored, categories)
            if violations:
                raise InvalidArgument(f"invalid catalog data: {violations}", violations)
            added_categories, added_products = await repository.insert_missing(
                categories, products, stored, self._clock()
            )
        log.info(
            "catalog data loaded: %d of %d categories and %d of %d products were missing and are added",
            added_categories,
            len(categories),
            added_products,
            len(products),
            extra={"categories_added": added_categories, "products_added": added_products},
        )
