"""Recording an attempt's outcome once the mail server has answered: the real sender and SMTP mailer, a
real SMTP server (the sink's handler, counting what it accepts or refuses), SQLite whose write transactions fail as
a dropped connection would, for as long as a test says; and, on SQLite and PostgreSQL, a write whose COMMIT
goes through but whose reply is lost, with another sender's claim taken in between."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import exc

from shopmesh.common.v1 import money_pb2
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.consumer import Event
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import as_domain_error
from shopmesh_chassis.migrations import migrate
from shopmesh_notifications.codec import ORDER_CONFIRMED
from shopmesh_notifications.domain.model import Notification, RetryPolicy, State
from shopmesh_notifications.intake import NotificationIntake
from shopmesh_notifications.mailer import DeliveryFailed, SmtpMailer, SmtpOptions
from shopmesh_notifications.sender import NotificationSender
from shopmesh_notifications.store.repository import NotificationRepository
from shopmesh_notifications.store.tables import metadata
from shopmesh_notifications.wiring import VERSIONS
from shopmesh_platform.smtp_sink import MailFolder


class CountingFolder(MailFolder):
    """The sink's handler, counting the messages it accepted: the sink stores a re-sent e-mail (same
    Message-ID) over the first, so its files cannot tell one delivery from two."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.accepted = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        self.accepted += 1
        return answer


class RefusingFolder(CountingFolder):
    """A mail server that refuses every recipient for good, counting the refusals (so it accepts nothing)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.refused = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        self.refused += 1
        return "550 5.1.1 no such user"


class DroppingDatabase(Database):
    """A database whose write transactions, while `dropping()` says so, fail as a connection dropped at
    COMMIT would: before it (`committed` False: rolled back, nothing written) or after it, before its reply
    (`committed` True: written, the writer told otherwise). `meanwhile` runs after such a COMMIT, as another
    replica would. `mapped`: the failure comes as the chassis' UNAVAILABLE, as a write wrapped in
    `database_errors_as_domain_errors` raises it, rather than as the driver's error."""

    def __init__(
        self, url: str, dropping: Callable[[], bool], *, committed: bool = False, mapped: bool = False
    ) -> None:
        super().__init__(url)
        self.dropping = dropping
        self._committed = committed
        self._mapped = mapped
        self.dropped = 0
        self.meanwhile: Callable[[], Awaitable[None]] = _nothing

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DbConnection]:
        async with super().transaction() as connection:
            yield connection
            if not self._committed and self.dropping():
                self._drop()
        if self._committed and self.dropping():
            await self.meanwhile()
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        dropped = exc.OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))
        raise (as_domain_error(dropped) or dropped) if self._mapped else dropped


async def _nothing() -> None:
    pass


def _once() -> Callable[[], bool]:
    """True the first time it is asked, then never."""
    left = [1]

    def once() -> bool:
        taken, left[0] = left[0], 0
        return bool(taken)

    return once


def _blip_once(answered: Callable[[], int]) -> Callable[[], bool]:
    """True the first time it is asked once the mail server has `answered` (the write recording that answer),
    then never."""
    once = _once()
    return lambda: answered() > 0 and once()


POLICY = RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=10.0, give_up_after_seconds=3600)

# The tests whose faults are their wrappers' own (DroppingDatabase, StalledDatabase), whatever the backend.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def mail_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[CountingFolder, int]]:
    """A real SMTP server on a free port, its handler a CountingFolder, or the class a test picks
    (indirect=True)."""
    folder_class: type[CountingFolder] = getattr(request, "param", CountingFolder)
    folder = folder_class(tmp_path / "mail")
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(folder), "127.0.0.1", 0)
    yield folder, int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


def _mailer(port: int) -> SmtpMailer:
    return SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0))


async def _with_one_pending(database: Database) -> None:
    await migrate(database, VERSIONS, metadata)
    total = money_pb2.Money(amount_minor=1000, currency="USD")
    item = orders_pb2.OrderItem(product_name="Mug", quantity=1, unit_price=total, line_total=total)
    confirmed = events_pb2.OrderConfirmed(
        order_id="ord_1", user_id="usr_1", email="ada@example.com", items=[item], total=total
    )
    payload = confirmed.SerializeToString()
    async with database.transaction() as session:
        await NotificationIntake()(session, Event("evt_1", ORDER_CONFIRMED, payload, {}, 1))


