"""From order event to e-mail with real parts: a nats-server with JetStream, the chassis consumer, the
SMTP sender against the local SMTP sink (aiosmtpd), SQLite (and PostgreSQL for the main path), and
ListNotifications over a real gRPC socket."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import nats
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client
from nats.js.api import RawStreamMsg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text

from shopmesh.common.v1 import money_pb2
from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.consumer import Event, EventConsumer
from shopmesh_chassis.db import Database
from shopmesh_chassis.deadletters import DEAD_LETTER_STREAM
from shopmesh_chassis.events import ensure_stream
from shopmesh_chassis.logs import TraceContextFilter
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import cut_off_midway, eventually, serve_in_process
from shopmesh_chassis.testing.nats_server import NatsServer
from shopmesh_chassis.testing.postgres import WAITING_ON_A_LOCK
from shopmesh_notifications.application import NotificationsApplication
from shopmesh_notifications.codec import ORDER_CANCELLED, ORDER_CONFIRMED
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import Channel, Notification, Refusal, RetryPolicy, State
from shopmesh_notifications.intake import NotificationIntake, RecipientCap
from shopmesh_notifications.mailer import DeliveryFailed, SmtpMailer, SmtpOptions
from shopmesh_notifications.metrics import NotificationMetrics
from shopmesh_notifications.sender import NotificationSender
from shopmesh_notifications.settings import NotificationsSettings
from shopmesh_notifications.store.repository import NotificationRepository
from shopmesh_notifications.transport import DESCRIPTOR, NotificationsServicer
from shopmesh_notifications.wiring import build_consumer, build_intake, build_sender, retry_policy
from shopmesh_platform.smtp_sink import MailFolder, SmtpSink, read_mail, start_sink

Stub = notifications_pb2_grpc.NotificationsServiceStub
PENDING, SENT, FAILED = (
    notifications_pb2.NOTIFICATION_STATE_PENDING,
    notifications_pb2.NOTIFICATION_STATE_SENT,
    notifications_pb2.NOTIFICATION_STATE_FAILED,
)
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
KINDS = {
    EventKind.ORDER_CONFIRMED: notifications_pb2.NOTIFICATION_KIND_ORDER_CONFIRMED,
    EventKind.ORDER_CANCELLED: notifications_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
}
# The sender's span of one delivery attempt.
SEND_SPAN = "smtp send"


def confirmed_event(event_id: str, order_id: str, user_id: str = "usr_1", email: str = "ada@example.com") -> bytes:
    usd = money_pb2.Money
    return events_pb2.OrderConfirmed(
        event_id=event_id,
        order_id=order_id,
        user_id=user_id,
        email=email,
        items=[
            orders_pb2.OrderItem(
                product_id="prod_chef_knife",
                product_name="Chef knife",
                quantity=2,
                unit_price=usd(amount_minor=8900, currency="USD"),
                line_total=usd(amount_minor=17800, currency="USD"),
            )
        ],
        total=usd(amount_minor=17800, currency="USD"),
    ).SerializeToString()


# What a customer may type as CancelOrder's reason: one line of up to 500 characters, theirs to choose.
PHISHING = "Your account is locked: confirm your card at https://shopmesh-refunds.example within 24 hours."


def cancelled_event(
    event_id: str,
    order_id: str,
    user_id: str = "usr_1",
    code: int = orders_pb2.CANCEL_REASON_CODE_CARD_DECLINED,
    message: str = "Your card was declined.",
    *,
    answered_at_placement: bool = False,
    email: str = "ada@example.com",
) -> bytes:
    usd = money_pb2.Money
    item = orders_pb2.OrderItem(
        product_name="Mug",
        quantity=1,
        unit_price=usd(amount_minor=500, currency="USD"),
        line_total=usd(amount_minor=500, currency="USD"),
    )
    event = events_pb2.OrderCancelled(
        event_id=event_id,
        order_id=order_id,
        user_id=user_id,
        email=email,
        items=[item],
        total=usd(amount_minor=500, currency="USD"),
        refunded=False,
        answered_at_placement=answered_at_placement,
    )
    event.reason.code = code  # type: ignore[assignment]
    event.reason.message = message
    return event.SerializeToString()


def mail_for(directory: Path, order_id: str) -> list[EmailMessage]:
    return [message for message in read_mail(directory) if message["X-Shopmesh-Order-Id"] == order_id]


@pytest.fixture
async def js_client(nats_srv: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_srv.url)
    await ensure_stream(client.jetstream(), "ORDERS", ["orders.v1.>"], duplicate_window=900)
    yield client
    await client.close()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    # Restartable: the tests that take the mail server down bring it back on the port the service was given.
    started = await start_sink(tmp_path / "mail", restartable=True)
    yield started
    await started.close()


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """The sender's spans, recorded. Sampled whatever its parent says: the tests' own provider (the
    consumer's) records nothing, and the context it hands on is marked unsampled."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def send_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == SEND_SPAN]


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (parametrize this fixture)."""
    return {}


@dataclass
class Running:
    settings: NotificationsSettings
    database: Database
    sender: NotificationSender
    consumer: EventConsumer
    stub: Stub
    js: Client
    sink: SmtpSink
    metrics: ServerMetrics
    spans: InMemorySpanExporter

    def attempts(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        return self.metrics.registry.get_sample_value("shopmesh_notifications_delivery_attempts_total", labels) or 0

    def suppressed(self, reason: str) -> float:
        labels = {"reason": reason}
        return self.metrics.registry.get_sample_value("shopmesh_notifications_suppressed_total", labels) or 0

    async def publish(self, subject: str, payload: bytes, event_id: str) -> None:
        await self.js.jetstream().publish(subject, payload, headers={"Nats-Msg-Id": event_id})

    async def listed(self, user_id: str = "usr_1") -> list[notifications_pb2.Notification]:
        response = await self.stub.ListNotifications(notifications_pb2.ListNotificationsRequest(user_id=user_id))
        return list(response.notifications)

    async def dead_letters(self) -> list[RawStreamMsg]:
        """The messages parked so far (none before the first: parking creates the stream)."""
        js = self.js.jetstream()
        try:
            info = await js.stream_info(DEAD_LETTER_STREAM)
        except Exception:
            return []
        return [await js.get_msg(DEAD_LETTER_STREAM, n) for n in range(1, info.state.messages + 1)]

    async def stored(self, event_id: str) -> Notification | None:
        async with self.database.transaction() as session:
            for item in await NotificationRepository(session).list_for_user("usr_1", 100, None):
                if item.event_id == event_id:
                    return item
        return None


@pytest.fixture
async def running(
    tmp_path: Path,
    database: Database,
    nats_srv: NatsServer,
    js_client: Client,
    sink: SmtpSink,
    overrides: dict[str, Any],
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> AsyncIterator[Running]:
    """The service as wiring builds it, in this process: consumer, sender, servicer."""
    settings = load_settings(
        NotificationsSettings,
        grpc_port=0,
        metrics_port=-1,
        data_dir=str(tmp_path),
        nats_url=nats_srv.url,
        smtp_port=sink.port,
        smtp_timeout_seconds=2,
        consumer_max_attempts=3,
        consumer_backoff_seconds=(0.05,),
        send_backoff_seconds=0.05,
        send_max_backoff_seconds=0.2,
        **overrides,
    )
    metrics = ServerMetrics()
    provider, exporter = exported
    notification_metrics = NotificationMetrics(metrics.registry)
    sender = build_sender(settings, database, notification_metrics, tracer_provider=provider)
    consumer = build_consumer(settings, database, sender, metrics.events, build_intake(settings, notification_metrics))
    servicer = NotificationsServicer(NotificationsApplication(database))
    binding = ServiceBinding(DESCRIPTOR, servicer, notifications_pb2_grpc.add_NotificationsServiceServicer_to_server)
    sender.start()
    consumer.start()
    try:
        async with (
            serve_in_process(settings, [binding]) as server,
            ResilientChannel(server.address, [DESCRIPTOR], ClientOptions(breaker=None)) as channel,
        ):
            yield Running(
                settings, database, sender, consumer, Stub(channel.channel), js_client, sink, metrics, exporter
            )
    finally:
        await consumer.stop()
        await sender.stop()


async def test_an_order_confirmation_is_mailed_once_and_listed_as_sent(running: Running) -> None:
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_1", "ord_1"), "evt_1")

    mails = await eventually(lambda: mail_for(running.sink.directory, "ord_1"), "the e-mail")
    (mail,) = mails
    assert mail["Subject"] == "Your shopmesh order ord_1 is confirmed"
    assert mail["To"] == "ada@example.com"
    assert mail["Message-ID"] == "<evt_1@shopmesh.notifications>"
    body = mail.get_content()
    assert "2 x \u2068Chef knife\u2069" in body
    assert "Total charged: USD 178.00" in body

    async def sent() -> list[notifications_pb2.Notification]:
        listed = await running.listed()
        return listed if listed and listed[0].state == SENT else []

    (notification,) = await eventually(sent, "SENT")
    assert (notification.order_id, notification.event_id) == ("ord_1", "evt_1")
    assert notification.kind == notifications_pb2.NOTIFICATION_KIND_ORDER_CONFIRMED
    assert notification.HasField("sent_at")


# The checkout's trace, as orders' outbox hands it on in the event's headers.
CHECKOUT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CHECKOUT_SPAN = 0x00F067AA0BA902B7
CHECKOUT_TRACEPARENT = f"00-{CHECKOUT_TRACE:032x}-{CHECKOUT_SPAN:016x}-01"


def parent_in(carrier: dict[str, str] | Any) -> trace.SpanContext:
    return trace.get_current_span(TraceContextTextMapPropagator().extract(dict(carrier))).get_span_context()


async def test_an_email_is_sent_in_a_span_of_the_trace_its_event_was_consumed_in(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The trace of a checkout ended at notifications' consumer span: the sender, in a loop of its own,
    sent with no trace context, its "sent" line had an empty trace_id, and the e-mail was nowhere in the
    trace. The attempt is a span of the checkout's trace now, under the consumer span that recorded it."""
    caplog.set_level(logging.INFO, logger="shopmesh.notifications.sender")
    caplog.handler.addFilter(TraceContextFilter("notifications"))
    headers = {"Nats-Msg-Id": "evt_t", "traceparent": CHECKOUT_TRACEPARENT, "tracestate": "shop=1"}
    await running.js.jetstream().publish(ORDER_CONFIRMED, confirmed_event("evt_t", "ord_t"), headers=headers)

    await eventually(lambda: mail_for(running.sink.directory, "ord_t"), "the e-mail")
    (span,) = await eventually(lambda: send_spans(running.spans), "the send span")
    stored = await running.stored("evt_t")
    assert stored is not None
    consumer_span = parent_in(stored.trace_context)
    assert consumer_span.trace_id == CHECKOUT_TRACE
    assert consumer_span.span_id != CHECKOUT_SPAN  # the consumer's own span, a child of the checkout's
    assert stored.trace_context.get("tracestate") == "shop=1"
    assert span.context is not None
    assert span.context.trace_id == CHECKOUT_TRACE
    assert span.parent is not None
    assert span.parent.span_id == consumer_span.span_id
    assert span.kind is trace.SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "shopmesh.notification_id": stored.id,
        "shopmesh.order_id": "ord_t",
        "shopmesh.event_id": "evt_t",
        "shopmesh.attempt": 1,
        "shopmesh.outcome": "sent",
    }
    assert span.status.status_code is trace.StatusCode.UNSET
    (line,) = [r for r in caplog.records if r.getMessage() == f"notification {stored.id} sent"]
    assert getattr(line, "trace_id", None) == f"{CHECKOUT_TRACE:032x}"
    assert getattr(line, "span_id", None) == f"{span.context.span_id:016x}"


