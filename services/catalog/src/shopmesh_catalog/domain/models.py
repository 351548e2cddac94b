"""What the catalog holds: products with prices, and the categories they belong to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in the minor units of an ISO 4217 currency (cents for USD); never a float."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class ProductData:
    """A product as it is loaded into the catalog; the catalog stamps `created_at` when it stores it."""

    id: str
    name: str
    description: str
    category: str
    price: Money
    image_url: str


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    description: str
    category: str
    price: Money
    image_url: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CategoryData:
    """A category as it is loaded into the catalog."""

    id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    display_name: str
    product_count: int


@dataclass(frozen=True, slots=True)
class ProductPage:
    """One page of a listing or search; `next_page_token` is empty on the last page."""

    products: tuple[Product, ...]
    next_page_token: str
