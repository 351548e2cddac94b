"""Catalog tables: categories, products.

Revision ID: catalog_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "catalog_0001"
down_revision = None
branch_labels = ("catalog",)
depends_on = None


def _ordered_text(length: int) -> sa.types.TypeEngine[str]:
    # Code-point order on both databases (SQLite's BINARY is already that); see store.tables.ordered_text.
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "categories",
        sa.Column("id", _ordered_text(64), primary_key=True),
        sa.Column("display_name", _ordered_text(200), nullable=False),
    )
    op.create_table(
        "products",
        sa.Column("id", _ordered_text(64), primary_key=True),
        sa.Column("name", _ordered_text(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("category_id", _ordered_text(64), sa.ForeignKey("categories.id"), nullable=False),
        sa.Column("price_amount_minor", sa.BigInteger, nullable=False),
        sa.Column("price_currency", sa.String(3), nullable=False),
        sa.Column("image_url", sa.String(2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("search_name", sa.Text, nullable=False),
        sa.Column("search_description", sa.Text, nullable=False),
    )
    op.create_index("ix_products_name_id", "products", ["name", "id"])
    op.create_index("ix_products_category_name_id", "products", ["category_id", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_products_category_name_id", "products")
    op.drop_index("ix_products_name_id", "products")
    op.drop_table("products")
    op.drop_table("categories")