@sqlite_only
async def test_a_failed_attempt_is_an_error_span_of_its_trace_that_does_not_name_the_recipient(
    database: Database,
    exported: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = exported
    caplog.set_level(logging.INFO, logger="shopmesh.notifications.sender")
    caplog.handler.addFilter(TraceContextFilter("notifications"))

    class RefusingMailer:
        async def send(self, notification: Notification) -> None:
            raise DeliveryFailed(
                "recipient refused: Ada@Example.com: 550 <ada@example.com> unknown", refusal=Refusal.RECIPIENT
            )

    # Recorded under a consumer span of a known trace, as the chassis' consumer runs the intake.
    with provider.get_tracer("test").start_as_current_span("consume orders.v1.order_confirmed") as consumed:
        event = Event("evt_f", ORDER_CONFIRMED, confirmed_event("evt_f", "ord_f"), {}, 1)
        async with database.transaction() as session:
            await NotificationIntake()(session, event)
    sender = NotificationSender(
        database,
        RefusingMailer(),
        RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600),
        claim_seconds=10,
        tracer_provider=provider,
    )
    assert await sender.send_due() == 1

    (span,) = send_spans(exporter)
    assert span.context is not None
    assert span.context.trace_id == consumed.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.span_id == consumed.get_span_context().span_id
    assert span.status.status_code is trace.StatusCode.ERROR
    assert "550" in (span.status.description or "")
    assert "example.com" not in (span.status.description or "").lower()
    assert "example.com" not in str(dict(span.attributes or {})).lower()
    assert (span.attributes or {})["shopmesh.outcome"] == "failed"
    (line,) = [r for r in caplog.records if "failed after 1 attempt(s)" in r.getMessage()]
    assert getattr(line, "trace_id", None) == format(consumed.get_span_context().trace_id, "032x")


@sqlite_only
async def test_a_customers_own_cancellation_is_mailed_with_a_fixed_text_never_the_reason_they_typed(
    running: Running,
) -> None:
    # The e-mail goes to the order's address: quoting the customer's reason let anyone have the shop mail a
    # text of theirs, as a genuine shop e-mail, to the address they placed the order with.
    payload = cancelled_event("evt_3", "ord_3", code=orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED, message=PHISHING)
    await running.publish(ORDER_CANCELLED, payload, "evt_3")

    (mail,) = await eventually(lambda: mail_for(running.sink.directory, "ord_3"), "the e-mail")
    body = mail.get_content()
    assert "You cancelled this order." in body
    assert ("shopmesh-refunds" in body, "Reason:" in body) == (False, False)


@sqlite_only
async def test_a_cancellation_is_mailed_with_its_reason(running: Running) -> None:
    await running.publish(ORDER_CANCELLED, cancelled_event("evt_2", "ord_2"), "evt_2")

    (mail,) = await eventually(lambda: mail_for(running.sink.directory, "ord_2"), "the e-mail")
    assert mail["Subject"] == "Your shopmesh order ord_2 was cancelled"
    assert "Reason: Your card was declined." in mail.get_content()
    (listed,) = await running.listed()
    assert listed.kind == notifications_pb2.NOTIFICATION_KIND_ORDER_CANCELLED


@sqlite_only
async def test_cancellations_placeorder_answered_send_no_email_and_a_customers_own_cancellation_still_does(
    running: Running,
) -> None:
    """The audit's loop: an account signed up with someone else's address places orders that fail (a declined
    card, more than the stock), each told on screen by PlaceOrder; the shop mailed every one of them."""
    for n in range(3):
        payload = cancelled_event(f"evt_p{n}", f"ord_p{n}", answered_at_placement=True)
        await running.publish(ORDER_CANCELLED, payload, f"evt_p{n}")
    customers = cancelled_event("evt_c", "ord_c", code=orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED, message="")
    await running.publish(ORDER_CANCELLED, customers, "evt_c")

    await eventually(lambda: mail_for(running.sink.directory, "ord_c"), "the customer's cancellation e-mail")
    await eventually(lambda: running.suppressed("answered_at_placement") == 3, "the three applied without e-mail")
    assert [mail["X-Shopmesh-Order-Id"] for mail in read_mail(running.sink.directory)] == ["ord_c"]
    assert [n.order_id for n in await running.listed()] == ["ord_c"]


