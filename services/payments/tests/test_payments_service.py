"""PaymentsService over a real gRPC socket against a real SQLite database: every RPC, its happy paths and
each documented error (code, ErrorInfo reason, field violations)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.common.v1 import money_pb2
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_payments.domain.validation import RefundCommand

from .conftest import BACKENDS, DECLINES, INSUFFICIENT_FUNDS, SUCCEEDS, UNAVAILABLE, Payments, charge_request


async def failure(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def bytes_at_rest(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in data_dir.glob("payments.db*"))


def stored_values(database: Path) -> list[bytes]:
    """Every value of every row of every table, as bytes (text encoded, numbers written out)."""
    values: list[bytes] = []
    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                values += [v if isinstance(v, bytes) else str(v).encode() for v in row if v is not None]
    return values


def _without_hex(value: bytes) -> bytes:
    return re.sub(rb"[0-9a-fA-F]{5,}", b"", value)


def fields(details: ErrorDetails) -> dict[str, str]:
    return {v.field: v.reason for v in details.field_violations}


# --- Charge ----------------------------------------------------------------------------------------------


async def test_charge_captures_the_amount_and_keeps_only_the_last_four_digits(payments: Payments) -> None:
    response = await payments.charge(charge_request("ord_1", amount_minor=1250), key="ord_1:charge")
    payment = response.payment
    assert payment.id.startswith("pay_")
    assert (payment.order_id, payment.amount.amount_minor, payment.amount.currency) == ("ord_1", 1250, "USD")
    assert (payment.state, payment.card_last4, payment.decline_reason) == (
        payments_pb2.PAYMENT_STATE_CAPTURED,
        "4242",
        "",
    )
    assert payment.HasField("created_at")
    assert not payment.HasField("refunded_at")
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]
    assert await payments.outbox() == [("payments.v1.payment_captured", False)]


async def test_any_other_luhn_valid_card_is_captured_like_the_success_card(payments: Payments) -> None:
    response = await payments.charge(charge_request("ord_1", number="5555555555554444"), key="k")
    assert (response.payment.state, response.payment.card_last4) == (payments_pb2.PAYMENT_STATE_CAPTURED, "4444")


@pytest.mark.parametrize(
    ("number", "reason"), [(DECLINES, "CARD_DECLINED"), (INSUFFICIENT_FUNDS, "INSUFFICIENT_FUNDS")]
)
async def test_a_declined_card_records_a_declined_payment_readable_with_get_payment(
    payments: Payments, number: str, reason: str
) -> None:
    details = await failure(payments.charge(charge_request("ord_1", number=number), key="ord_1:charge"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.payments"
    assert details.error_info.metadata["order_id"] == "ord_1"
    payment_id = details.error_info.metadata["payment_id"]
    stored = (await payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id))).payment
    assert (stored.state, stored.decline_reason, stored.order_id) == (
        payments_pb2.PAYMENT_STATE_DECLINED,
        reason,
        "ord_1",
    )
    assert await payments.ledger("ord_1") == [("DECLINED", reason)]
    assert await payments.outbox() == []


async def test_the_processor_being_unavailable_answers_unavailable_with_retry_info_and_records_nothing(
    payments: Payments,
) -> None:
    details = await failure(payments.charge(charge_request("ord_1", number=UNAVAILABLE), key="ord_1:charge"))
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "PROCESSOR_UNAVAILABLE",
        1.0,
    )
    listed = await payments.stub().ListPayments(payments_pb2.ListPaymentsRequest(order_id="ord_1"))
    assert list(listed.payments) == []
    assert await payments.ledger("ord_1") == []
    assert await payments.outbox() == []


async def test_charge_reports_every_invalid_field_with_a_violation(payments: Payments) -> None:
    request = payments_pb2.ChargeRequest(
        order_id="",
        amount=money_pb2.Money(amount_minor=-5, currency="us"),
        card=payments_pb2.PaymentCard(number="4242 4242 4242 4242", exp_month=0, exp_year=99, cvv="12"),
    )
    details = await failure(payments.charge(request, key="k"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert fields(details) == {
        "order_id": "REQUIRED",
        "amount.amount_minor": "OUT_OF_RANGE",
        "amount.currency": "INVALID_FORMAT",
        "card.number": "INVALID_CARD_NUMBER",
        "card.exp_month": "OUT_OF_RANGE",
        "card.exp_year": "OUT_OF_RANGE",
        "card.cvv": "INVALID_FORMAT",
    }
    assert "4242" not in details.message


# Ids no order or payment has: whitespace, a line break, a bidi override, a control character. Orders refuses
# them ("printable characters only"); payments took them, and stored a payment for order "\n\r".
UNPRINTABLE_IDS = [" ", "\n\r", "\u202e", "ord 1", "\x1b[2J"]


@pytest.mark.parametrize("order_id", UNPRINTABLE_IDS)
async def test_a_charge_for_an_unprintable_order_id_is_invalid_format_and_charges_nothing(
    payments: Payments, order_id: str
) -> None:
    details = await failure(payments.charge(charge_request(order_id), key="k"))
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        {"order_id": "INVALID_FORMAT"},
    )
    assert await payments.ledger(order_id) == []
    assert await payments.outbox() == []


@pytest.mark.parametrize("payment_id", UNPRINTABLE_IDS)
async def test_refund_and_get_payment_of_an_unprintable_payment_id_are_invalid_format(
    payments: Payments, payment_id: str
) -> None:
    refused = await failure(payments.refund(payment_id, key="k"))
    assert (refused.code, fields(refused)) == (grpc.StatusCode.INVALID_ARGUMENT, {"payment_id": "INVALID_FORMAT"})
    read = await failure(payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id)))
    assert (read.code, fields(read)) == (grpc.StatusCode.INVALID_ARGUMENT, {"payment_id": "INVALID_FORMAT"})


@pytest.mark.parametrize("order_id", UNPRINTABLE_IDS)
async def test_list_payments_of_an_unprintable_order_id_is_invalid_format(payments: Payments, order_id: str) -> None:
    details = await failure(payments.stub().ListPayments(payments_pb2.ListPaymentsRequest(order_id=order_id)))
    assert (details.code, fields(details)) == (grpc.StatusCode.INVALID_ARGUMENT, {"order_id": "INVALID_FORMAT"})


async def test_a_malformed_currency_is_refused_with_the_rule_that_is_checked(payments: Payments) -> None:
    """money.proto's rule is the shape, ^[A-Z]{3}$, not ISO 4217's list ("XXX" and "ABC" pass): the violation
    says so, as orders' and catalog's do, rather than claim an ISO 4217 check that is not made."""
    details = await failure(payments.charge(charge_request("ord_1", currency="usd"), key="k"))
    assert [(v.field, v.description, v.reason) for v in details.field_violations] == [
        ("amount.currency", "three upper-case letters, e.g. USD", "INVALID_FORMAT")
    ]
    assert await payments.ledger("ord_1") == []


@pytest.mark.parametrize("amount_minor", [10**15, 2**63 - 1])
async def test_a_charge_above_moneys_bound_is_out_of_range_and_charges_nothing(
    payments: Payments, amount_minor: int
) -> None:
    """Charge took any amount up to int64's limit; no order can total more than Money's bound (orders refuses
    it), so no caller may charge more either. At the bound, the charge and its refund go through."""
    details = await failure(payments.charge(charge_request("ord_1", amount_minor=amount_minor), key="ord_1:charge"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert fields(details) == {"amount.amount_minor": "OUT_OF_RANGE"}
    assert await payments.ledger("ord_1") == []
    at_bound = await payments.charge(charge_request("ord_1", amount_minor=10**15 - 1), key="ord_1:charge")
    assert (at_bound.payment.state, at_bound.payment.amount.amount_minor) == (
        payments_pb2.PAYMENT_STATE_CAPTURED,
        10**15 - 1,
    )
    refunded = (await payments.refund(at_bound.payment.id, key="ord_1:refund")).payment
    assert (refunded.state, refunded.amount) == (payments_pb2.PAYMENT_STATE_REFUNDED, at_bound.payment.amount)


async def test_charge_without_amount_or_card_names_both_as_required(payments: Payments) -> None:
    details = await failure(payments.charge(payments_pb2.ChargeRequest(order_id="ord_1"), key="k"))
    assert fields(details) == {"amount": "REQUIRED", "card": "REQUIRED"}


async def test_a_card_failing_the_luhn_check_is_invalid_card_number(payments: Payments) -> None:
    details = await failure(payments.charge(charge_request(number="4242424242424241"), key="k"))
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CARD_NUMBER",
        {"card.number": "INVALID_CARD_NUMBER"},
    )


async def test_an_expired_card_is_card_expired(payments: Payments) -> None:
    details = await failure(payments.charge(charge_request(exp_month=1, exp_year=2020), key="k"))
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CARD_EXPIRED",
        {"card.exp_year": "CARD_EXPIRED"},
    )


async def test_a_bad_number_on_an_expired_card_names_both_and_is_not_invalid_card_number(payments: Payments) -> None:
    """payments.proto, Charge: reason INVALID_CARD_NUMBER "when that is all that is wrong, else
    VALIDATION_FAILED", and a violation per invalid field (common/v1 conventions). Here two things are wrong."""
    request = charge_request(number="4242424242424241", exp_month=1, exp_year=2020)
    details = await failure(payments.charge(request, key="k"))
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        {"card.number": "INVALID_CARD_NUMBER", "card.exp_year": "CARD_EXPIRED"},
    )


