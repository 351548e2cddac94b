"""The catalog adapter: the `Catalog` port over gRPC, with a short-lived cache in front of it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import grpc
from cachetools import TTLCache

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis.grpc_errors import IDEMPOTENT_RETRY_CODES, dependency_unavailable, details_of, unexpected_status
from shopmesh_recommendations.domain.models import CatalogProduct
from shopmesh_recommendations.domain.ports import BATCH_LIMIT
from shopmesh_recommendations.domain.validation import is_product_id

# ListProducts pages hold at most 100 (catalog.proto).
CATEGORY_PAGE_SIZE = 100


def _failed(call: str, error: grpc.aio.AioRpcError) -> Exception:
    # Reads only: a lost race (ABORTED) on the catalog's side is worth another try as well.
    if error.code() in IDEMPOTENT_RETRY_CODES:
        return dependency_unavailable("catalog", error)
    # Our request is validated: any other status is one the catalog's contract does not promise for it.
    return unexpected_status(f"catalog {call}", error)


def _product(message: catalog_pb2.Product) -> CatalogProduct:
    return CatalogProduct(
        id=message.id,
        name=message.name,
        category=message.category,
        price_minor=message.price.amount_minor,
        currency=message.price.currency,
        image_url=message.image_url,
    )


class CatalogClient:
    """Products and category listings are cached for a short while (the contract lets the summaries lag
    the catalog): a product page asks for the same category again and again. Unknown products are cached
    too, so a crawler asking for made-up ids does not turn into catalog traffic. Entries live
    `cache_seconds` (0: nothing is remembered); beyond `cache_entries` per cache the least recently used
    go first. Each replica warms its own."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        cache_seconds: float,
        cache_entries: int,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout
        self._products: TTLCache[str, CatalogProduct | None] = TTLCache(cache_entries, cache_seconds, timer)
        self._categories: TTLCache[str, tuple[CatalogProduct, ...]] = TTLCache(cache_entries, cache_seconds, timer)

    async def product(self, product_id: str) -> CatalogProduct | None:
        if not is_product_id(product_id):
            return None  # As in products(): catalog would refuse the lookup, and no product has such an id.
        with contextlib.suppress(KeyError):  # a cached None ("the catalog does not know it") is a hit
            return self._products[product_id]
        try:
            response = await self._stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                self._products[product_id] = None
                return None
            raise _failed("GetProduct", error) from None
        product = _product(response.product)
        self._products[product_id] = product
        return product

    async def products_in_category(self, category: str) -> Sequence[CatalogProduct]:
        cached = self._categories.get(category)
        if cached is not None:
            return cached
        try:
            # The first page only: candidates to fill a list of at most 20, not the whole category.
            response = await self._stub.ListProducts(
                catalog_pb2.ListProductsRequest(category=category, page_size=CATEGORY_PAGE_SIZE),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _failed("ListProducts", error) from None
        listed = tuple(_product(p) for p in response.products)
        self._categories[category] = listed
        self._products.update((product.id, product) for product in listed)
        return listed

    async def products(self, product_ids: Sequence[str]) -> dict[str, CatalogProduct]:
        found: dict[str, CatalogProduct] = {}
        wanted: list[str] = []
        for product_id in dict.fromkeys(product_ids):
            if not is_product_id(product_id):
                # Gone, as no product has it: a count an earlier release stored for an id catalog refuses
                # (events were not checked) would otherwise fail every batch that reaches it, for ever.
                continue
            try:
                cached = self._products[product_id]
            except KeyError:
                wanted.append(product_id)
                continue
            if cached is not None:
                found[product_id] = cached
        for start in range(0, len(wanted), BATCH_LIMIT):
            found.update(await self._batch_get(wanted[start : start + BATCH_LIMIT]))
        return found

    async def _batch_get(self, product_ids: list[str]) -> dict[str, CatalogProduct]:
        """BatchGetProducts is all or nothing: a product that left the catalog since it was bought fails
        the whole call, naming the missing ids; ask again without them. Each round drops at least one id."""
        while product_ids:
            try:
                response = await self._stub.BatchGetProducts(
                    catalog_pb2.BatchGetProductsRequest(product_ids=product_ids), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise _failed("BatchGetProducts", error) from None
                info = details_of(error).error_info
                missing = {p for p in info.metadata.get("product_ids", "").split(",") if p} if info else set()
                if not missing & set(product_ids):
                    raise _failed("BatchGetProducts", error) from None
                self._products.update(dict.fromkeys(missing))
                product_ids = [p for p in product_ids if p not in missing]
                continue
            products = {p.id: _product(p) for p in response.products}
            self._products.update(products)
            return products
        return {}