@sqlite_only
@pytest.mark.parametrize("overrides", [{"recipient_mail_burst": 2, "recipient_mails_per_hour": 0.01}])
async def test_emails_to_one_address_beyond_its_cap_are_not_sent_counted_and_logged_once(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shopmesh.notifications")
    for n in range(5):
        # The address as typed, in any case: the same mailbox.
        email = "Ada@Example.com" if n % 2 else "ada@example.com"
        await running.publish(ORDER_CANCELLED, cancelled_event(f"evt_k{n}", f"ord_k{n}", email=email), f"evt_k{n}")
    await running.publish(ORDER_CANCELLED, cancelled_event("evt_g", "ord_g", email="grace@example.com"), "evt_g")

    await eventually(lambda: running.suppressed("recipient_cap") == 3, "three held back")
    await eventually(lambda: len(read_mail(running.sink.directory)) == 3, "two to ada, one to grace")
    assert sorted(str(mail["To"]).lower() for mail in read_mail(running.sink.directory)) == [
        "ada@example.com",
        "ada@example.com",
        "grace@example.com",
    ]
    held_back = [r for r in caplog.records if "held back" in r.getMessage()]
    assert [r.levelno for r in held_back] == [logging.WARNING]
    assert "ada@" not in held_back[0].getMessage().lower()


@sqlite_only
@pytest.mark.parametrize("overrides", [{"recipient_mail_burst": 1, "recipient_mails_per_hour": 0.01}])
async def test_confirmations_are_never_capped_each_is_the_receipt_of_a_captured_payment(running: Running) -> None:
    """A customer ordering more often than the cap allows cancellations gets every receipt."""
    for n in range(3):
        await running.publish(ORDER_CONFIRMED, confirmed_event(f"evt_r{n}", f"ord_r{n}"), f"evt_r{n}")
    await eventually(lambda: len(read_mail(running.sink.directory)) == 3, "every receipt")
    assert running.suppressed("recipient_cap") == 0


class _CommitFailed(Exception):
    """The consumer's commit failing after the handler returned (a dropped connection): the event is retried."""


async def _applied(database: Database, intake: NotificationIntake, event: Event, *, commits: bool = True) -> None:
    try:
        async with database.transaction() as session:
            await intake(session, event)
            if not commits:
                raise _CommitFailed
    except _CommitFailed:
        pass


@sqlite_only
async def test_an_event_retried_after_its_transaction_failed_takes_one_place_under_the_cap_and_counts_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    suppressed: list[str] = []
    intake = NotificationIntake(cap=RecipientCap(0.01, 1), on_suppressed=suppressed.append)
    event = Event("evt_b", ORDER_CANCELLED, cancelled_event("evt_b", "ord_b"), {}, 1)
    add = NotificationRepository.add

    async def fails_once(self: NotificationRepository, notification: Notification) -> None:
        monkeypatch.setattr(NotificationRepository, "add", add)
        raise sqlalchemy_exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(NotificationRepository, "add", fails_once)
    with pytest.raises(sqlalchemy_exc.OperationalError):
        await _applied(database, intake, event)
    await _applied(database, intake, replace(event, attempt=2), commits=False)
    await _applied(database, intake, replace(event, attempt=3))
    held = Event("evt_h", ORDER_CANCELLED, cancelled_event("evt_h", "ord_h", email="ADA@example.com"), {}, 1)
    for attempt in (1, 2):
        await _applied(database, intake, replace(held, attempt=attempt), commits=attempt == 2)
    async with database.read() as session:
        assert [n.event_id for n in await NotificationRepository(session).list_for_user("usr_1", 10, None)] == ["evt_b"]
    assert suppressed == ["recipient_cap"]


@sqlite_only
async def test_a_cancellation_held_back_by_the_cap_keeps_its_orders_later_confirmation_from_being_mailed(
    database: Database,
) -> None:
    """Not listed, as nothing was e-mailed; recorded all the same, so that a confirmation of the order applied
    once the address's bucket refilled (a replay) is not mailed "confirmed" for a cancelled order."""
    now = [0.0]
    intake = NotificationIntake(cap=RecipientCap(1, 1, clock=lambda: now[0]))
    await _applied(database, intake, Event("evt_x", ORDER_CANCELLED, cancelled_event("evt_x", "ord_x"), {}, 1))
    await _applied(database, intake, Event("evt_c", ORDER_CANCELLED, cancelled_event("evt_c", "ord_c"), {}, 1))
    now[0] += 3600
    await _applied(database, intake, Event("evt_r", ORDER_CONFIRMED, confirmed_event("evt_r", "ord_c"), {}, 1))
    async with database.read() as session:
        repository = NotificationRepository(session)
        assert [n.event_id for n in await repository.list_for_user("usr_1", 10, None)] == ["evt_x"]
        assert await repository.order_cancelled("ord_c")


@sqlite_only
async def test_a_redelivered_event_records_no_second_notification_and_sends_no_second_email(
    running: Running,
) -> None:
    payload = confirmed_event("evt_3", "ord_3")
    # As after a crash between the commit and the ack: the same event is delivered again.
    assert await running.consumer._apply(Event("evt_3", ORDER_CONFIRMED, payload, {"Nats-Msg-Id": "evt_3"}, 1))
    assert not await running.consumer._apply(Event("evt_3", ORDER_CONFIRMED, payload, {"Nats-Msg-Id": "evt_3"}, 2))

    await eventually(lambda: mail_for(running.sink.directory, "ord_3"), "the e-mail")
    await eventually(lambda: running.stored("evt_3"), "the notification")
    assert [n.event_id for n in await running.listed()] == ["evt_3"]
    assert len(mail_for(running.sink.directory, "ord_3")) == 1


@sqlite_only
async def test_while_the_mail_server_is_down_the_notification_stays_pending_and_is_sent_once_it_is_back(
    running: Running,
) -> None:
    directory = running.sink.directory
    await running.sink.stop_listening()
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_4", "ord_4"), "evt_4")

    async def retried() -> bool:
        stored = await running.stored("evt_4")
        return stored is not None and stored.attempts >= 2

    await eventually(retried, "two failed attempts")
    stored = await running.stored("evt_4")
    assert stored is not None
    assert stored.state is State.PENDING
    assert stored.last_error != ""
    assert [n.state for n in await running.listed()] == [PENDING]

    await running.sink.listen_again()
    await eventually(lambda: mail_for(directory, "ord_4"), "the e-mail once the server is back")

    async def sent() -> bool:
        return [n.state for n in await running.listed()] == [SENT]

    await eventually(sent, "SENT")
    assert len(mail_for(directory, "ord_4")) == 1
    # Each attempt counted by how it ended.
    assert running.attempts("retrying") >= 2
    assert (running.attempts("sent"), running.attempts("failed")) == (1, 0)


@sqlite_only
@pytest.mark.parametrize("overrides", [{"send_give_up_after_seconds": 0.15}])
async def test_a_notification_whose_attempts_all_fail_ends_failed_saying_so_without_our_relays_details(
    running: Running,
) -> None:
    await running.sink.close()
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_5", "ord_5"), "evt_5")

    async def failed() -> list[notifications_pb2.Notification]:
        listed = await running.listed()
        return listed if listed and listed[0].state == FAILED else []

    (notification,) = await eventually(failed, "FAILED")
    # The connection error names the relay (its address and port): for operators, not for the customer.
    assert notification.failure_reason == "not delivered: the mail service could not send it"
    assert not notification.HasField("sent_at")
    assert running.attempts("retrying") >= 1
    assert (running.attempts("failed"), running.attempts("sent")) == (1, 0)


class Bouncer(MailFolder):
    """A mail server that does not know bounce@example.com, for good."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@sqlite_only
async def test_a_recipient_the_mail_server_refuses_for_good_fails_at_once(
    running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shopmesh.notifications")
    port = running.sink.port
    await running.sink.close()
    bouncer = Bouncer(tmp_path / "bounced")
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(bouncer), "127.0.0.1", port)
    try:
        await running.publish(ORDER_CONFIRMED, confirmed_event("evt_6", "ord_6", email="bounce@example.com"), "evt_6")

        async def failed() -> list[notifications_pb2.Notification]:
            listed = await running.listed()
            return listed if listed and listed[0].state == FAILED else []

        (notification,) = await eventually(failed, "FAILED")
        assert notification.failure_reason == "not delivered: the recipient's mail server refused the address"
        # The refusal names the address ("recipient refused: bounce@example.com: 550 ..."): logs never do.
        logged = [r.getMessage() for r in caplog.records if r.name == "shopmesh.notifications.sender"]
        assert any("failed after 1 attempt(s): recipient refused: <recipient>: 550" in m for m in logged), logged
        assert not [m for m in logged if "bounce@" in m.lower()]
        stored = await running.stored("evt_6")
        assert stored is not None
        assert stored.attempts == 1
    finally:
        server.close()
        await server.wait_closed()


@sqlite_only
async def test_poison_messages_are_dead_lettered_and_later_messages_still_flow(running: Running) -> None:
    await running.publish(ORDER_CONFIRMED, b"\xff\xfenot a protobuf", "evt_garbage")
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_noemail", "ord_x", email=""), "evt_noemail")
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_7", "ord_7"), "evt_7")

    await eventually(lambda: mail_for(running.sink.directory, "ord_7"), "the later e-mail")

    async def parked() -> list[RawStreamMsg]:
        letters = await running.dead_letters()
        return letters if len(letters) == 2 else []

    originals = set()
    for message in await eventually(parked, "two dead-lettered messages"):
        assert message.subject == f"deadletter.notifications.{ORDER_CONFIRMED}"
        assert message.headers is not None
        assert message.headers["Shopmesh-Attempts"] == "3"
        originals.add(message.headers["Shopmesh-Original-Event-Id"])
    assert originals == {"evt_garbage", "evt_noemail"}
    assert [n.event_id for n in await running.listed()] == ["evt_7"]


def confirmed_with(order_id: str, quantity: int, price: int, item_currency: str, total_minor: int) -> bytes:
    """A confirmation of one Widget line: `quantity` x `price` in `item_currency` (its line total `price`
    too, as the audit's event had it), the total in USD."""
    each = money_pb2.Money(amount_minor=price, currency=item_currency)
    item = orders_pb2.OrderItem(product_name="Widget", quantity=quantity, unit_price=each, line_total=each)
    total = money_pb2.Money(amount_minor=total_minor, currency="USD")
    return events_pb2.OrderConfirmed(
        order_id=order_id, user_id="usr_1", email="ada@example.com", items=[item], total=total
    ).SerializeToString()


@sqlite_only
async def test_an_event_with_impossible_amounts_is_dead_lettered_and_never_mailed(running: Running) -> None:
    """Audit finding: "-3 x Widget -USD 5.00 each ... Total charged: -USD 5.00" was mailed, and an item
    priced in another currency than the total was mailed in the total's. No retry makes such an event
    right: it is poison, parked like an event without an e-mail address."""
    impossible = {
        "evt_negative": confirmed_with("ord_negative", -3, -500, "USD", -500),
        "evt_euros": confirmed_with("ord_euros", 1, 500, "EUR", 500),
        "evt_refund": confirmed_with("ord_refund", 1, 500, "USD", -500),
    }
    for event_id, payload in impossible.items():
        await running.publish(ORDER_CONFIRMED, payload, event_id)
    await running.publish(ORDER_CONFIRMED, confirmed_event("evt_after", "ord_after"), "evt_after")
    await eventually(lambda: mail_for(running.sink.directory, "ord_after"), "the later e-mail")

    async def all_parked() -> bool:
        letters = await running.dead_letters()
        return {m.headers["Shopmesh-Original-Event-Id"] for m in letters if m.headers} == set(impossible)

    await eventually(all_parked, "every impossible event parked")
    assert [n.event_id for n in await running.listed()] == ["evt_after"]
    for event_id in impossible:
        assert not mail_for(running.sink.directory, event_id.replace("evt_", "ord_"))


@sqlite_only
async def test_an_email_sent_again_after_a_crash_is_one_message_in_the_mailbox(
    database: Database, sink: SmtpSink
) -> None:
    payload = confirmed_event("evt_8", "ord_8")
    async with database.transaction() as session:
        await NotificationIntake()(session, Event("evt_8", ORDER_CONFIRMED, payload, {}, 1))
    mailer = SmtpMailer(SmtpOptions("127.0.0.1", sink.port, "shop@shopmesh.example", timeout_seconds=2))
    sends: list[str] = []

    class CountingMailer:
        async def send(self, notification: Notification) -> None:
            sends.append(notification.id)
            await mailer.send(notification)

    now = datetime.now(UTC)
    policy = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600)
    # A sender that claims the notification and has the server accept it, then dies before recording it.
    async with database.transaction() as session:
        (due,) = await NotificationRepository(session).due(now, 10)
        claimed = await NotificationRepository(session).claim(due, now, now + timedelta(seconds=4))
    assert claimed is not None
    await CountingMailer().send(claimed)

    # Before the claim runs out, nobody sends it again; after, the next sender does.
    early = NotificationSender(database, CountingMailer(), policy, claim_seconds=4, clock=lambda: now)
    assert await early.send_due() == 0
    later = NotificationSender(
        database, CountingMailer(), policy, claim_seconds=4, clock=lambda: now + timedelta(seconds=5)
    )
    assert await later.send_due() == 1

    assert len(sends) == 2
    (mail,) = mail_for(sink.directory, "ord_8")
    assert mail["Message-ID"] == "<evt_8@shopmesh.notifications>"
    async with database.transaction() as session:
        (stored,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
    assert (stored.state, stored.attempts) == (State.SENT, 1)


@sqlite_only
async def test_a_stop_cut_off_before_the_grace_is_up_cancels_the_attempt_in_flight(database: Database) -> None:
    async with database.transaction() as session:
        await NotificationIntake()(session, Event("evt_9", ORDER_CONFIRMED, confirmed_event("evt_9", "ord_9"), {}, 1))
    sending, cancelled = asyncio.Event(), asyncio.Event()

    class HangingMailer:
        async def send(self, notification: Notification) -> None:
            sending.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    sender = NotificationSender(
        database,
        HangingMailer(),
        RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600),
        claim_seconds=30,
    )
    sender.start()
    await asyncio.wait_for(sending.wait(), timeout=10)
    # Its shutdown hook, cut off at SHUTDOWN_HOOKS_BUDGET_SECONDS before the grace was up.
    await cut_off_midway(sender.stop(grace_seconds=60))
    # The attempt the grace was waiting for (shielded from the wait's timeout) does not go on past the stop.
    assert cancelled.is_set()


async def test_a_database_outage_in_the_senders_loop_is_one_warning_and_a_line_when_back_not_one_per_retry(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    rounds: list[bool] = []
    back = asyncio.Event()

    class NoMail:
        async def send(self, notification: Notification) -> None:
            raise AssertionError("nothing is due")

    policy = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600)
    sender = NotificationSender(database, NoMail(), policy, claim_seconds=10, idle_poll_seconds=0.05)
    send_due = sender.send_due

    async def pool_exhausted_four_times() -> int:
        if len(rounds) < 4:
            rounds.append(False)
            raise sqlalchemy_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")
        rounds.append(True)
        back.set()
        return await send_due()

    sender.send_due = pool_exhausted_four_times  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    sender.start()
    try:
        await asyncio.wait_for(back.wait(), timeout=10)
    finally:
        await sender.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None
    assert "unavailable" in warnings[0].getMessage()
    assert [r for r in caplog.records if "database again" in r.getMessage()]


def confirmed_with_lines(order_id: str, lines: list[tuple[int, int, int]], total_minor: int) -> bytes:
    """A confirmation of Widget lines, each (quantity, unit price, line total) in USD, and its total."""
    usd = money_pb2.Money
    items = [
        orders_pb2.OrderItem(
            product_name="Widget",
            quantity=quantity,
            unit_price=usd(amount_minor=price, currency="USD"),
            line_total=usd(amount_minor=line_total, currency="USD"),
        )
        for quantity, price, line_total in lines
    ]
    total = usd(amount_minor=total_minor, currency="USD")
    return events_pb2.OrderConfirmed(
        order_id=order_id, user_id="usr_1", email="ada@example.com", items=items, total=total
    ).SerializeToString()


@sqlite_only
async def test_an_event_whose_totals_do_not_add_up_is_dead_lettered_and_never_mailed(running: Running) -> None:
    """A line total other than its quantity times its unit price, or a total other than the sum of the
    line totals, was mailed as it came: the customer read "2 x Widget USD 5.00 each ... USD 1.00", or a
    total charged that no line adds up to. Orders never publishes such an event (OrderItem, Order.total),
    so no retry makes it right and no figure of it can be trusted: it is poison, parked with the reason
    naming what does not add up."""
    untrusted = {
        "evt_line": confirmed_with_lines("ord_line", [(2, 500, 100)], 100),
        "evt_total": confirmed_with_lines("ord_total", [(2, 500, 1000), (1, 300, 300)], 1000),
    }
    for event_id, payload in untrusted.items():
        await running.publish(ORDER_CONFIRMED, payload, event_id)
    await running.publish(
        ORDER_CONFIRMED, confirmed_with_lines("ord_sums", [(2, 500, 1000), (1, 300, 300)], 1300), "evt_sums"
    )
    await eventually(lambda: mail_for(running.sink.directory, "ord_sums"), "the e-mail of the event that adds up")

    async def all_parked() -> dict[str, str]:
        letters = await running.dead_letters()
        reasons = {m.headers["Shopmesh-Original-Event-Id"]: m.headers["Shopmesh-Error"] for m in letters if m.headers}
        return reasons if set(reasons) == set(untrusted) else {}

    reasons = await eventually(all_parked, "both events parked")
    assert "items[0].line_total is not quantity x unit_price" in reasons["evt_line"]
    assert "total is not the sum of the line totals" in reasons["evt_total"]
    assert [n.event_id for n in await running.listed()] == ["evt_sums"]
    assert not mail_for(running.sink.directory, "ord_line")
    assert not mail_for(running.sink.directory, "ord_total")


@sqlite_only
async def test_a_confirmation_applied_after_its_orders_cancellation_sends_no_confirmed_email(
    database: Database,
) -> None:
    """The stream publishes an order's confirmation before its cancellation, but a confirmation that failed
    and is retried, was parked and replayed, or was held by another replica on the durable is applied after
    it (docs/architecture.md; recommendations handles it). The customer must not be told last that the
    cancelled order is confirmed and being prepared."""
    intake = NotificationIntake()
    cancellation = Event("evt_x", ORDER_CANCELLED, cancelled_event("evt_x", "ord_9"), {"Nats-Msg-Id": "evt_x"}, 1)
    confirmation = Event("evt_c", ORDER_CONFIRMED, confirmed_event("evt_c", "ord_9"), {"Nats-Msg-Id": "evt_c"}, 3)
    async with database.transaction() as session:
        await intake(session, cancellation)
    async with database.transaction() as session:
        await intake(session, confirmation)

    async with database.transaction() as session:
        listed = await NotificationRepository(session).list_for_user("usr_1", 100, None)
    to_send = [n.subject for n in listed if n.order_id == "ord_9" and n.state is State.PENDING]
    assert to_send == ["Your shopmesh order ord_9 was cancelled"]


@sqlite_only
@pytest.mark.parametrize(
    ("subject", "payload", "kind"),
    [
        (ORDER_CONFIRMED, confirmed_event, EventKind.ORDER_CONFIRMED),
        (ORDER_CANCELLED, cancelled_event, EventKind.ORDER_CANCELLED),
    ],
)
async def test_a_second_event_of_the_same_kind_for_an_order_is_applied_without_a_second_email(
    running: Running,
    caplog: pytest.LogCaptureFixture,
    subject: str,
    payload: Callable[[str, str], bytes],
    kind: EventKind,
) -> None:
    """Audit finding: the only uniqueness was per event id, so an order's confirmation (or cancellation)
    published again under a new event id was mailed again. The second is applied (acknowledged, never
    retried nor parked) and mails nothing; the log says why."""
    caplog.set_level(logging.INFO, logger="shopmesh.notifications")
    first = Event("evt_once", subject, payload("evt_once", "ord_once"), {"Nats-Msg-Id": "evt_once"}, 1)
    again = Event("evt_again", subject, payload("evt_again", "ord_once"), {"Nats-Msg-Id": "evt_again"}, 1)
    assert await running.consumer._apply(first)
    assert await running.consumer._apply(again)

    await eventually(lambda: mail_for(running.sink.directory, "ord_once"), "the first e-mail")
    listed = await running.listed()
    assert [(n.event_id, n.kind) for n in listed] == [("evt_once", KINDS[kind])]
    assert len(mail_for(running.sink.directory, "ord_once")) == 1
    (line,) = [r for r in caplog.records if "evt_again" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert "already" in line.getMessage()


@sqlite_only
@pytest.mark.parametrize("overrides", [{"send_give_up_after_seconds": 0.15}])
async def test_a_later_event_of_an_orders_kind_whose_email_failed_is_mailed_and_the_failed_one_stays_listed(
    running: Running,
) -> None:
    """A FAILED notification counted as the order "notified of it already": the customer never had the
    e-mail, yet every later event of its kind (a republish once the cause is fixed) was applied with
    none. The later event gets its own notification and e-mail; the FAILED one stays listed as it was, and a
    redelivery of either event records nothing more."""
    directory = running.sink.directory
    await running.sink.stop_listening()  # the relay down until the first e-mail is given up
    first = Event("evt_lost", ORDER_CONFIRMED, confirmed_event("evt_lost", "ord_lost"), {"Nats-Msg-Id": "evt_lost"}, 1)
    assert await running.consumer._apply(first)

    async def given_up() -> bool:
        stored = await running.stored("evt_lost")
        return stored is not None and stored.state is State.FAILED

    await eventually(given_up, "the first e-mail FAILED")
    await running.sink.listen_again()
    later = Event("evt_later", ORDER_CONFIRMED, confirmed_event("evt_later", "ord_lost"), {}, 1)
    assert await running.consumer._apply(later)
    (mail,) = await eventually(lambda: mail_for(directory, "ord_lost"), "the later event's e-mail")
    assert mail["Message-ID"] == "<evt_later@shopmesh.notifications>"

    async def later_sent() -> list[tuple[str, int]]:
        listed = [(n.event_id, n.state) for n in await running.listed()]
        return listed if ("evt_later", SENT) in listed else []

    assert sorted(await eventually(later_sent, "the later one SENT")) == [("evt_later", SENT), ("evt_lost", FAILED)]
    assert not await running.consumer._apply(replace(first, attempt=2))
    assert not await running.consumer._apply(replace(later, attempt=2))
    assert sorted((n.event_id, n.state) for n in await running.listed()) == [
        ("evt_later", SENT),
        ("evt_lost", FAILED),
    ]
    assert len(mail_for(directory, "ord_lost")) == 1


async def test_an_orders_failed_email_stands_only_for_its_own_event(database: Database) -> None:
    """On both databases: the FAILED notification's own event, applied again once the consumer has
    forgotten its id, records nothing (its event id is unique per channel); a later event of its kind
    records a notification to send; one after that finds it and records nothing."""
    intake, now = NotificationIntake(), datetime.now(UTC)

    def confirmation(event_id: str) -> Event:
        return Event(event_id, ORDER_CONFIRMED, confirmed_event(event_id, "ord_f"), {}, 1)

    async with database.transaction() as session:
        await intake(session, confirmation("evt_f1"))
    async with database.transaction() as session:
        repository = NotificationRepository(session)
        (due,) = await repository.due(now + timedelta(seconds=1), 10)
        claimed = await repository.claim(due, now + timedelta(seconds=1), now + timedelta(seconds=5))
        assert claimed is not None
        policy = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600)
        refused = claimed.delivery_failed("550 no such user", now, policy, refusal=Refusal.RECIPIENT)
        assert await repository.record_delivery(refused, now + timedelta(seconds=5))
    for event_id in ("evt_f1", "evt_f2", "evt_f3"):
        async with database.transaction() as session:
            await intake(session, confirmation(event_id))

    async with database.read() as session:
        listed = await NotificationRepository(session).list_for_user("usr_1", 10, None)
    assert sorted((n.event_id, n.state) for n in listed) == [("evt_f1", State.FAILED), ("evt_f2", State.PENDING)]


@pytest.fixture
def relay_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A relay's server-side TLS context, its self-signed certificate for 127.0.0.1 the only one the
    client trusts (SSL_CERT_FILE: OpenSSL's default verify paths, which aiosmtplib's context loads)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "relay.pem", tmp_path / "relay.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@sqlite_only
async def test_a_mail_server_refusing_our_credentials_is_retried_not_failed_for_good(
    database: Database, tmp_path: Path, relay_tls: ssl.SSLContext
) -> None:
    """535 to AUTH says nothing about the e-mail: the relay's credentials are wrong or being rotated, and
    every e-mail is refused alike until they are fixed. Failing each one for good at its first attempt
    loses every e-mail of that window beyond repair; the runbook's permanent refusals are a bad address
    or a rejected sender."""

    def refuse(*_: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    folder = MailFolder(tmp_path / "mail")
    # Credentials go only over TLS: the relay offers STARTTLS, with a certificate the client trusts.
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(folder, authenticator=refuse, tls_context=relay_tls), "127.0.0.1", 0
    )
    port = int(server.sockets[0].getsockname()[1])
    try:
        mailer = SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0, username="shop", password="old"))
        # A retry a minute away: with 50 ms, a slow first attempt (a loaded machine) made the second due
        # within the same pass, and send_due counted two.
        sender = NotificationSender(
            database,
            mailer,
            RetryPolicy(base_delay_seconds=60.0, max_delay_seconds=120.0, give_up_after_seconds=3600),
            claim_seconds=10,
        )
        intake = NotificationIntake()
        event = Event("evt_auth", ORDER_CONFIRMED, confirmed_event("evt_auth", "ord_auth"), {}, 1)
        async with database.transaction() as session:
            await intake(session, event)

        assert await sender.send_due() == 1
        async with database.transaction() as session:
            (stored,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
        assert "535" in stored.last_error
        assert stored.state is State.PENDING
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("refusal", "permanent"),
    [
        (aiosmtplib.SMTPConnectResponseError(554, "no service for you"), False),
        (aiosmtplib.SMTPHeloError(501, "bad HELO"), False),
        (aiosmtplib.SMTPResponseException(530, "5.7.0 must issue STARTTLS first"), False),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 credentials invalid"), False),
        (aiosmtplib.SMTPSenderRefused(553, "sender not allowed", "shop@example.com"), False),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(530, "auth first", "a@b.c")]), False),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "a@b.c")]), True),
        # The relay's policy (RFC 3463 5.7.x), not the recipient: its settings or ours, retried.
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(554, "5.7.1 Relay denied", "a@b.c")]),
            False,
        ),
        (aiosmtplib.SMTPRecipientRefused(554, "5.7.1 <a@b.c>: Relay access denied", "a@b.c"), False),
        (aiosmtplib.SMTPRecipientRefused(550, "5.1.1 <a@b.c>: no such user", "a@b.c"), True),
        (aiosmtplib.SMTPDataError(554, "message rejected as spam"), True),
        (aiosmtplib.SMTPDataError(451, "try again later"), False),
    ],
)
async def test_only_a_refusal_of_the_emails_recipient_or_data_fails_it_for_good(
    monkeypatch: pytest.MonkeyPatch, refusal: Exception, permanent: bool
) -> None:
    async def refuse(*_: Any, **__: Any) -> None:
        raise refusal

    monkeypatch.setattr(aiosmtplib, "send", refuse)
    mailer = SmtpMailer(SmtpOptions("127.0.0.1", 25, "shop@example.com", 5.0))
    kind, now = EventKind.ORDER_CONFIRMED, datetime.now(UTC)
    notification = Notification("ntf_1", "usr_1", "ord_1", Channel.EMAIL, "a@b.co", "Hi", "", "<e@x>", kind, "evt", now)
    with pytest.raises(DeliveryFailed) as caught:
        await mailer.send(notification)
    assert caught.value.permanent is permanent


