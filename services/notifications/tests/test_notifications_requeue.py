"""E-mails given up while the relay was down are re-queued with the SQL of docs/operations.md
("ShopmeshEmailsFailed"), run here as written there, and go out once it is back; those the mail server
refused stay FAILED."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database
from shopmesh_notifications.codec import ORDER_CONFIRMED
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import GAVE_UP, Channel, Notification, RetryPolicy, State
from shopmesh_notifications.intake import NotificationIntake
from shopmesh_notifications.mailer import SmtpMailer, SmtpOptions
from shopmesh_notifications.sender import NotificationSender
from shopmesh_notifications.store.repository import NotificationRepository
from shopmesh_platform.smtp_sink import read_mail, start_sink

from .test_notifications_delivery import confirmed_event

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "operations.md"
# Every attempt that fails is past this window: given up at its first failure.
GIVE_UP_AT_ONCE = RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=600.0, give_up_after_seconds=0.001)


def runbook_sql() -> list[str]:
    """The SQL blocks of the runbook's ShopmeshEmailsFailed section, in order: find and re-queue the e-mails
    given up, then find and re-queue those the release before failed at once on a relay's 5.7.x policy."""
    section = RUNBOOK.read_text().split("\n### ShopmeshEmailsFailed\n")[1].split("\n### ")[0]
    return [block.strip().rstrip(";") for block in re.findall(r"```sql\n(.*?)```", section, re.DOTALL)]


async def stored(database: Database) -> dict[str, Notification]:
    async with database.read() as session:
        return {n.recipient: n for n in await NotificationRepository(session).list_for_user("usr_1", 10, None)}


async def test_emails_given_up_while_the_relay_was_down_go_out_once_requeued_with_the_runbooks_sql(
    database: Database, tmp_path: Path
) -> None:
    find, requeue, _, _ = runbook_sql()
    sink = await start_sink(tmp_path / "mail", restartable=True)
    await sink.stop_listening()  # the relay down
    async with database.transaction() as session:
        await NotificationIntake()(session, Event("evt_q", ORDER_CONFIRMED, confirmed_event("evt_q", "ord_q"), {}, 1))
        # An address an older release stored: refused for good, never re-queued.
        now = datetime.now(UTC)
        refused = Notification(
            "ntf_bad", "usr_1", "ord_b", Channel.EMAIL, "root,ada@example.com", "Hi", "body", "<b@x>",
            EventKind.ORDER_CONFIRMED, "evt_b", now, next_attempt_at=now,
        )  # fmt: skip
        await NotificationRepository(session).add(refused)
    mailer = SmtpMailer(SmtpOptions("127.0.0.1", sink.port, "shop@example.com", 5.0))
    sender = NotificationSender(database, mailer, GIVE_UP_AT_ONCE, claim_seconds=10)
    assert await sender.send_due() == 2
    before = await stored(database)
    assert {recipient: n.state for recipient, n in before.items()} == {
        "ada@example.com": State.FAILED,
        "root,ada@example.com": State.FAILED,
    }

    async with database.transaction() as session:
        found = (await session.execute(text(find))).all()
        assert [row.id for row in found] == [before["ada@example.com"].id]
        assert "ord_q" in [row.order_id for row in found]
        await session.execute(text(requeue))

    await sink.listen_again()
    try:
        assert await sender.send_due() == 1
    finally:
        await sink.close()
    after = await stored(database)
    assert (after["ada@example.com"].state, after["ada@example.com"].failure_reason) == (State.SENT, "")
    assert after["root,ada@example.com"].state is State.FAILED
    assert [m["X-Shopmesh-Order-Id"] for m in read_mail(tmp_path / "mail")] == ["ord_q"]


def failed_by_the_release_before(number: int, reason: str, attempts: int, last_error: str) -> Notification:
    """A FAILED row as the release before wrote it: its failure_reason, its attempts, no next attempt."""
    created = datetime.now(UTC) - timedelta(days=2)
    return Notification(
        f"ntf_old{number}", "usr_1", f"ord_old{number}", Channel.EMAIL, f"user{number}@example.com", "Hi", "body",
        f"<old{number}@x>", EventKind.ORDER_CONFIRMED, f"evt_old{number}", created, state=State.FAILED,
        attempts=attempts, last_error=last_error, failure_reason=reason,
    )  # fmt: skip


