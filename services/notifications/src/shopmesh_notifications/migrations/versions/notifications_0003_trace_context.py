"""notifications.trace_context: the W3C trace context of the consumer span that recorded a notification.

The sender mails a notification in its own loop, after the event's consumer span has ended: it reads the
stored context to send it in a span of the checkout's trace (docs/chassis.md "Traces"). A JSON object,
`traceparent` and, when there is one, `tracestate`; unbounded (Text), so that no caller's `tracestate` can
make the event fail to apply.

Expand-only: a nullable column without default, a catalog change on PostgreSQL (the exclusive lock only for
that, under the migrations' lock_timeout). The previous release neither reads nor writes it: its rows, and
the rows recorded before this migration, have none, and are sent in a trace of their own.

Revision ID: notifications_0003
Revises: notifications_0002
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "notifications_0003"
down_revision = "notifications_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("trace_context", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "trace_context")
