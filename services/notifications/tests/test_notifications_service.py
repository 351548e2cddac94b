"""ListNotifications over a real gRPC socket, on SQLite and PostgreSQL: pages, ownership, every error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_notifications.application import NotificationsApplication
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import GAVE_UP, REFUSED, Channel, Notification, Refusal, RetryPolicy, State
from shopmesh_notifications.settings import NotificationsSettings
from shopmesh_notifications.store.repository import NotificationRepository
from shopmesh_notifications.transport import DESCRIPTOR, NotificationsServicer

Stub = notifications_pb2_grpc.NotificationsServiceStub
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
# Requests refused before any query: SQLite is enough.
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def notification(index: int, user_id: str = "usr_1", created_at: datetime | None = None) -> Notification:
    return Notification(
        id=f"ntf_{index:03d}",
        user_id=user_id,
        order_id=f"ord_{index}",
        channel=Channel.EMAIL,
        recipient="ada@example.com",
        subject=f"Your shopmesh order ord_{index} is confirmed",
        body="Hello",
        message_id=f"<evt_{index}@shopmesh.notifications>",
        kind=EventKind.ORDER_CONFIRMED,
        event_id=f"evt_{index}",
        created_at=created_at or START + timedelta(seconds=index),
        next_attempt_at=START,
    )


async def seed(database: Database, *notifications: Notification) -> None:
    async with database.transaction() as session:
        for item in notifications:
            await NotificationRepository(session).add(item)


@pytest.fixture
async def stub(settings: NotificationsSettings, database: Database) -> AsyncIterator[Stub]:
    servicer = NotificationsServicer(NotificationsApplication(database))
    binding = ServiceBinding(DESCRIPTOR, servicer, notifications_pb2_grpc.add_NotificationsServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None, caller="gateway")) as channel,
    ):
        yield Stub(channel.channel)


def listing(
    user_id: str = "usr_1", page_size: int = 0, page_token: str = ""
) -> notifications_pb2.ListNotificationsRequest:
    return notifications_pb2.ListNotificationsRequest(user_id=user_id, page_size=page_size, page_token=page_token)


async def test_a_users_notifications_are_listed_newest_first_with_every_field(stub: Stub, database: Database) -> None:
    sent = notification(2).sent(START + timedelta(minutes=1))
    failed = notification(3).delivery_failed(
        "SMTP 550: no such user",
        START,
        RetryPolicy(base_delay_seconds=1, max_delay_seconds=1, give_up_after_seconds=3600),
        refusal=Refusal.RECIPIENT,
    )
    await seed(database, notification(1), sent, failed, notification(4, user_id="usr_2"))

    response = await stub.ListNotifications(listing())

    assert [n.id for n in response.notifications] == ["ntf_003", "ntf_002", "ntf_001"]
    assert response.next_page_token == ""
    newest, middle, oldest = response.notifications
    assert newest.state == notifications_pb2.NOTIFICATION_STATE_FAILED
    assert newest.failure_reason == "not delivered: the recipient's mail server refused the address"
    assert not newest.HasField("sent_at")
    assert middle.state == notifications_pb2.NOTIFICATION_STATE_SENT
    assert middle.sent_at.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=1)
    assert middle.failure_reason == ""
    assert oldest == notifications_pb2.Notification(
        id="ntf_001",
        user_id="usr_1",
        order_id="ord_1",
        channel=notifications_pb2.NOTIFICATION_CHANNEL_EMAIL,
        recipient="ada@example.com",
        subject="Your shopmesh order ord_1 is confirmed",
        state=notifications_pb2.NOTIFICATION_STATE_PENDING,
        kind=notifications_pb2.NOTIFICATION_KIND_ORDER_CONFIRMED,
        event_id="evt_1",
        created_at=oldest.created_at,
    )
    assert oldest.created_at.ToDatetime(tzinfo=UTC) == START + timedelta(seconds=1)


async def test_pages_cover_every_notification_once_even_with_equal_timestamps(stub: Stub, database: Database) -> None:
    await seed(database, *(notification(i, created_at=START if i % 2 else None) for i in range(1, 8)))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListNotifications(listing(page_size=3, page_token=token))
        assert len(page.notifications) <= 3
        seen += [n.id for n in page.notifications]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"ntf_{i:03d}" for i in range(1, 8)]
    assert len(seen) == len(set(seen))


async def test_page_size_zero_means_twenty_and_above_a_hundred_means_a_hundred(stub: Stub, database: Database) -> None:
    await seed(database, *(notification(i) for i in range(1, 102)))
    default = await stub.ListNotifications(listing())
    assert len(default.notifications) == 20
    coerced = await stub.ListNotifications(listing(page_size=500))
    assert len(coerced.notifications) == 100
    assert coerced.next_page_token != ""


@sqlite_only
async def test_a_user_without_notifications_gets_an_empty_list(stub: Stub) -> None:
    response = await stub.ListNotifications(listing("usr_nobody"))
    assert list(response.notifications) == []
    assert response.next_page_token == ""


async def test_the_asserted_user_may_list_their_own_notifications(stub: Stub, database: Database) -> None:
    await seed(database, notification(1))
    response = await stub.ListNotifications(listing(), metadata=[("x-user-id", "usr_1")])
    assert [n.id for n in response.notifications] == ["ntf_001"]


@sqlite_only
async def test_listing_another_users_notifications_is_permission_denied(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(listing("usr_1"), metadata=[("x-user-id", "usr_2")])
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "USER_MISMATCH")


@sqlite_only
@pytest.mark.parametrize(
    ("request_", "violations"),
    [
        (listing(""), [("user_id", "REQUIRED")]),
        (listing("u" * 65), [("user_id", "TOO_LONG")]),
        (listing(page_size=-1), [("page_size", "OUT_OF_RANGE")]),
        (listing("", page_size=-5), [("user_id", "REQUIRED"), ("page_size", "OUT_OF_RANGE")]),
        # No user has such an id (events with one are refused): refused as every service refuses it.
        (listing("usr\n1"), [("user_id", "INVALID_FORMAT")]),
        (listing("usr 1"), [("user_id", "INVALID_FORMAT")]),
        (listing("\u202e"), [("user_id", "INVALID_FORMAT")]),
        # Blank is no id either (money.proto's Identifiers), not an empty one: answered REQUIRED before.
        (listing(" "), [("user_id", "INVALID_FORMAT")]),
        (listing(" " * 65), [("user_id", "TOO_LONG")]),
    ],
)
async def test_an_invalid_request_names_each_bad_field(
    stub: Stub, request_: notifications_pb2.ListNotificationsRequest, violations: list[tuple[str, str]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(request_)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert [(v.field, v.reason) for v in details.field_violations] == violations


@sqlite_only
async def test_an_empty_user_id_is_refused_in_every_services_wording(stub: Stub) -> None:
    """An empty id's REQUIRED reads "must not be empty" in every service (contract_limits.id_violations), so a
    client shows it alike whoever refused it; notifications answered "required"."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(listing(""))
    described = [(v.field, v.reason, v.description) for v in details_of(caught.value).field_violations]
    assert described == [("user_id", "REQUIRED", "must not be empty")]


