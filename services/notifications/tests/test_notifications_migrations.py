"""notifications_0003 (the stored trace context) on a database the previous release keeps serving: its
notifications, recorded before the migration or by its pods during the rollout, have no trace context,
and are still sent, each attempt in a trace of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import MetaData, Table, insert

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import migrate_to
from shopmesh_notifications.domain.model import Notification, RetryPolicy, State
from shopmesh_notifications.sender import NotificationSender
from shopmesh_notifications.store.repository import NotificationRepository
from shopmesh_notifications.store.tables import metadata, notifications
from shopmesh_notifications.wiring import VERSIONS

# The sender's span of one delivery attempt.
SEND_SPAN = "smtp send"

# The table as the previous release declares it, and writes it.
PREVIOUS = Table("notifications", MetaData(), *(c._copy() for c in notifications.columns if c.name != "trace_context"))


async def previous_release(db: Database) -> None:
    await migrate_to(db, VERSIONS, "notifications_0002")


def previous_row(n: int, now: datetime) -> dict[str, Any]:
    return {
        "id": f"ntf_{n}",
        "user_id": "usr_1",
        "order_id": f"ord_{n}",
        "channel": "EMAIL",
        "recipient": "ada@example.com",
        "subject": "Your shopmesh order is confirmed",
        "body": "Thank you",
        "message_id": f"<evt_{n}@shopmesh.notifications>",
        "kind": "ORDER_CONFIRMED",
        "event_id": f"evt_{n}",
        "state": "PENDING",
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": "",
        "failure_reason": "",
        "created_at": now,
        "sent_at": None,
    }


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


async def test_notifications_of_the_previous_release_are_sent_each_in_a_trace_of_its_own(
    blank_db: Database, exporter: InMemorySpanExporter
) -> None:
    now = datetime.now(UTC)
    await previous_release(blank_db)
    async with blank_db.transaction() as connection:
        await connection.execute(insert(PREVIOUS).values(previous_row(1, now)))
    await migrate(blank_db, VERSIONS, metadata)
    # A pod of the previous release, still running during the rollout, records one without the column.
    async with blank_db.transaction() as connection:
        await connection.execute(insert(PREVIOUS).values(previous_row(2, now)))

    async with blank_db.transaction() as connection:
        stored = await NotificationRepository(connection).list_for_user("usr_1", 10, None)
    assert sorted((n.id, dict(n.trace_context)) for n in stored) == [("ntf_1", {}), ("ntf_2", {})]

    class Accepting:
        async def send(self, notification: Notification) -> None:
            pass

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sender = NotificationSender(
        blank_db,
        Accepting(),
        RetryPolicy(base_delay_seconds=1, max_delay_seconds=10, give_up_after_seconds=3600),
        claim_seconds=10,
        clock=lambda: now,
        tracer_provider=provider,
    )
    assert await sender.send_due() == 2
    spans = [span for span in exporter.get_finished_spans() if span.name == SEND_SPAN]
    assert sorted((span.attributes or {})["shopmesh.notification_id"] for span in spans) == ["ntf_1", "ntf_2"]
    assert [span.parent for span in spans] == [None, None]
    assert len({span.context.trace_id for span in spans if span.context is not None}) == 2
    async with blank_db.transaction() as connection:
        sent = await NotificationRepository(connection).list_for_user("usr_1", 10, None)
    assert {n.state for n in sent} == {State.SENT}