async def test_a_rejected_request_stores_nothing_under_its_key(payments: Payments) -> None:
    await failure(payments.charge(charge_request("ord_1", number="4242424242424241"), key="k"))
    # The same key now carries a corrected request: validation failures are not outcomes of the key.
    response = await payments.charge(charge_request("ord_1"), key="k")
    assert response.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED


async def test_the_database_never_holds_the_card_number_or_the_cvv(payments: Payments, tmp_path: Path) -> None:
    await payments.charge(charge_request("ord_1", number=SUCCEEDS, cvv="9876"), key="k1")
    await failure(payments.charge(charge_request("ord_2", number=DECLINES, cvv="9876"), key="k2"))
    await payments.database.dispose()  # closes the connections: SQLite folds the WAL into the file
    at_rest = bytes_at_rest(tmp_path)
    assert b"payments" in at_rest
    for number in (SUCCEEDS, DECLINES):
        assert number.encode() not in at_rest
    # Four digits turn up in the file's random hex (ids, tokens, HMACs) by chance, one run in a few dozen:
    # the CVV is looked for in each stored value instead, outside runs of hex longer than itself.
    assert not [value for value in stored_values(tmp_path / "payments.db") if b"9876" in _without_hex(value)]


# --- Refund ----------------------------------------------------------------------------------------------