async def _latin1_refuser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A mail server that refuses every recipient for good, saying why in Latin-1 (as localized servers
    and custom reject maps do; RFC 5321 asks for ASCII, aiosmtplib keeps the bytes as surrogate escapes)."""
    writer.write(b"220 mx.example ESMTP\r\n")
    while line := await reader.readline():
        command = line[:4].upper()
        if command == b"EHLO" or command == b"HELO":
            writer.write(b"250 mx.example\r\n")
        elif command == b"RCPT":
            writer.write("550 5.1.1 Empfänger unbekannt\r\n".encode("latin-1"))
        elif command == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 OK\r\n")
        await writer.drain()
    writer.close()


async def test_a_refusal_worded_in_latin_1_fails_the_notification_instead_of_breaking_the_sender(
    database: Database,
) -> None:
    """The refusal's text goes into last_error. With the bytes kept as surrogate escapes
    it cannot be stored, the attempt's outcome is never recorded, and the notification is claimed and sent
    again every claim period, forever: never FAILED, never counted, ShopmeshEmailsFailed never fires."""
    server = await asyncio.start_server(_latin1_refuser, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        mailer = SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0))
        sender = NotificationSender(
            database,
            mailer,
            RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, give_up_after_seconds=3600),
            claim_seconds=10,
        )
        event = Event("evt_l1", ORDER_CONFIRMED, confirmed_event("evt_l1", "ord_l1"), {}, 1)
        async with database.transaction() as session:
            await NotificationIntake()(session, event)

        assert await sender.send_due() == 1
        async with database.transaction() as session:
            (stored,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
        assert (stored.state, stored.attempts) == (State.FAILED, 1)
        assert "550" in stored.last_error
    finally:
        server.close()
        await server.wait_closed()


def _rcpt_refuser(reply: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A mail server that answers every RCPT with `reply` (and everything else with 250)."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.example ESMTP\r\n")
        while line := await reader.readline():
            command = line[:4].upper()
            answers = {b"RCPT": reply, b"QUIT": b"221 bye"}
            writer.write(answers.get(command, b"250 OK") + b"\r\n")
            await writer.drain()
            if command == b"QUIT":
                break
        writer.close()

    return refuse


@pytest.mark.parametrize(
    ("reply", "refusal"),
    [
        # Postfix's per-recipient access rule: this address is refused, not us.
        (b"554 5.7.1 <ada@example.com>: Recipient address rejected: Access denied", Refusal.RECIPIENT),
        # Postfix's reject_unauth_destination: the relay refuses to relay for us, whatever the recipient.
        (b"554 5.7.1 <ada@example.com>: Relay access denied", None),
    ],
)
async def test_a_5_7_refusal_at_rcpt_fails_the_email_for_good_only_when_it_names_the_recipient_as_rejected(
    reply: bytes, refusal: Refusal | None
) -> None:
    server = await asyncio.start_server(_rcpt_refuser(reply), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        mailer = SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0))
        kind, now = EventKind.ORDER_CONFIRMED, datetime.now(UTC)
        notification = Notification(
            "ntf_1", "usr_1", "ord_1", Channel.EMAIL, "ada@example.com", "Hi", "", "<e@x>", kind, "evt", now
        )
        with pytest.raises(DeliveryFailed) as caught:
            await mailer.send(notification)
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.refusal is refusal
    assert reply.decode()[4:] in caught.value.reason


@sqlite_only
async def test_a_confirmation_still_being_retried_when_its_order_is_cancelled_is_not_sent_after_the_cancellation(
    database: Database,
) -> None:
    """Review finding: the intake skips a confirmation applied after the cancellation, but a confirmation
    recorded first whose e-mail is still PENDING (the relay was away, its attempt is backing off) is sent
    after the cancellation's e-mail once the relay answers again: the customer is told last that the
    cancelled order is confirmed, which docs/architecture.md now says cannot happen."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sent: list[EventKind] = []

    class FlakyMailer:
        """Away for the first attempt, then fine."""

        def __init__(self) -> None:
            self.calls = 0

        async def send(self, notification: Notification) -> None:
            self.calls += 1
            if self.calls == 1:
                raise DeliveryFailed("SMTP server did not answer in time")
            sent.append(notification.kind)

    intake = NotificationIntake(clock=lambda: now[0])
    sender = NotificationSender(
        database,
        FlakyMailer(),
        RetryPolicy(base_delay_seconds=60.0, max_delay_seconds=600.0, give_up_after_seconds=3600),
        claim_seconds=10,
        clock=lambda: now[0],
    )
    confirmation = Event("evt_c2", ORDER_CONFIRMED, confirmed_event("evt_c2", "ord_r"), {}, 1)
    cancellation = Event("evt_x2", ORDER_CANCELLED, cancelled_event("evt_x2", "ord_r"), {}, 2)
    async with database.transaction() as session:
        await intake(session, confirmation)
    assert await sender.send_due() == 1  # the relay is away: the confirmation backs off for 60 s
    now[0] += timedelta(seconds=1)
    async with database.transaction() as session:
        await intake(session, cancellation)
    await sender.send_due()  # the cancellation goes out
    now[0] += timedelta(seconds=120)
    await sender.send_due()  # the confirmation's retry
    assert sent[0] is EventKind.ORDER_CANCELLED
    assert sent == [EventKind.ORDER_CANCELLED], f"e-mails in the order sent: {sent}"