async def _attempt_and_again_past_the_claim(database: Database, port: int) -> None:
    """One attempt at the pending notification, then a second pass once its claim (10 s) has run out: a
    notification still PENDING then would be claimed and sent again."""
    now = [datetime.now(UTC)]
    sender = NotificationSender(database, _mailer(port), POLICY, claim_seconds=10, clock=lambda: now[0])
    assert await sender.send_due() == 1
    now[0] += timedelta(seconds=11)
    await sender.send_due()


async def _stored(database: Database) -> Notification:
    async with database.read() as session:
        (stored,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
    return stored


@sqlite_only
async def test_a_database_blip_after_the_mail_server_accepted_still_sends_the_email_once(
    database_url: str, mail_server: tuple[CountingFolder, int]
) -> None:
    """Audit finding: the write recording SENT failed on a database blip (a dropped connection, a failover,
    a full pool) and went up to the sender's loop, which only logs and backs off. The notification stayed
    PENDING, and once its claim ran out this sender (or another replica) sent the e-mail again. The
    sender now retries that write while the database is unavailable, within the claim."""
    folder, port = mail_server
    # The first write after the mail server accepted the e-mail fails.
    database = DroppingDatabase(database_url, _blip_once(lambda: folder.accepted))
    try:
        await _with_one_pending(database)
        await _attempt_and_again_past_the_claim(database, port)

        assert database.dropped == 1  # the blip did happen
        assert (await _stored(database)).state is State.SENT
        assert folder.accepted == 1, f"the mail server accepted the same e-mail {folder.accepted} times"
    finally:
        await database.dispose()


@sqlite_only
async def test_a_database_blip_already_mapped_to_unavailable_is_retried_as_the_drivers_own_error_is(
    database_url: str, mail_server: tuple[CountingFolder, int]
) -> None:
    """Review finding: `database_unavailable` accepts the chassis' UNAVAILABLE as well as the driver's error,
    but the wait before the retry was read by mapping the error again, which a mapped one does not, and an
    assert failed: the notification stayed PENDING, the e-mail sent again once its claim ran out."""
    folder, port = mail_server
    database = DroppingDatabase(database_url, _blip_once(lambda: folder.accepted), mapped=True)
    try:
        await _with_one_pending(database)
        await _attempt_and_again_past_the_claim(database, port)

        assert database.dropped == 1
        assert (await _stored(database)).state is State.SENT
        assert folder.accepted == 1, f"the mail server accepted the same e-mail {folder.accepted} times"
    finally:
        await database.dispose()


@sqlite_only
@pytest.mark.parametrize("mail_server", [RefusingFolder], indirect=True)
async def test_a_database_blip_while_recording_a_refusal_still_fails_the_notification_after_one_attempt(
    database_url: str, mail_server: tuple[CountingFolder, int]
) -> None:
    """The failed attempt's outcome goes through the same write: lost to a blip, the notification was
    attempted again once the claim ran out, that first attempt never counted."""
    folder, port = mail_server
    assert isinstance(folder, RefusingFolder)  # the class the test picked
    database = DroppingDatabase(database_url, _blip_once(lambda: folder.refused))
    try:
        await _with_one_pending(database)
        await _attempt_and_again_past_the_claim(database, port)

        assert database.dropped == 1
        stored = await _stored(database)
        assert (stored.state, stored.attempts) == (State.FAILED, 1)
        assert folder.refused == 1
    finally:
        await database.dispose()


@sqlite_only
async def test_a_database_outage_outlasting_the_claims_margin_is_logged_and_leaves_the_notification_pending(
    database_url: str, mail_server: tuple[CountingFolder, int], caplog: pytest.LogCaptureFixture
) -> None:
    """The retries end well inside the claim (another sender may take it once it runs out): an outage that
    lasts past them is an error naming the notification, which stays PENDING, and the sender goes on."""
    folder, port = mail_server
    database = DroppingDatabase(database_url, lambda: folder.accepted > 0)
    try:
        await _with_one_pending(database)
        # A short claim, so that the retries (half of what is left of it) give up soon.
        sender = NotificationSender(database, _mailer(port), POLICY, claim_seconds=1)

        assert await sender.send_due() == 1  # no exception: the sender's loop goes on

        stored = await _stored(database)
        assert stored.state is State.PENDING
        (line,) = [r for r in caplog.records if r.levelno == logging.ERROR and stored.id in r.getMessage()]
        assert "may be sent again" in line.getMessage()
        assert folder.accepted == 1
    finally:
        await database.dispose()


class StalledDatabase(Database):
    """A database whose write transactions, while `stalled()` says so, wait for a connection that never
    comes (a full pool's checkout, a connect that is never answered)."""

    def __init__(self, url: str, stalled: Callable[[], bool]) -> None:
        super().__init__(url)
        self._stalled = stalled
        self.stalls = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DbConnection]:
        if self._stalled():
            self.stalls += 1
            await asyncio.Event().wait()
        async with super().transaction() as connection:
            yield connection


