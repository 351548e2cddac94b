"""Order events in, notifications out: the contract's shapes mapped to the domain's and back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shopmesh.common.v1 import money_pb2
from shopmesh.notifications.v1 import notifications_pb2
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis import consumer
from shopmesh_chassis.consumer import Event
from shopmesh_notifications.codec import ORDER_CANCELLED, ORDER_CONFIRMED, notification_to_proto, order_event
from shopmesh_notifications.domain.events import EventKind, InvalidEvent, Line
from shopmesh_notifications.domain.model import Channel, Notification

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def delivered(subject: str, event_id: str, payload: bytes) -> Event:
    return Event(event_id, subject, payload, {"Nats-Msg-Id": event_id}, attempt=1)


def test_an_order_confirmed_payload_becomes_an_order_event_with_the_message_id_as_event_id() -> None:
    payload = events_pb2.OrderConfirmed(
        event_id="evt_payload",
        order_id="ord_1",
        user_id="usr_1",
        email="ada@example.com",
        items=[
            orders_pb2.OrderItem(
                product_id="prod_1",
                product_name="Chef knife",
                quantity=2,
                unit_price=money_pb2.Money(amount_minor=8900, currency="USD"),
                line_total=money_pb2.Money(amount_minor=17800, currency="USD"),
            )
        ],
        total=money_pb2.Money(amount_minor=17800, currency="USD"),
    ).SerializeToString()

    event = order_event(delivered(ORDER_CONFIRMED, "evt_1", payload))

    assert (event.kind, event.event_id, event.order_id, event.user_id) == (
        EventKind.ORDER_CONFIRMED,
        "evt_1",
        "ord_1",
        "usr_1",
    )
    assert (event.email, event.currency, event.total_minor) == ("ada@example.com", "USD", 17800)
    assert event.lines == (Line("Chef knife", 2, 8900, 17800, "USD", "USD"),)


def test_an_order_cancelled_payload_carries_the_reason_message_and_the_refund() -> None:
    cancelled = events_pb2.OrderCancelled(order_id="ord_1", user_id="usr_1", email="a@b.example", refunded=True)
    cancelled.reason.code = orders_pb2.CANCEL_REASON_CODE_CARD_DECLINED
    cancelled.reason.message = "Your card was declined."
    event = order_event(delivered(ORDER_CANCELLED, "evt_2", cancelled.SerializeToString()))
    assert (event.kind, event.reason, event.refunded) == (EventKind.ORDER_CANCELLED, "Your card was declined.", True)


def test_a_customers_own_cancellation_carries_that_it_was_theirs_and_none_of_the_reason_they_typed() -> None:
    cancelled = events_pb2.OrderCancelled(order_id="ord_1", user_id="usr_1", email="a@b.example", refunded=True)
    cancelled.reason.code = orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED
    cancelled.reason.message = "Confirm your card at https://phishing.example"
    event = order_event(delivered(ORDER_CANCELLED, "evt_2", cancelled.SerializeToString()))
    assert (event.cancelled_by_customer, event.reason) == (True, "")


@pytest.mark.parametrize(
    "code",
    [orders_pb2.CANCEL_REASON_CODE_UNSPECIFIED, 10, 99],
    ids=["unspecified", "a newer release's 10", "a newer release's 99"],
)
def test_a_cancel_code_this_release_does_not_know_as_the_shops_is_answered_with_a_fixed_text_not_its_message(
    code: int,
) -> None:
    """A newer release's code may carry free text (as CUSTOMER_REQUESTED carries the customer's): quoted, it
    let someone have the shop mail their words."""
    cancelled = events_pb2.OrderCancelled(order_id="ord_1", user_id="usr_1", email="a@b.example")
    cancelled.reason.code = code  # type: ignore[assignment]
    cancelled.reason.message = "Confirm your card at https://phishing.example"
    event = order_event(delivered(ORDER_CANCELLED, "evt_2", cancelled.SerializeToString()))
    assert (event.cancelled_by_customer, event.reason) == (False, "We could not complete this order.")


def test_every_shop_written_cancel_code_of_this_release_is_quoted() -> None:
    customers = orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED
    shop_written = [c for c in orders_pb2.CancelReasonCode.values() if c > customers]
    assert orders_pb2.CANCEL_REASON_CODE_PAYMENT_REQUEST_REJECTED in shop_written
    for code in shop_written:
        cancelled = events_pb2.OrderCancelled(order_id="ord_1", user_id="usr_1", email="a@b.example")
        cancelled.reason.code = code
        cancelled.reason.message = "Payment could not be taken."
        event = order_event(delivered(ORDER_CANCELLED, "evt_2", cancelled.SerializeToString()))
        assert event.reason == "Payment could not be taken.", orders_pb2.CancelReasonCode.Name(code)


@pytest.mark.parametrize(
    ("subject", "payload", "invalid", "problem"),
    [
        # Decoded by the chassis (decode_event): the reason every consumer parks such a payload with.
        (
            ORDER_CONFIRMED,
            b"\xff\xfenot a protobuf",
            consumer.InvalidEvent,
            "orders.v1.order_confirmed evt_1: the payload does not decode as shopmesh.orders.v1.OrderConfirmed",
        ),
        ("orders.v1.order_shipped", b"", InvalidEvent, "not an event notifications consumes"),
    ],
)
def test_a_payload_that_is_not_the_subjects_event_is_invalid(
    subject: str, payload: bytes, invalid: type[Exception], problem: str
) -> None:
    with pytest.raises(invalid, match=problem):
        order_event(delivered(subject, "evt_1", payload))


def notification(kind: EventKind) -> Notification:
    return Notification(
        id="ntf_1",
        user_id="usr_1",
        order_id="ord_1",
        channel=Channel.EMAIL,
        recipient="ada@example.com",
        subject="s",
        body="b",
        message_id="<evt_1@shopmesh.notifications>",
        kind=kind,
        event_id="evt_1",
        created_at=NOW,
    )


def test_a_pending_notification_has_no_sent_at_and_a_sent_one_has() -> None:
    pending = notification(EventKind.ORDER_CANCELLED)
    message = notification_to_proto(pending)
    assert message.state == notifications_pb2.NOTIFICATION_STATE_PENDING
    assert message.kind == notifications_pb2.NOTIFICATION_KIND_ORDER_CANCELLED
    assert not message.HasField("sent_at")
    assert notification_to_proto(pending.sent(NOW)).sent_at.ToDatetime(tzinfo=UTC) == NOW


def test_a_superseded_confirmation_is_listed_as_superseded_with_no_failure_and_no_sent_at() -> None:
    message = notification_to_proto(notification(EventKind.ORDER_CONFIRMED).superseded())
    assert message.state == notifications_pb2.NOTIFICATION_STATE_SUPERSEDED
    assert (message.failure_reason, message.HasField("sent_at")) == ("", False)