async def apply_beside_an_open_one(database: Database, first: Event, second: Event) -> None:
    """Apply `first` in a transaction left open while another applies `second`, which must wait for the
    first's outcome (its lock) rather than be decided beside it; then commit the first and let it finish."""
    intake = NotificationIntake()

    async def apply_second() -> None:
        async with database.transaction() as other:
            await intake(other, second)

    applying = database.transaction()
    session = await applying.__aenter__()
    try:
        await intake(session, first)
        beside = asyncio.create_task(apply_second())

        async def decided_or_waiting() -> bool:
            if beside.done():
                return True
            async with database.read() as reader:
                return bool(await reader.scalar(text(WAITING_ON_A_LOCK)))

        # Until the second waits on a lock (the first's), or was decided without waiting.
        await eventually(decided_or_waiting, f"{second.event_id} waiting or decided")
        assert not beside.done(), f"{second.event_id} was decided before {first.event_id}'s outcome"
    finally:
        await applying.__aexit__(None, None, None)
    await asyncio.wait_for(beside, 10)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_confirmation_applied_while_its_orders_cancellation_is_being_applied_is_not_recorded(
    database: Database,
) -> None:
    """Review finding: the intake's look for the cancellation is a plain read under READ COMMITTED. A
    confirmation applied by another replica (or the replay loop) while the cancellation's transaction is
    still open does not see it, and both e-mails are recorded: the "concurrently consumed" case the fix
    names is not covered on PostgreSQL. The confirmation cannot be decided while the cancellation's
    transaction is open (it may still roll back): it waits for its outcome, then finds it."""
    cancellation = Event("evt_x3", ORDER_CANCELLED, cancelled_event("evt_x3", "ord_p"), {}, 2)
    confirmation = Event("evt_c3", ORDER_CONFIRMED, confirmed_event("evt_c3", "ord_p"), {}, 1)
    # Meanwhile another consumer applies the (retried) confirmation; it must not outlive the cancellation.
    await apply_beside_an_open_one(database, cancellation, confirmation)
    async with database.transaction() as session:
        listed = await NotificationRepository(session).list_for_user("usr_1", 100, None)
    kinds = sorted(n.kind.value for n in listed if n.order_id == "ord_p" and n.state is State.PENDING)
    assert kinds == ["ORDER_CANCELLED"], kinds


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_two_confirmations_of_an_order_applied_at_once_by_two_replicas_record_one_notification(
    database: Database,
) -> None:
    """The per-order lock, not a unique constraint, keeps an order to one e-mail of a kind: a replica that
    applies the order's second confirmation while another's transaction with the first is still open
    waits for its outcome, then finds the first's notification."""
    first = Event("evt_r1", ORDER_CONFIRMED, confirmed_event("evt_r1", "ord_r"), {}, 1)
    second = Event("evt_r2", ORDER_CONFIRMED, confirmed_event("evt_r2", "ord_r"), {}, 1)
    await apply_beside_an_open_one(database, first, second)
    async with database.transaction() as session:
        listed = await NotificationRepository(session).list_for_user("usr_1", 100, None)
    assert [n.event_id for n in listed if n.order_id == "ord_r"] == ["evt_r1"]


