"""The catalog's tables (migrated by the `catalog` Alembic branch; this metadata mirrors the migrations)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, MetaData, String, Table, Text
from sqlalchemy.types import TypeEngine


def ordered_text(length: int) -> TypeEngine[str]:
    """A string column that sorts by code point on both databases.

    Listing order and keyset page tokens compare `name` and `id` in SQL, so the two databases must agree
    on the order: SQLite's default collation (BINARY) does; PostgreSQL's default follows the database's
    locale (en_US ignores case and punctuation), so the column says COLLATE "C" there.
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")


metadata = MetaData()

categories = Table(
    "categories",
    metadata,
    Column("id", ordered_text(64), primary_key=True),
    Column("display_name", ordered_text(200), nullable=False),
)

products = Table(
    "products",
    metadata,
    Column("id", ordered_text(64), primary_key=True),
    Column("name", ordered_text(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("category_id", ordered_text(64), ForeignKey("categories.id"), nullable=False),
    Column("price_amount_minor", BigInteger, nullable=False),
    Column("price_currency", String(3), nullable=False),
    Column("image_url", String(2048), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # name and description as `domain.search.fold` makes them: what search matches against.
    Column("search_name", Text, nullable=False),
    Column("search_description", Text, nullable=False),
    Index("ix_products_name_id", "name", "id"),
    Index("ix_products_category_name_id", "category_id", "name", "id"),
)