@sqlite_only
async def test_a_record_write_stalled_past_the_claims_margin_is_cut_off_and_logged(
    database_url: str, mail_server: tuple[CountingFolder, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the retries bounded only when a try started; one try could wait out the pool's
    checkout (30 s) or asyncpg's connect (60 s), longer than a whole claim, and land SENT after another
    sender had claimed and sent the e-mail again, with no error. Each try now ends at the bound: an error
    names the notification, which stays PENDING, and the sender goes on."""
    folder, port = mail_server
    database = StalledDatabase(database_url, lambda: folder.accepted > 0)
    try:
        await _with_one_pending(database)
        sender = NotificationSender(database, _mailer(port), POLICY, claim_seconds=1)

        # Bounds the test alone (the write gives up within half a second): before, it waited for good.
        async with asyncio.timeout(30):
            assert await sender.send_due() == 1

        assert database.stalls >= 1
        stored = await _stored(database)
        assert stored.state is State.PENDING
        (line,) = [r for r in caplog.records if r.levelno == logging.ERROR and stored.id in r.getMessage()]
        assert "may be sent again" in line.getMessage()
    finally:
        await database.dispose()


class FailingOnce:
    """A mail server that is unreachable (a failed attempt, retried later); `during` runs in the attempt."""

    def __init__(self, during: Callable[[], Awaitable[None]] = _nothing) -> None:
        self.during = during
        self.sends = 0

    async def send(self, notification: Notification) -> None:
        self.sends += 1
        await self.during()
        raise DeliveryFailed("connection refused")


async def test_a_repeated_record_after_a_lost_commit_reply_leaves_another_senders_claim_standing_and_counts_its_own(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the failed attempt's outcome (PENDING, due again in a second) was committed but its
    reply lost, so the sender repeated the write. Meanwhile, its outcome due, a second sender claimed the
    notification and was sending it. The repeat wrote the old outcome back: the next attempt in the past,
    the second claim gone, a third sender free to send it beside the second. The write is now conditional
    on the claim it was made under.

    Second review finding: the repeat, writing nothing, looked for its first try's outcome with the next
    attempt too, which the second claim had moved: the recorded attempt was neither logged nor counted,
    and a warning said, falsely, that it was not recorded."""
    database = DroppingDatabase(database_url, lambda: False, committed=True)
    try:
        await _with_one_pending(database)
        now = datetime.now(UTC)
        later = now + timedelta(seconds=2)  # past the first outcome's retry (POLICY: 1 s)
        second_claim: list[Notification | None] = []
        counted: list[Notification] = []

        async def second_sender_claims() -> None:
            async with database.transaction() as session:
                second_claim.append(
                    await NotificationRepository(session).claim(
                        (await _stored(database)).id, later, later + timedelta(seconds=10)
                    )
                )

        async def arm() -> None:
            database.dropping = _once()
            database.meanwhile = second_sender_claims

        first = NotificationSender(
            database, FailingOnce(arm), POLICY, claim_seconds=10, clock=lambda: now, on_attempt=counted.append
        )
        assert await first.send_due() == 1

        assert database.dropped == 1  # the reply was lost
        (claimed,) = second_claim
        assert claimed is not None, "the second sender could not claim the notification"
        stored = await _stored(database)
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (
            State.PENDING,
            1,
            later + timedelta(seconds=10),
        ), "the first sender's repeated write took the second sender's claim away"
        async with database.read() as session:
            assert await NotificationRepository(session).due(later + timedelta(seconds=1), 10) == []
        assert [(n.state, n.attempts) for n in counted] == [(State.PENDING, 1)], "the recorded attempt was not counted"
        assert not [r for r in caplog.records if "was not recorded" in r.getMessage()]
    finally:
        await database.dispose()


async def test_a_repeated_record_after_a_lost_commit_reply_does_not_rewind_another_senders_attempt(
    database_url: str,
) -> None:
    """As above, but the second sender's attempt failed too and was recorded before the first one's repeat:
    the repeat counted the attempts from its own again (2 back to 1) and moved the next attempt back."""
    database = DroppingDatabase(database_url, lambda: False, committed=True)
    try:
        await _with_one_pending(database)
        now = datetime.now(UTC)
        later = now + timedelta(seconds=2)
        second = NotificationSender(database, FailingOnce(), POLICY, claim_seconds=10, clock=lambda: later)

        async def second_sender_attempts() -> None:
            assert await second.send_due() == 1

        async def arm() -> None:
            database.dropping = _once()
            database.meanwhile = second_sender_attempts

        first = NotificationSender(database, FailingOnce(arm), POLICY, claim_seconds=10, clock=lambda: now)
        assert await first.send_due() == 1

        assert database.dropped == 1
        stored = await _stored(database)
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (
            State.PENDING,
            2,
            later + POLICY.delay_after(2),
        ), "the first sender's repeated write rewound the second sender's recorded attempt"
    finally:
        await database.dispose()


async def test_a_failed_attempt_whose_claim_was_taken_meanwhile_is_not_recorded_over_the_new_claim(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first write too: an attempt that outlasted its claim (the mail server slow to fail) found another
    sender's claim on the notification, and its outcome moved the next attempt back over it."""
    database = Database(database_url)
    try:
        await _with_one_pending(database)
        now = datetime.now(UTC)
        later = now + timedelta(seconds=11)  # past the first sender's claim

        async def claim_runs_out_and_is_taken() -> None:
            async with database.transaction() as session:
                taken = await NotificationRepository(session).claim(
                    (await _stored(database)).id, later, later + timedelta(seconds=10)
                )
            assert taken is not None

        first = NotificationSender(
            database, FailingOnce(claim_runs_out_and_is_taken), POLICY, claim_seconds=10, clock=lambda: now
        )
        assert await first.send_due() == 1

        stored = await _stored(database)
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (
            State.PENDING,
            0,
            later + timedelta(seconds=10),
        )
        assert any("was not recorded" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        await database.dispose()


async def test_an_email_accepted_after_its_claim_was_taken_is_sent_counting_every_recorded_attempt(
    database_url: str, mail_server: tuple[CountingFolder, int]
) -> None:
    """The mail server accepted the e-mail after the claim ran out and another sender's attempt was
    recorded meanwhile: the e-mail is delivered, so SENT is recorded (nobody sends it again), its
    attempts counted on from the stored ones; it was written with the first claim's count, rewinding them."""
    folder, port = mail_server
    database = Database(database_url)
    try:
        await _with_one_pending(database)
        now = datetime.now(UTC)
        later = now + timedelta(seconds=11)
        second = NotificationSender(database, FailingOnce(), POLICY, claim_seconds=10, clock=lambda: later)
        smtp = _mailer(port)

        class SlowMailer:
            async def send(self, notification: Notification) -> None:
                assert await second.send_due() == 1  # the claim ran out: another sender's attempt failed
                await smtp.send(notification)

        first = NotificationSender(database, SlowMailer(), POLICY, claim_seconds=10, clock=lambda: now)
        assert await first.send_due() == 1

        stored = await _stored(database)
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (State.SENT, 2, None)
        assert folder.accepted == 1
    finally:
        await database.dispose()


async def test_a_repeated_record_that_finds_its_own_lost_commit_counts_the_attempt_once(database_url: str) -> None:
    """No other sender meanwhile: the repeat writes nothing (the claim's next attempt is gone) but finds
    its first try's outcome stored, so the attempt is logged and counted, once."""
    database = DroppingDatabase(database_url, lambda: False, committed=True)
    try:
        await _with_one_pending(database)
        now = datetime.now(UTC)
        counted: list[Notification] = []

        async def arm() -> None:
            database.dropping = _once()

        first = NotificationSender(
            database, FailingOnce(arm), POLICY, claim_seconds=10, clock=lambda: now, on_attempt=counted.append
        )
        assert await first.send_due() == 1

        assert database.dropped == 1
        stored = await _stored(database)
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (
            State.PENDING,
            1,
            now + POLICY.delay_after(1),
        )
        assert counted == [stored]
    finally:
        await database.dispose()