async def test_a_pending_notification_a_newer_release_added_is_left_to_that_releases_senders(
    database: Database,
) -> None:
    """Read as UNSPECIFIED (a channel or kind this release does not know, an SMS say), it would be e-mailed
    to a recipient that is no e-mail address: the sender picks up only what this release knows."""
    from sqlalchemy import select, update

    from shopmesh_notifications.store.tables import notifications

    now = datetime(2026, 1, 1, tzinfo=UTC)
    sent: list[str] = []

    class RecordingMailer:
        async def send(self, notification: Notification) -> None:
            sent.append(notification.event_id)

    intake = NotificationIntake(clock=lambda: now)
    async with database.transaction() as session:
        for event_id, order_id in (("evt_s1", "ord_s1"), ("evt_s2", "ord_s2"), ("evt_s3", "ord_s3")):
            await intake(session, Event(event_id, ORDER_CONFIRMED, confirmed_event(event_id, order_id), {}, 1))
        await session.execute(update(notifications).where(notifications.c.event_id == "evt_s1").values(channel="SMS"))
        await session.execute(
            update(notifications).where(notifications.c.event_id == "evt_s2").values(kind="ORDER_SHIPPED")
        )
    sender = NotificationSender(
        database,
        RecordingMailer(),
        RetryPolicy(base_delay_seconds=60.0, max_delay_seconds=600.0, give_up_after_seconds=3600),
        claim_seconds=10,
        clock=lambda: now,
    )
    assert await sender.send_due() == 1
    assert sent == ["evt_s3"]
    async with database.transaction() as session:
        repository = NotificationRepository(session)
        assert await repository.next_due_at() is None  # nothing this release can send is waiting
        stored = await session.execute(select(notifications.c.channel, notifications.c.kind, notifications.c.state))
        assert sorted(tuple(row) for row in stored) == [
            ("EMAIL", "ORDER_CONFIRMED", "SENT"),
            ("EMAIL", "ORDER_SHIPPED", "PENDING"),
            ("SMS", "ORDER_CONFIRMED", "PENDING"),
        ]