@BACKENDS
async def test_refund_refunds_a_captured_payment_in_full_and_records_the_event(payments: Payments) -> None:
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    refunded = (await payments.refund(captured.id, key="ord_1:refund", reason="order cancelled")).payment
    assert (refunded.id, refunded.state, refunded.refund_reason) == (
        captured.id,
        payments_pb2.PAYMENT_STATE_REFUNDED,
        "order cancelled",
    )
    assert refunded.HasField("refunded_at")
    assert refunded.amount == captured.amount
    stored = (await payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id=captured.id))).payment
    assert stored == refunded
    assert await payments.outbox() == [
        ("payments.v1.payment_captured", False),
        ("payments.v1.payment_refunded", False),
    ]


@BACKENDS
async def test_refunding_a_refunded_payment_returns_it_unchanged_whatever_the_key(payments: Payments) -> None:
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    first = (await payments.refund(captured.id, key="refund-1", reason="first")).payment
    again = (await payments.refund(captured.id, key="refund-2", reason="second")).payment
    assert again == first
    assert again.refund_reason == "first"
    assert [subject for subject, _ in await payments.outbox()].count("payments.v1.payment_refunded") == 1


async def test_refunding_a_declined_payment_is_payment_not_refundable(payments: Payments) -> None:
    declined = await failure(payments.charge(charge_request("ord_1", number=DECLINES), key="ord_1:charge"))
    assert declined.error_info is not None
    details = await failure(payments.refund(declined.error_info.metadata["payment_id"], key="ord_1:refund"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_REFUNDABLE")


async def test_refunding_an_unknown_payment_is_payment_not_found(payments: Payments) -> None:
    details = await failure(payments.refund("pay_missing", key="k"))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")


async def test_refund_validates_the_payment_id_and_the_reason_length(payments: Payments) -> None:
    details = await failure(payments.refund("", key="k", reason="x" * 501))
    assert (details.code, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"payment_id": "REQUIRED", "reason": "TOO_LONG"},
    )


@pytest.mark.parametrize("control", ["\n", "\t", "\x1b[2J", "\x7f", "\x85", "\u2028"])
async def test_a_refund_reason_that_is_not_one_line_of_text_is_refused_and_nothing_is_refunded(
    payments: Payments, control: str
) -> None:
    """The reason is stored with the payment and sent on in PaymentRefunded, to every log and screen that shows
    it: the one-line rule of every free text (line breaks, terminal escapes, DEL, C1 controls, separators)."""
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    details = await failure(payments.refund(captured.id, key="ord_1:refund", reason=f"cancelled{control}approved"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert fields(details) == {"reason": "INVALID_CHARACTERS"}
    stored = await payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id=captured.id))
    assert stored.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED


async def test_a_refund_applied_before_the_one_line_reason_is_replayed_to_its_retry_not_refused(
    payments: Payments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payments release before the one-line rule refunded with a line break in the reason, and the answer was
    lost: the retry, the same request under the same key (an older orders still sends it), is answered the refund
    it made, not INVALID_CHARACTERS on every try with the refund never recorded by orders. The rule still holds
    for a request with no outcome stored, which takes no key: the same key then refunds with a reason it allows."""
    first = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    second = (await payments.charge(charge_request("ord_2"), key="ord_2:charge")).payment
    with monkeypatch.context() as before_the_rule:
        before_the_rule.setattr("shopmesh_payments.application.validate_refund", RefundCommand)
        await payments.refund(first.id, key="ord_1:refund", reason="changed\nmy mind")
    replayed = (await payments.refund(first.id, key="ord_1:refund", reason="changed\nmy mind")).payment
    assert (replayed.state, replayed.refund_reason) == (payments_pb2.PAYMENT_STATE_REFUNDED, "changed\nmy mind")
    refused = await failure(payments.refund(second.id, key="ord_2:refund", reason="changed\nmy mind"))
    assert fields(refused) == {"reason": "INVALID_CHARACTERS"}
    assert (await payments.refund(second.id, key="ord_2:refund", reason="changed")).payment.refund_reason == "changed"


async def test_refund_without_an_idempotency_key_is_idempotency_key_missing(payments: Payments) -> None:
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    details = await failure(payments.stub().Refund(payments_pb2.RefundRequest(payment_id=captured.id)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_MISSING")


async def test_refund_with_a_reused_key_and_another_request_is_idempotency_key_reused(payments: Payments) -> None:
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    await payments.refund(captured.id, key="ord_1:refund", reason="one")
    details = await failure(payments.refund(captured.id, key="ord_1:refund", reason="two"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")


# --- GetPayment -----------------------------------------------------------------------------------------


async def test_get_payment_of_an_unknown_id_is_payment_not_found(payments: Payments) -> None:
    details = await failure(payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id="pay_nope")))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    assert details.error_info is not None
    assert details.error_info.metadata["payment_id"] == "pay_nope"


@pytest.mark.parametrize(("payment_id", "reason"), [("", "REQUIRED"), ("p" * 65, "TOO_LONG")])
async def test_get_payment_validates_the_id(payments: Payments, payment_id: str, reason: str) -> None:
    details = await failure(payments.stub().GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id)))
    assert (details.code, fields(details)) == (grpc.StatusCode.INVALID_ARGUMENT, {"payment_id": reason})


# --- ListPayments ---------------------------------------------------------------------------------------


@BACKENDS
async def test_list_payments_pages_through_an_orders_payments_newest_first(payments: Payments) -> None:
    made = []
    for attempt, number in enumerate([DECLINES, INSUFFICIENT_FUNDS, SUCCEEDS]):
        try:
            made.append((await payments.charge(charge_request("ord_1", number=number), key=f"k{attempt}")).payment.id)
        except grpc.aio.AioRpcError as exc:
            info = details_of(exc).error_info
            assert info is not None
            made.append(info.metadata["payment_id"])
    await payments.charge(charge_request("ord_other"), key="other")
    stub = payments.stub()
    seen: list[str] = []
    states: list[int] = []
    token = ""
    while True:
        request = payments_pb2.ListPaymentsRequest(order_id="ord_1", page_size=2, page_token=token)
        page = await stub.ListPayments(request)
        assert len(page.payments) <= 2
        seen.extend(p.id for p in page.payments)
        states.extend(p.state for p in page.payments)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    assert states == [
        payments_pb2.PAYMENT_STATE_CAPTURED,
        payments_pb2.PAYMENT_STATE_DECLINED,
        payments_pb2.PAYMENT_STATE_DECLINED,
    ]


async def test_list_payments_of_an_order_without_payments_is_empty(payments: Payments) -> None:
    page = await payments.stub().ListPayments(payments_pb2.ListPaymentsRequest(order_id="ord_none"))
    assert (list(page.payments), page.next_page_token) == ([], "")


async def test_list_payments_rejects_a_page_token_of_another_order(payments: Payments) -> None:
    await failure(payments.charge(charge_request("ord_a", number=DECLINES), key="a1"))
    await payments.charge(charge_request("ord_a"), key="a2")
    await payments.charge(charge_request("ord_b"), key="b")
    stub = payments.stub()
    first = await stub.ListPayments(payments_pb2.ListPaymentsRequest(order_id="ord_a", page_size=1))
    assert first.next_page_token
    details = await failure(
        stub.ListPayments(payments_pb2.ListPaymentsRequest(order_id="ord_b", page_token=first.next_page_token))
    )
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        {"page_token": "INVALID_PAGE_TOKEN"},
    )


async def test_list_payments_validates_order_id_page_size_and_page_token(payments: Payments) -> None:
    # INVALID_PAGE_TOKEN whenever the token is among the bad fields: a client that pages must learn to start
    # again from the first page, whatever else it got wrong.
    details = await failure(
        payments.stub().ListPayments(payments_pb2.ListPaymentsRequest(order_id="", page_size=-1, page_token="%%"))
    )
    assert (details.code, details.reason, fields(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        {"order_id": "REQUIRED", "page_size": "OUT_OF_RANGE", "page_token": "INVALID_PAGE_TOKEN"},
    )


async def test_reads_need_no_idempotency_key_and_accept_one(payments: Payments) -> None:
    page = await payments.stub().ListPayments(
        payments_pb2.ListPaymentsRequest(order_id="ord_1"), metadata=idempotency_metadata("ignored")
    )
    assert list(page.payments) == []


# --- a newer release's values ---------------------------------------------------------------------------


async def test_a_payment_state_a_newer_release_stored_is_read_as_unspecified(payments: Payments) -> None:
    """docs/chassis.md ("Migrations are expand-only"): during a rollout, a canary or after a rollback this
    release reads what a newer one wrote, and a stored enum value it does not know is read as UNSPECIFIED
    (`db.stored_enum`), not a failure. Payments read `state` with PaymentState(...): GetPayment and
    ListPayments (orders' reconciliation) answered INTERNAL for such a payment."""
    from sqlalchemy import update

    from shopmesh_payments.store.tables import payments as payments_table

    captured = (await payments.charge(charge_request("ord_new"), key="ord_new:charge")).payment
    async with payments.database.transaction() as session:
        await session.execute(
            update(payments_table).where(payments_table.c.id == captured.id).values(state="PARTIALLY_REFUNDED")
        )
    stub = payments.stub()
    got = (await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=captured.id))).payment
    assert (got.id, got.state) == (captured.id, payments_pb2.PAYMENT_STATE_UNSPECIFIED)
    listed = await stub.ListPayments(payments_pb2.ListPaymentsRequest(order_id="ord_new"))
    assert [(p.id, p.state) for p in listed.payments] == [(captured.id, payments_pb2.PAYMENT_STATE_UNSPECIFIED)]


async def test_a_payment_in_a_state_a_newer_release_stored_is_not_refunded(payments: Payments) -> None:
    """This release cannot tell what money such a payment still holds: Refund refuses it as it refuses a
    DECLINED one (FAILED_PRECONDITION, not INTERNAL), and neither the stored state nor the processor's
    capture is touched, so the newer release that wrote the state still finds it as it left it."""
    from sqlalchemy import select, update

    from shopmesh_payments.store.tables import payments as payments_table

    captured = (await payments.charge(charge_request("ord_new"), key="ord_new:charge")).payment
    async with payments.database.transaction() as session:
        await session.execute(
            update(payments_table).where(payments_table.c.id == captured.id).values(state="PARTIALLY_REFUNDED")
        )
    details = await failure(payments.refund(captured.id, key="ord_new:refund", reason="order cancelled"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_REFUNDABLE")
    async with payments.database.transaction() as session:
        stored = (await session.execute(select(payments_table).where(payments_table.c.id == captured.id))).one()
    assert (stored.state, stored.refunded_at) == ("PARTIALLY_REFUNDED", None)
    assert await payments.outbox() == [("payments.v1.payment_captured", False)]


@BACKENDS
async def test_a_refund_refused_for_a_state_a_newer_release_stored_is_not_replayed_to_the_retry(
    payments: Payments,
) -> None:
    """The contract leaves such a payment as it is: "retry once that release serves", and orders does, under
    the same key and request (`<order_id>:refund`). The refusal is no outcome of the refund: stored under the
    key like a DECLINED payment's, it was replayed to every retry for the key's whole retention, whatever
    the payment had become, and the customer's money stayed captured."""
    from sqlalchemy import update

    from shopmesh_payments.store.tables import payments as payments_table

    captured = (await payments.charge(charge_request("ord_new"), key="ord_new:charge")).payment

    async def set_state(state: str) -> None:
        async with payments.database.transaction() as session:
            await session.execute(update(payments_table).where(payments_table.c.id == captured.id).values(state=state))

    await set_state("DISPUTED")
    details = await failure(payments.refund(captured.id, key="ord_new:refund", reason="order cancelled"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_REFUNDABLE")
    assert details.error_info is not None
    assert details.error_info.metadata["state"] == "UNSPECIFIED"
    # The newer release's state is gone (that release finished with it, or this one is told what it means).
    await set_state("CAPTURED")
    refunded = (await payments.refund(captured.id, key="ord_new:refund", reason="order cancelled")).payment
    assert refunded.state == payments_pb2.PAYMENT_STATE_REFUNDED
    assert [subject for subject, _ in await payments.outbox()] == [
        "payments.v1.payment_captured",
        "payments.v1.payment_refunded",
    ]