async def test_emails_the_release_before_gave_up_or_failed_on_a_relay_policy_are_requeued_with_the_runbooks_sql(
    database: Database, tmp_path: Path
) -> None:
    """The release before gave up with "the mail service failed N attempts" (and its pods still do during a
    rollout), and failed at once on a relay's 5.7.x refusal at RCPT, storing the reply: the runbook's SQL
    finds both kinds and their e-mails go out once re-queued; a refusal of the address itself, in any letter
    case, stays FAILED."""
    find, requeue, find_policy, requeue_policy = runbook_sql()
    gave_up = failed_by_the_release_before(
        1, "not delivered: the mail service failed 10 attempts", 10, "SMTP server did not answer in time"
    )
    relay = "recipient refused: user2@example.com: 554 5.7.1 <user2@example.com>: Relay access denied"
    relay_policy = failed_by_the_release_before(2, relay, 1, relay)
    rejected = (
        "recipient refused: user3@example.com: 554 5.7.1 <user3@example.com>: Recipient address rejected: Access denied"
    )
    recipients_own = failed_by_the_release_before(3, rejected, 1, rejected)
    # Worded in another case, as relays do; the mailer matches it ignoring case, so must the SQL (PostgreSQL's
    # LIKE does not ignore case, SQLite's does for ASCII).
    rejected_lower = "recipient refused: user5@example.com: 550 5.7.1 <user5@example.com>: recipient address rejected"
    recipients_own_lower = failed_by_the_release_before(5, rejected_lower, 1, rejected_lower)
    unknown = "recipient refused: user4@example.com: 550 5.1.1 <user4@example.com>: no such user"
    no_such_user = failed_by_the_release_before(4, unknown, 1, unknown)
    async with database.transaction() as session:
        for row in (gave_up, relay_policy, recipients_own, no_such_user, recipients_own_lower):
            await NotificationRepository(session).add(row)

    async with database.transaction() as session:
        assert [row.id for row in (await session.execute(text(find))).all()] == [gave_up.id]
        assert [row.id for row in (await session.execute(text(find_policy))).all()] == [relay_policy.id]
        await session.execute(text(requeue))
        await session.execute(text(requeue_policy))

    sink = await start_sink(tmp_path / "mail")
    mailer = SmtpMailer(SmtpOptions("127.0.0.1", sink.port, "shop@example.com", 5.0))
    sender = NotificationSender(database, mailer, GIVE_UP_AT_ONCE, claim_seconds=10)
    try:
        assert await sender.send_due() == 2
    finally:
        await sink.close()
    after = await stored(database)
    assert {recipient: n.state for recipient, n in after.items()} == {
        "user1@example.com": State.SENT,
        "user2@example.com": State.SENT,
        "user3@example.com": State.FAILED,
        "user4@example.com": State.FAILED,
        "user5@example.com": State.FAILED,
    }
    assert sorted(m["X-Shopmesh-Order-Id"] for m in read_mail(tmp_path / "mail")) == ["ord_old1", "ord_old2"]


async def test_the_runbooks_sql_requeues_only_an_orders_newest_failed_email_of_a_kind_and_none_once_one_stands(
    database: Database,
) -> None:
    """A later event of an order's kind, applied after its e-mail FAILED, records an e-mail of its own:
    re-queueing the FAILED one beside it (or beside another FAILED one of the kind) mails the customer twice."""
    find, requeue, _, _ = runbook_sql()
    created = datetime.now(UTC) - timedelta(hours=2)

    def confirmation(order_id: str, number: int, state: State) -> Notification:
        return Notification(
            f"ntf_{order_id}{number}", "usr_1", order_id, Channel.EMAIL, f"{order_id}{number}@example.com", "Hi",
            "body", f"<{order_id}{number}@x>", EventKind.ORDER_CONFIRMED, f"evt_{order_id}{number}",
            created + timedelta(minutes=number), state=state, attempts=1,
            failure_reason=GAVE_UP if state is State.FAILED else "",
        )  # fmt: skip

    rows = [
        confirmation("ord_s", 1, State.FAILED),
        confirmation("ord_s", 2, State.SENT),
        confirmation("ord_t", 1, State.FAILED),
        confirmation("ord_t", 2, State.FAILED),
    ]
    async with database.transaction() as session:
        for row in rows:
            await NotificationRepository(session).add(row)
        assert [row.id for row in (await session.execute(text(find))).all()] == ["ntf_ord_t2"]
        await session.execute(text(requeue))

    after = await stored(database)
    assert {n.id: n.state for n in after.values()} == {
        "ntf_ord_s1": State.FAILED,
        "ntf_ord_s2": State.SENT,
        "ntf_ord_t1": State.FAILED,
        "ntf_ord_t2": State.PENDING,
    }