@sqlite_only
async def test_a_malformed_page_token_is_invalid(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(listing(page_token="not-a-token!"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert [v.field for v in details.field_violations] == ["page_token"]


async def test_a_page_token_used_for_another_user_is_invalid(stub: Stub, database: Database) -> None:
    await seed(database, notification(1), notification(2))
    first = await stub.ListNotifications(listing(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(listing("usr_2", page_size=1, page_token=first.next_page_token))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


@sqlite_only
async def test_a_negative_page_size_and_a_malformed_page_token_are_both_named_with_reason_invalid_page_token(
    stub: Stub,
) -> None:
    # As catalog does (and the module promises one violation per bad field): every bad field at once, and
    # the reason INVALID_PAGE_TOKEN whenever the token is among them.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(listing(page_size=-1, page_token="not-a-token!"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert sorted(v.field for v in details.field_violations) == ["page_size", "page_token"]


async def test_a_notification_state_a_newer_release_added_stays_listable(stub: Stub, database: Database) -> None:
    """Review finding (sibling of orders' unknown cancel codes): docs/chassis.md now says values a newer
    release may add to a stored enum must be readable, and this release itself adds SUPERSEDED, but
    notifications still reads its state strictly (State(row.state)). A state the next release adds makes
    every ListNotifications of that user INTERNAL on this release's pods during the rollout or a rollback."""
    from sqlalchemy import update

    from shopmesh_notifications.store.tables import notifications

    await seed(database, notification(1), notification(2))
    async with database.transaction() as session:
        await session.execute(update(notifications).where(notifications.c.id == "ntf_002").values(state="ARCHIVED"))
    response = await stub.ListNotifications(listing())
    assert [n.id for n in response.notifications] == ["ntf_002", "ntf_001"]
    assert response.notifications[0].state == notifications_pb2.NOTIFICATION_STATE_UNSPECIFIED


async def test_failure_reasons_an_older_release_stored_are_listed_as_this_releases_fixed_texts(
    stub: Stub, database: Database
) -> None:
    """The release before stored the mail server's reply as the customer's failure_reason for a refusal
    (its pods still do during a rollout), and its give-up text named a count of attempts: the customer is
    shown a fixed text for both, never the relay's hosts and networks, which the column still holds."""
    relay_reply = (
        "recipient refused: ada@example.com: 554 5.7.1 <ada@example.com>: Relay access denied (mx1.internal 10.0.3.7)"
    )
    old_rows = {
        "ntf_001": relay_reply,
        "ntf_002": "not delivered: the mail service failed 10 attempts",
        "ntf_003": "not delivered: the mail service failed 1 attempt",
        "ntf_004": Refusal.RECIPIENT.value,
    }
    await seed(
        database,
        *(
            replace(notification(int(id_[-3:])), state=State.FAILED, failure_reason=reason, last_error=reason)
            for id_, reason in old_rows.items()
        ),
    )
    response = await stub.ListNotifications(listing())
    assert {n.id: n.failure_reason for n in response.notifications} == {
        "ntf_001": REFUSED,
        "ntf_002": GAVE_UP,
        "ntf_003": GAVE_UP,
        "ntf_004": Refusal.RECIPIENT.value,
    }
    async with database.read() as session:
        [stored] = [
            n for n in await NotificationRepository(session).list_for_user("usr_1", 10, None) if n.id == "ntf_001"
        ]
    assert stored.failure_reason == relay_reply


@sqlite_only
async def test_list_notifications_answers_while_another_connection_holds_the_write_lock_and_the_sender_runs(
    settings: NotificationsSettings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """ListNotifications reads a snapshot so that another connection holding SQLite's write lock (a shell, a
    migration, another process) does not hold it up (test_a_read_only_call_is_answered_while_a_writer_holds_
    every_database). But the sender, in the same process and on the same event loop, looks for due
    notifications at every idle poll (5 s) in a write transaction (BEGIN IMMEDIATE) that finds nothing, and
    that waited out the 5 s busy timeout on the event loop's thread (every call arriving meanwhile waited with
    it; since then it waits up to 5 s for the lock and fails), then the sender backs off 0.5 s and waits
    again."""
    import asyncio
    import logging
    import sqlite3
    import threading
    import time

    from sqlalchemy.engine import make_url

    from shopmesh_notifications.sender import NotificationSender

    await seed(database, notification(1))

    class Accepting:
        async def send(self, notification: Notification) -> None:
            pass

    sent = asyncio.Event()
    servicer = NotificationsServicer(NotificationsApplication(database))
    binding = ServiceBinding(DESCRIPTOR, servicer, notifications_pb2_grpc.add_NotificationsServiceServicer_to_server)
    # A 1 s idle poll rather than 5 s: the polls under the lock come sooner, each as the deployed one is.
    sender = NotificationSender(
        database,
        Accepting(),
        RetryPolicy(base_delay_seconds=1, max_delay_seconds=10, give_up_after_seconds=3600),
        claim_seconds=10,
        idle_poll_seconds=1.0,
        on_attempt=lambda outcome: sent.set(),
    )
    path = make_url(database.url).database
    assert path

    # An idle pass of the sender's loop is send_due, then the look for the next due time, which only runs when
    # send_due succeeded. A pass that took the write lock while the holder has it could not succeed: it would
    # wait up to 5 s for the lock and fail DATABASE_UNAVAILABLE.
    # So two passes finished under the lock say the idle sender never asks for it, and calls never wait on it.
    passes_under_lock, polled = [-1], threading.Event()
    until_next_due = sender._until_next_due

    async def counting_until_next_due() -> float:
        pause = await until_next_due()
        if passes_under_lock[0] >= 0:
            passes_under_lock[0] += 1
            if passes_under_lock[0] >= 2:
                polled.set()
        return pause

    sender._until_next_due = counting_until_next_due  # type: ignore[method-assign]

    def list_until_polled(address: str) -> int:
        """A client of its own (another thread, as another process would be), calling while the sender polls
        under the lock; returns how many calls were answered."""
        answered = 0
        with grpc.insecure_channel(address) as channel:
            stub = Stub(channel)
            # Bounds a sender that never finishes a pass under the lock, as one taking the lock never does.
            until = time.monotonic() + 60
            while not polled.is_set():
                assert time.monotonic() < until, "the sender never finished two passes while the lock was held"
                page = stub.ListNotifications(listing(), timeout=30, metadata=(("x-shopmesh-caller", "gateway"),))
                assert [n.id for n in page.notifications] == [notification(1).id]
                answered += 1
                time.sleep(0.1)
        return answered

    async with serve_in_process(settings, [binding]) as server:
        sender.start()
        # The due notification sent and recorded: from here on an idle sender only looks.
        await asyncio.wait_for(sent.wait(), 30)
        holder = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            holder.execute("BEGIN IMMEDIATE")
            passes_under_lock[0] = 0
            answered = await asyncio.to_thread(list_until_polled, server.address)
        finally:
            holder.close()
            await sender.stop()
    assert answered >= 1
    assert not [r for r in caplog.records if r.name == "shopmesh.notifications.sender" and r.levelno >= logging.WARNING]
