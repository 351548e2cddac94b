"""The gRPC servicer of shopmesh.catalog.v1.CatalogService: proto → use case → proto."""

from __future__ import annotations

from typing import Any

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_catalog.application import CatalogApplication
from shopmesh_catalog.domain.models import Category, Product
from shopmesh_chassis.proto_values import to_money, to_timestamp

DESCRIPTOR = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


def product_message(product: Product) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        id=product.id,
        name=product.name,
        description=product.description,
        category=product.category,
        price=to_money(product.price.amount_minor, product.price.currency),
        image_url=product.image_url,
        created_at=to_timestamp(product.created_at),
    )


def category_message(category: Category) -> catalog_pb2.Category:
    return catalog_pb2.Category(
        id=category.id, display_name=category.display_name, product_count=category.product_count
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, application: CatalogApplication) -> None:
        self._application = application

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        page = await self._application.list_products(request.page_size, request.page_token, request.category)
        return catalog_pb2.ListProductsResponse(
            products=[product_message(p) for p in page.products], next_page_token=page.next_page_token
        )

    async def GetProduct(self, request: catalog_pb2.GetProductRequest, context: Any) -> catalog_pb2.GetProductResponse:
        product = await self._application.get_product(request.product_id)
        return catalog_pb2.GetProductResponse(product=product_message(product))

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        products = await self._application.batch_get_products(list(request.product_ids))
        return catalog_pb2.BatchGetProductsResponse(products=[product_message(p) for p in products])

    async def SearchProducts(
        self, request: catalog_pb2.SearchProductsRequest, context: Any
    ) -> catalog_pb2.SearchProductsResponse:
        page = await self._application.search_products(
            request.query, request.category, request.page_size, request.page_token
        )
        return catalog_pb2.SearchProductsResponse(
            products=[product_message(p) for p in page.products], next_page_token=page.next_page_token
        )

    async def ListCategories(
        self, request: catalog_pb2.ListCategoriesRequest, context: Any
    ) -> catalog_pb2.ListCategoriesResponse:
        categories = await self._application.list_categories()
        return catalog_pb2.ListCategoriesResponse(categories=[category_message(c) for c in categories])
