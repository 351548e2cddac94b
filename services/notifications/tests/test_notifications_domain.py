"""The notifications domain without I/O: money, e-mail rendering, event checks, the delivery state machine,
request validation."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from wcwidth import wcswidth

from shopmesh_chassis import errors
from shopmesh_notifications.domain.emails import Email, message_id_for, render
from shopmesh_notifications.domain.events import EventKind, InvalidEvent, Line, OrderEvent, validate_event
from shopmesh_notifications.domain.model import Channel, Notification, Refusal, RetryPolicy, State
from shopmesh_notifications.domain.money import format_money
from shopmesh_notifications.domain.validation import validate_list_request

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=3.0, give_up_after_seconds=3600)


def confirmed(**changes: object) -> OrderEvent:
    event = OrderEvent(
        kind=EventKind.ORDER_CONFIRMED,
        event_id="evt_1",
        order_id="ord_1",
        user_id="usr_1",
        email="ada@example.com",
        currency="USD",
        lines=(Line("Chef knife", 2, 8900, 17800, "USD", "USD"), Line("French press", 1, 3450, 3450, "USD", "USD")),
        total_minor=21250,
    )
    return replace(event, **changes)  # type: ignore[arg-type]


def pending() -> Notification:
    return Notification(
        id="ntf_1",
        user_id="usr_1",
        order_id="ord_1",
        channel=Channel.EMAIL,
        recipient="ada@example.com",
        subject="Your shopmesh order ord_1 is confirmed",
        body="Hello",
        message_id="<evt_1@shopmesh.notifications>",
        kind=EventKind.ORDER_CONFIRMED,
        event_id="evt_1",
        created_at=NOW,
        next_attempt_at=NOW,
    )


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1234, "USD", "USD 12.34"),
        (5, "EUR", "EUR 0.05"),
        (123456789, "USD", "USD 1,234,567.89"),
        (500, "JPY", "JPY 500"),
        (1234567, "KWD", "KWD 1,234.567"),
        (-250, "USD", "-USD 2.50"),
    ],
)
def test_money_is_formatted_with_the_currencys_minor_unit(amount: int, currency: str, text: str) -> None:
    assert format_money(amount, currency) == text


def test_the_message_id_is_derived_from_the_event_id_alone() -> None:
    assert message_id_for("evt_1") == "<evt_1@shopmesh.notifications>"
    assert message_id_for("evt_1") == message_id_for("evt_1")
    assert message_id_for("evt 1<x>") == "<evt_1_x_@shopmesh.notifications>"


def test_a_confirmation_names_the_order_its_items_and_its_total() -> None:
    email = render(confirmed())
    assert email.subject == "Your shopmesh order ord_1 is confirmed"
    assert "2 x \u2068Chef knife\u2069" in email.body
    assert "USD 89.00 each" in email.body
    assert "USD 178.00" in email.body
    assert "1 x \u2068French press\u2069" in email.body
    assert "Total charged: USD 212.50" in email.body


def item_line(email: Email, quantity: int) -> str:
    return next(line for line in email.body.splitlines() if line.startswith(f"  {quantity} x "))


def test_a_right_to_left_override_in_a_product_name_cannot_reach_the_prices_beside_it() -> None:
    # KWD 1.234 x 7: the audit's line, which a bidi-aware client showed as "836.8 DWK hcae 432.1 DWK live".
    line = Line("\u062a\u0645\u0631 Dates \u202eevil", 7, 1234, 8638, "KWD", "KWD")
    email = render(confirmed(currency="KWD", lines=(line,), total_minor=8638))
    written = "7 x \u2068\u062a\u0645\u0631 Dates evil\u2069"
    assert item_line(email, 7).split("  ") == ["", written, "KWD 1.234 each", "KWD 8.638"]


@pytest.mark.parametrize(
    ("name", "written"),
    [
        # A right-to-left name in an isolate of its own, as catalog keeps it: paired, it stays.
        ("\u2067\u05e9\u05dc\u05d5\u05dd\u2069 mug", "\u2067\u05e9\u05dc\u05d5\u05dd\u2069 mug"),
        ("\u202bRTL\u202c embedded", "\u202bRTL\u202c embedded"),
        # A lone PDI would close the e-mail's isolate early and let the override after it out.
        ("Mug\u2069\u202e", "Mug"),
        ("Mug\u202c\u2069", "Mug"),
        # Closed by the wrong kind: neither pairs.
        ("\u2066Mug\u202c", "Mug"),
        ("\u202dMug\u2069", "Mug"),
        # A PDI closes the embeddings opened inside its isolate as well (the bidi algorithm pops them with it).
        ("\u2067\u202b\u05e9\u05dc\u05d5\u05dd\u2069 mug", "\u2067\u202b\u05e9\u05dc\u05d5\u05dd\u2069 mug"),
        # A PDF closes nothing while an isolate is the innermost level open; the embedding outside stays open.
        ("\u202bR\u2067Mug\u202c\u2069", "R\u2067Mug\u2069"),
    ],
)
def test_only_paired_bidi_controls_of_a_product_name_are_written_inside_its_isolate(name: str, written: str) -> None:
    email = render(confirmed(lines=(Line(name, 1, 500, 500, "USD", "USD"),), total_minor=500))
    assert f"1 x \u2068{written}\u2069  " in item_line(email, 1)


def amounts_column(line: str) -> int:
    """The display column (in a fixed-width font) at which the line's first amount starts; a control
    character prints nothing."""
    before = line[: line.index("  USD") + 2]
    return wcswidth("".join(char for char in before if unicodedata.category(char) != "Cc"))


@pytest.mark.parametrize(
    "name",
    [
        "\u5bff\u53f8\u30bb\u30c3\u30c8",  # 寿司セット: five characters, ten columns
        "Cafe\u0301 au lait",  # decomposed: the accent a mark on the e, of no column of its own
        "\uff2d\uff55\uff47",  # full-width "Mug"
        "\U0001f469\u200d\U0001f373 apron",  # one emoji of three characters, two columns
        "Bell\x07",  # a control character: no column, as it prints nothing
    ],
)
def test_the_amounts_start_at_one_display_column_whatever_the_width_of_the_names_characters(name: str) -> None:
    # One price, one width of its column: the amounts, aligned right in it, start where the column does.
    lines = (Line(name, 1, 8900, 8900, "USD", "USD"), Line("Chef knife", 2, 8900, 17800, "USD", "USD"))
    email = render(confirmed(lines=lines, total_minor=26700))
    assert amounts_column(item_line(email, 1)) == amounts_column(item_line(email, 2))


def test_a_cancellation_gives_the_reason_and_says_whether_money_was_refunded() -> None:
    declined = render(confirmed(kind=EventKind.ORDER_CANCELLED, reason="Your card was declined."))
    assert declined.subject == "Your shopmesh order ord_1 was cancelled"
    assert "Reason: Your card was declined." in declined.body
    assert "Nothing was charged to your card." in declined.body

    refunded = render(confirmed(kind=EventKind.ORDER_CANCELLED, reason="too slow", refunded=True))
    assert "Your payment of USD 212.50 was refunded to your card." in refunded.body


def test_a_customers_own_cancellation_says_so_in_a_fixed_text() -> None:
    email = render(confirmed(kind=EventKind.ORDER_CANCELLED, cancelled_by_customer=True, refunded=True))
    assert "Your order ord_1 was cancelled.\nYou cancelled this order.\n" in email.body
    assert "Reason:" not in email.body


def test_a_sendable_event_passes_its_checks() -> None:
    assert validate_event(confirmed()) == confirmed()
    # A free item, and a cancellation of an order that cost nothing, are amounts an order can have.
    free = confirmed(lines=(Line("Sample", 1, 0, 0, "USD", "USD"),), total_minor=0)
    assert validate_event(free) == free


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"email": ""}, "email is empty"),
        ({"email": "not-an-address"}, "email is not an e-mail address"),
        ({"email": "root,ada@example.com"}, "email is not an e-mail address"),
        ({"order_id": ""}, "order_id is empty"),
        ({"user_id": "u" * 65}, "user_id is longer than 64 characters"),
        ({"order_id": "ord_1\nBcc: everyone@example.com"}, "order_id has spaces or control characters"),
        ({"event_id": ""}, "event id is empty"),
        ({"currency": ""}, "total.currency is not three upper-case letters"),
        ({"total_minor": -500}, "total is negative"),
        ({"lines": (Line("Widget", -3, 500, 500, "USD", "USD"),)}, r"items\[0\]\.quantity is less than 1"),
        ({"lines": (Line("Widget", 0, 500, 0, "USD", "USD"),)}, r"items\[0\]\.quantity is less than 1"),
        ({"lines": (Line("Widget", 1, -500, 500, "USD", "USD"),)}, r"items\[0\]\.unit_price is negative"),
        ({"lines": (Line("Widget", 1, 500, -500, "USD", "USD"),)}, r"items\[0\]\.line_total is negative"),
        (
            {"lines": (Line("Mug", 1, 500, 500, "USD", "USD"), Line("Widget", 1, 500, 500, "EUR", "USD"))},
            r"items\[1\]\.unit_price\.currency is not total\.currency",
        ),
        ({"lines": (Line("Widget", 1, 500, 500, "USD", ""),)}, r"items\[0\]\.line_total\.currency is not total"),
        (
            {"lines": (Line("Chef knife", 2, 8900, 8900, "USD", "USD"),), "total_minor": 8900},
            r"items\[0\]\.line_total is not quantity x unit_price",
        ),
        ({"total_minor": 21000}, "total is not the sum of the line totals"),
        ({"lines": (), "total_minor": 500}, "total is not the sum of the line totals"),
    ],
)
def test_an_event_that_cannot_become_an_email_is_invalid(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidEvent, match=problem):
        validate_event(confirmed(**changes))


def test_a_sent_notification_records_when_and_counts_the_attempt() -> None:
    sent = pending().sent(NOW)
    assert (sent.state, sent.sent_at, sent.attempts, sent.next_attempt_at) == (State.SENT, NOW, 1, None)
    assert sent.failure_reason == ""


def test_a_failed_attempt_is_retried_after_a_growing_delay_capped_by_the_policy() -> None:
    first = pending().delivery_failed("connection refused", NOW, POLICY)
    assert (first.state, first.attempts, first.next_attempt_at) == (State.PENDING, 1, NOW + timedelta(seconds=1))
    assert (first.last_error, first.failure_reason) == ("connection refused", "")
    second = first.delivery_failed("connection refused", NOW, POLICY)
    assert second.next_attempt_at == NOW + timedelta(seconds=2)
    assert RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=3.0, give_up_after_seconds=3600).delay_after(
        5
    ) == timedelta(seconds=3)


def test_attempts_are_retried_until_one_fails_past_the_policys_window_after_the_notification_was_recorded() -> None:
    notification = pending()
    window = timedelta(seconds=POLICY.give_up_after_seconds)
    for _ in range(50):  # far more attempts than the waits double over: a count does not give up
        notification = notification.delivery_failed("connection refused", NOW + window - timedelta(seconds=1), POLICY)
    assert (notification.state, notification.attempts) == (State.PENDING, 50)
    notification = notification.delivery_failed("connection refused", NOW + window, POLICY)
    assert (notification.state, notification.attempts) == (State.FAILED, 51)
    # The customer reads failure_reason: what failed on our side (a relay's address, a reply about our
    # credentials) is for operators, in last_error.
    assert notification.failure_reason == "not delivered: the mail service could not send it"
    assert notification.last_error == "connection refused"
    assert notification.next_attempt_at is None


def test_a_permanent_refusal_fails_the_notification_at_once_telling_the_customer_a_fixed_reason() -> None:
    failed = pending().delivery_failed(
        "SMTP 550: no such user on mx-7.internal", NOW, POLICY, refusal=Refusal.RECIPIENT
    )
    assert (failed.state, failed.attempts) == (State.FAILED, 1)
    # The server's reply is for operators; the customer reads what kind of refusal it was.
    assert failed.failure_reason == "not delivered: the recipient's mail server refused the address"
    assert failed.last_error == "SMTP 550: no such user on mx-7.internal"


@pytest.mark.parametrize(
    ("reply", "stored"),
    [
        ("550 Empf\udce4nger unbekannt", "550 Empf\\xe4nger unbekannt"),
        ("550 lone \ud800 surrogate", "550 lone \\ud800 surrogate"),
        ("550 no\x00 such\r\nuser", "550 no  such  user"),
        ("550 " + "x" * 600, "550 " + "x" * 496),
        ("\udcff" * 200, "\\xff" * 125),
    ],
)
def test_a_failure_reason_is_kept_as_text_every_database_stores(reply: str, stored: str) -> None:
    failed = pending().delivery_failed(reply, NOW, POLICY, refusal=Refusal.RECIPIENT)
    assert failed.last_error == stored
    failed.last_error.encode()


def test_a_superseded_confirmation_is_final_without_an_attempt_or_a_failure() -> None:
    retrying = pending().delivery_failed("connection refused", NOW, POLICY)
    superseded = retrying.superseded()
    assert (superseded.state, superseded.attempts, superseded.next_attempt_at) == (State.SUPERSEDED, 1, None)
    assert (superseded.failure_reason, superseded.sent_at) == ("", None)


def test_only_a_confirmation_is_superseded() -> None:
    cancellation = replace(pending(), kind=EventKind.ORDER_CANCELLED)
    with pytest.raises(errors.FailedPrecondition) as caught:
        cancellation.superseded()
    assert caught.value.reason == "NOTIFICATION_NOT_SUPERSEDABLE"


@pytest.mark.parametrize(
    "final",
    [
        pending().sent(NOW),
        pending().delivery_failed("x", NOW, POLICY, refusal=Refusal.RECIPIENT),
        pending().superseded(),
    ],
)
def test_a_final_notification_takes_no_further_delivery_outcome(final: Notification) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        final.sent(NOW)
    assert caught.value.reason == "NOTIFICATION_NOT_PENDING"
    with pytest.raises(errors.FailedPrecondition):
        final.delivery_failed("again", NOW, POLICY)
    with pytest.raises(errors.FailedPrecondition):
        final.superseded()


def test_list_request_validation_reports_every_bad_field() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_list_request("", -1, "")
    assert caught.value.reason == "VALIDATION_FAILED"
    assert [(v.field, v.reason) for v in caught.value.violations] == [
        ("user_id", "REQUIRED"),
        ("page_size", "OUT_OF_RANGE"),
    ]
    with pytest.raises(errors.InvalidArgument) as too_long:
        validate_list_request("u" * 65, 0, "")
    assert [(v.field, v.reason) for v in too_long.value.violations] == [("user_id", "TOO_LONG")]
    assert validate_list_request("usr_1", 0, "") is None


def test_an_email_ending_in_a_line_break_is_not_a_sendable_address() -> None:
    # As a To header, "ada@example.com\n" ends the header section: Subject, Date and Message-ID (by which
    # the sink and mail clients recognise a resent copy) become the body's first lines.
    with pytest.raises(InvalidEvent, match="email is not an e-mail address"):
        validate_event(confirmed(email="ada@example.com\n"))