class EnvelopeRecorder(MailFolder):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.recipients.append(list(envelope.rcpt_tos))
        return await super().handle_DATA(server, session, envelope)


async def test_a_stored_recipient_that_is_not_one_address_fails_for_good_and_nobody_is_mailed(tmp_path: Path) -> None:
    """An address an older release's looser check stored (`root,ada@example.com`): the SMTP library read
    the To header as recipients of its own (`root`, at the relay's domain), never the customer."""
    recorder = EnvelopeRecorder(tmp_path / "mail")
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(recorder), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        mailer = SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0))
        kind, now = EventKind.ORDER_CONFIRMED, datetime.now(UTC)
        to = "root,ada@example.com"
        notification = Notification("ntf_1", "usr_1", "ord_1", Channel.EMAIL, to, "Hi", "", "<e@x>", kind, "evt", now)
        with pytest.raises(DeliveryFailed) as caught:
            await mailer.send(notification)
        assert caught.value.permanent
        # The same mailer still mails a good address: the refusal was of this e-mail alone.
        await mailer.send(replace(notification, recipient="ada@example.com"))
    finally:
        server.close()
        await server.wait_closed()
    assert recorder.recipients == [["ada@example.com"]]


def notification_to(recipient: str = "ada@example.com") -> Notification:
    kind, now = EventKind.ORDER_CONFIRMED, datetime.now(UTC)
    return Notification("ntf_1", "usr_1", "ord_1", Channel.EMAIL, recipient, "Hi", "", "<e@x>", kind, "evt", now)


