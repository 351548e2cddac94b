"""orders.trace_context: the W3C trace context of the PlaceOrder that recorded the order.

The recovery loop finishes orders long after their PlaceOrder ended (it gave up on a dependency, orders
restarted, a charged order waits for its commit, a cancellation for its refund): it reads the stored context
to drive each order in a span of the checkout's trace, so that the order's event, its calls to inventory and
payments and its log lines carry that trace (docs/chassis.md "Traces"). A JSON object, `traceparent` and,
when there is one, `tracestate`; unbounded (Text), so that no caller's `tracestate` can fail a checkout.

Expand-only: a nullable column without default, a catalog change on PostgreSQL (the exclusive lock only for
that, under the migrations' lock_timeout). The previous release neither reads nor writes it: its orders, and
the ones recorded before this migration, have none, and are recovered in a trace of their own.

Revision ID: orders_0004
Revises: orders_0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "orders_0004"
down_revision = "orders_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("trace_context")
