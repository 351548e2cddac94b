"""The recommendations tables. Every count is a number of confirmed orders (see domain.copurchase)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, String, Table

metadata = MetaData()

# Orders that contained both products; each pair is stored in both directions.
co_purchases = Table(
    "co_purchases",
    metadata,
    Column("product_id", String(64), primary_key=True),
    Column("other_product_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)

# Orders of a user that contained the product.
user_purchases = Table(
    "user_purchases",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("product_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)

# Orders that contained the product, over all users: "popular" without scanning every user's history.
product_purchases = Table(
    "product_purchases",
    metadata,
    Column("product_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Index("ix_product_purchases_count", "count", "product_id"),
)

# Every order the counts have heard of, once: COUNTED while the counts include it; CANCELLED once its
# cancellation arrived, whether it took the counts back or came first (an order cancelled before it was
# confirmed: most are never confirmed, and a confirmation that arrives after the cancellation must not
# count it). An order is counted once, and a cancellation takes back only what a COUNTED order added.
# `counted_at` is when the row was written. The purge looks for old CANCELLED rows by (state, counted_at):
# COUNTED rows stay for good, and without the index every batch read all of them.
COUNTED = "COUNTED"
CANCELLED = "CANCELLED"
counted_orders = Table(
    "counted_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("counted_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False, server_default=COUNTED),
    Index("ix_counted_orders_state_counted_at", "state", "counted_at"),
)