async def test_credentials_are_never_sent_to_a_relay_that_does_not_offer_starttls(tmp_path: Path) -> None:
    """With SMTP_USE_TLS false, STARTTLS was used only when offered: a relay (or whoever strips its EHLO)
    that does not offer it received the relay's password in plain text. A username requires STARTTLS; a
    relay without it is a settings problem, retried like a refused login, and no AUTH is ever sent."""
    presented: list[tuple[str, object]] = []

    def record(_server: SMTP, _session: Session, _envelope: Envelope, mechanism: str, data: object) -> AuthResult:
        presented.append((mechanism, data))
        return AuthResult(success=True)

    folder = MailFolder(tmp_path / "mail")
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(folder, authenticator=record, auth_require_tls=False), "127.0.0.1", 0
    )
    port = int(server.sockets[0].getsockname()[1])
    options = SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0, username="relay-user", password="s3cret")
    try:
        with pytest.raises(DeliveryFailed) as caught:
            await SmtpMailer(options).send(notification_to())
    finally:
        server.close()
        await server.wait_closed()
    assert presented == []
    assert not caught.value.permanent
    assert "STARTTLS" in caught.value.reason
    assert read_mail(tmp_path / "mail") == []


RELAY_DENIED = "554 5.7.1 <{}>: Relay access denied (client host [10.42.3.17] not in mynetworks)"


class PolicyRefuser(MailFolder):
    """A relay whose own policy refuses every recipient (our pod's network is not in its mynetworks)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        return RELAY_DENIED.format(address)


@sqlite_only
async def test_a_relays_policy_refusal_at_rcpt_is_retried_as_a_settings_problem_not_failed_for_good(
    database: Database, tmp_path: Path
) -> None:
    """An enhanced status 5.7.x (RFC 3463: security or policy) at RCPT is the relay refusing us, not the
    recipient: every e-mail gets it until the relay's settings are fixed. Failed for good at its first
    attempt, each was lost, and the relay's reply (its internal addresses) was the customer's failure_reason."""
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(PolicyRefuser(tmp_path / "mail")), "127.0.0.1", 0
    )
    port = int(server.sockets[0].getsockname()[1])
    try:
        mailer = SmtpMailer(SmtpOptions("127.0.0.1", port, "shop@example.com", 5.0))
        sender = NotificationSender(
            database,
            mailer,
            RetryPolicy(base_delay_seconds=60.0, max_delay_seconds=120.0, give_up_after_seconds=3600),
            claim_seconds=10,
        )
        event = Event("evt_relay", ORDER_CONFIRMED, confirmed_event("evt_relay", "ord_relay"), {}, 1)
        async with database.transaction() as session:
            await NotificationIntake()(session, event)

        assert await sender.send_due() == 1
        async with database.transaction() as session:
            (stored,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
    finally:
        server.close()
        await server.wait_closed()
    assert (stored.state, stored.attempts, stored.failure_reason) == (State.PENDING, 1, "")
    # For operators: the relay's own words.
    assert "5.7.1 <ada@example.com>: Relay access denied" in stored.last_error


class CategoryRefuser(MailFolder):
    """A mail server refusing for good by address: an unknown recipient at RCPT, spam at DATA."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 <bounce@example.com>: user unknown in virtual mailbox table on mx-7.internal"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "554 5.6.0 message rejected by filter-3.internal (score 9.1)"


@sqlite_only
@pytest.mark.parametrize(
    ("email", "public", "relays_words"),
    [
        ("bounce@example.com", "not delivered: the recipient's mail server refused the address", "mx-7.internal"),
        ("ada@example.com", "not delivered: the mail server refused the message", "filter-3.internal"),
    ],
)
async def test_list_notifications_gives_a_fixed_reason_per_refusal_never_the_mail_servers_reply(
    running: Running, tmp_path: Path, email: str, public: str, relays_words: str
) -> None:
    """failure_reason is the customer's (ListNotifications): a fixed text per kind of refusal. The server's
    reply names its hosts (and a relay's, its networks): it stays in last_error and the logs, for operators."""
    port = running.sink.port
    await running.sink.close()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(CategoryRefuser(tmp_path / "refused")), "127.0.0.1", port
    )
    try:
        await running.publish(ORDER_CONFIRMED, confirmed_event("evt_r", "ord_r", email=email), "evt_r")

        async def failed() -> list[notifications_pb2.Notification]:
            listed = await running.listed()
            return listed if listed and listed[0].state == FAILED else []

        (notification,) = await eventually(failed, "FAILED")
    finally:
        server.close()
        await server.wait_closed()
    assert notification.failure_reason == public
    stored = await running.stored("evt_r")
    assert stored is not None
    assert relays_words in stored.last_error


@sqlite_only
async def test_with_the_default_settings_a_relay_down_for_hours_loses_no_email(
    database: Database, sink: SmtpSink, settings: NotificationsSettings
) -> None:
    """The defaults gave up after 10 attempts, 511 s of waits (1 s doubling; the 600 s cap never reached):
    an outage of the relay longer than about 8.5 minutes failed every e-mail of that window for good.
    Giving up is a time window (SEND_GIVE_UP_AFTER_SECONDS, a day): the waits reach the cap, and the
    e-mail goes out once the relay is back, hours later. The relay is really down (nothing listens on its
    port), the clock the sender reads is the test's."""
    directory = sink.directory
    await sink.stop_listening()
    now = [datetime.now(UTC)]
    mailer = SmtpMailer(SmtpOptions("127.0.0.1", sink.port, "shop@example.com", 5.0))
    sender = NotificationSender(database, mailer, retry_policy(settings), claim_seconds=10, clock=lambda: now[0])
    event = Event("evt_long", ORDER_CONFIRMED, confirmed_event("evt_long", "ord_long"), {}, 1)
    async with database.transaction() as session:
        await NotificationIntake()(session, event)
    now[0] = datetime.now(UTC)  # its first attempt is due

    async def stored() -> Notification:
        async with database.read() as session:
            (notification,) = await NotificationRepository(session).list_for_user("usr_1", 10, None)
        return notification

    waits: list[float] = []
    outage_ends = now[0] + timedelta(hours=3)
    while now[0] < outage_ends:
        assert await sender.send_due() == 1
        notification = await stored()
        assert notification.state is State.PENDING, notification.failure_reason
        assert notification.next_attempt_at is not None
        waits.append((notification.next_attempt_at - now[0]).total_seconds())
        now[0] = notification.next_attempt_at
    assert max(waits) == settings.send_max_backoff_seconds

    await sink.listen_again()
    assert await sender.send_due() == 1
    assert (await stored()).state is State.SENT
    assert len(mail_for(directory, "ord_long")) == 1
