"""The payments service's tables (migrated by the `payments` Alembic branch)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table

metadata = MetaData()

payments = Table(
    "payments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("state", String(16), nullable=False),  # CAPTURED | REFUNDED | DECLINED
    Column("card_last4", String(4), nullable=False),
    Column("decline_reason", String(32), nullable=False),
    Column("refund_reason", String(500), nullable=False),
    Column("processor_charge_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("refunded_at", DateTime(timezone=True), nullable=True),
    Index("ix_payments_order_id_created_at_id", "order_id", "created_at", "id"),
)

# One row per order that has a captured payment, written in the capture's transaction: the primary key
# is what guarantees, on SQLite and PostgreSQL alike, that no order is ever captured twice.
order_charges = Table(
    "order_charges",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("payment_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The built-in fake processor's own ledger: every attempt it answered (captures and declines), keyed by
# its charge id, as a real processor would keep it on its side.
processor_charges = Table(
    "processor_charges",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("reference", String(64), nullable=False),  # the merchant's reference: the order id
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("card_last4", String(4), nullable=False),
    Column("outcome", String(16), nullable=False),  # CAPTURED | DECLINED
    Column("decline_code", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("refunded_at", DateTime(timezone=True), nullable=True),
    Index("ix_processor_charges_reference", "reference"),
)
