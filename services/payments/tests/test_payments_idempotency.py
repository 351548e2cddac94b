"""Idempotency keys over gRPC (Stripe's semantics, from the chassis) and the promise behind them: a card is
never charged twice for one order, whatever is retried, sequentially or concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import delete, insert, select

from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import call_context
from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.idempotency import IN_USE_RETRY_AFTER_SECONDS
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.tables import idempotency_records
from shopmesh_chassis.testing import eventually
from shopmesh_payments.migrations import VERSIONS
from shopmesh_payments.settings import PaymentsSettings
from shopmesh_payments.store.tables import metadata
from shopmesh_payments.wiring import PaymentsRuntime

from .conftest import BACKENDS, DECLINES, UNAVAILABLE, Payments, charge_request, payments_settings


async def failure(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


@pytest.fixture
async def plain_stub(payments: Payments) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceAsyncStub]:
    """A channel without the chassis' retries, so a test sees each attempt's own answer."""
    async with grpc.aio.insecure_channel(payments.address) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


def as_orders(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-caller", "orders"), ("idempotency-key", key))


# --- replay, reuse, missing key --------------------------------------------------------------------------


async def test_the_same_key_and_request_replay_the_payment_without_charging_again(payments: Payments) -> None:
    first = await payments.charge(charge_request("ord_1"), key="ord_1:charge")
    again = await payments.charge(charge_request("ord_1"), key="ord_1:charge")
    assert again == first
    assert payments.processor.charges == 1
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]
    assert len(await payments.outbox()) == 1


@BACKENDS
async def test_a_decline_is_stored_and_replayed_for_the_same_key_without_a_second_attempt(payments: Payments) -> None:
    first = await failure(payments.charge(charge_request("ord_1", number=DECLINES), key="ord_1:charge"))
    again = await failure(payments.charge(charge_request("ord_1", number=DECLINES), key="ord_1:charge"))
    assert (again.code, again.reason, again.message) == (first.code, first.reason, first.message)
    assert first.error_info is not None
    assert again.error_info is not None
    assert again.error_info.metadata == first.error_info.metadata
    assert payments.processor.charges == 1
    assert await payments.ledger("ord_1") == [("DECLINED", "CARD_DECLINED")]


async def test_the_same_key_with_a_different_request_is_idempotency_key_reused(payments: Payments) -> None:
    await payments.charge(charge_request("ord_1", amount_minor=1000), key="ord_1:charge")
    details = await failure(payments.charge(charge_request("ord_1", amount_minor=2000), key="ord_1:charge"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    assert [(v.field, v.reason) for v in details.field_violations] == [("idempotency-key", "ALREADY_USED")]


async def test_another_card_under_the_same_key_is_a_different_request(payments: Payments) -> None:
    await payments.charge(charge_request("ord_1", cvv="123"), key="ord_1:charge")
    details = await failure(payments.charge(charge_request("ord_1", cvv="124"), key="ord_1:charge"))
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_charge_without_an_idempotency_key_is_idempotency_key_missing(payments: Payments) -> None:
    details = await failure(payments.stub().Charge(charge_request("ord_1")))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_MISSING")
    assert payments.processor.charges == 0


async def test_a_key_longer_than_255_characters_is_rejected(payments: Payments) -> None:
    details = await failure(payments.stub().Charge(charge_request("ord_1"), metadata=(("idempotency-key", "k" * 256),)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")


async def test_two_different_idempotency_keys_are_invalid_argument_and_charge_nothing(payments: Payments) -> None:
    keys = (("x-caller", "orders"), ("idempotency-key", "ord_1:charge"), ("idempotency-key", "ord_1:charge-2"))
    details = await failure(payments.stub().Charge(charge_request("ord_1"), metadata=keys))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")
    assert [(v.field, v.reason) for v in details.field_violations] == [("idempotency-key", "DUPLICATE")]
    assert payments.processor.charges == 0
    assert await payments.ledger("ord_1") == []


async def test_a_key_with_a_comma_is_invalid_as_the_two_keys_a_proxy_joined_into_it_would_be(
    payments: Payments,
) -> None:
    joined = (("x-caller", "orders"), ("idempotency-key", "ord_1:charge, ord_1:charge-2"))
    details = await failure(payments.stub().Charge(charge_request("ord_1"), metadata=joined))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")
    assert [(v.field, v.reason) for v in details.field_violations] == [("idempotency-key", "INVALID_FORMAT")]
    assert payments.processor.charges == 0


# --- transient failures are not stored ---------------------------------------------------------------------


async def test_an_unavailable_processor_is_not_stored_so_a_retry_with_the_same_key_charges(
    payments: Payments, plain_stub: payments_pb2_grpc.PaymentsServiceAsyncStub
) -> None:
    payments.processor.fail_first = 1
    details = await failure(plain_stub.Charge(charge_request("ord_1"), metadata=as_orders("ord_1:charge")))
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "PROCESSOR_UNAVAILABLE",
        1.0,
    )
    retried = await plain_stub.Charge(charge_request("ord_1"), metadata=as_orders("ord_1:charge"))
    assert retried.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
    assert payments.processor.charges == 2
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]


async def test_the_unavailable_test_card_is_tried_again_on_every_retry(
    payments: Payments, plain_stub: payments_pb2_grpc.PaymentsServiceAsyncStub
) -> None:
    for attempt in (1, 2):
        request = charge_request("ord_1", number=UNAVAILABLE)
        details = await failure(plain_stub.Charge(request, metadata=as_orders("ord_1:charge")))
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROCESSOR_UNAVAILABLE")
        assert payments.processor.charges == attempt
    assert await payments.ledger("ord_1") == []


async def test_the_client_channel_retries_an_unavailable_charge_with_the_same_key_and_charges_once(
    payments: Payments,
) -> None:
    payments.processor.fail_first = 2
    response = await payments.charge(charge_request("ord_1"), key="ord_1:charge")
    assert response.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
    assert payments.processor.charges == 3
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]


async def test_a_duplicate_while_the_first_still_runs_is_aborted_idempotency_key_in_use_with_a_retry_delay(
    payments: Payments, plain_stub: payments_pb2_grpc.PaymentsServiceAsyncStub
) -> None:
    """The contract says the duplicate is safe to retry after a short delay: the answer says how short, in a
    RetryInfo, trailers-only as every error of the contract."""
    running, release = asyncio.Event(), asyncio.Event()

    async def first_attempt(session: object) -> payments_pb2.ChargeResponse:
        running.set()
        await release.wait()
        return payments_pb2.ChargeResponse()

    # The first request, as another replica would be running it for the same caller ("orders").
    token = call_context.enter(None, [("x-caller", "orders")])
    try:
        first = asyncio.create_task(
            payments.runtime.idempotency.run(
                method="Charge",
                key="ord_1:charge",
                request=charge_request("ord_1"),
                response_type=payments_pb2.ChargeResponse,
                operation=first_attempt,
            )
        )
    finally:
        call_context.leave(token)
    await running.wait()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plain_stub.Charge(charge_request("ord_1"), metadata=as_orders("ord_1:charge"))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE")
    assert details.retry_delay_seconds == IN_USE_RETRY_AFTER_SECONDS
    assert not caught.value.initial_metadata(), "not trailers-only"
    release.set()
    await first
    assert payments.processor.charges == 0


# --- scopes: per caller and per method ---------------------------------------------------------------------


async def test_the_same_key_from_two_callers_names_two_independent_requests(payments: Payments) -> None:
    from_orders = await payments.charge(charge_request("ord_1"), key="shared-key", caller="orders")
    from_ops = await payments.charge(charge_request("ord_2"), key="shared-key", caller="ops")
    assert from_orders.payment.order_id == "ord_1"
    assert from_ops.payment.order_id == "ord_2"
    assert from_orders.payment.id != from_ops.payment.id
    assert payments.processor.charges == 2


async def test_the_same_key_for_charge_and_refund_names_two_independent_requests(payments: Payments) -> None:
    captured = (await payments.charge(charge_request("ord_1"), key="k")).payment
    refunded = (await payments.refund(captured.id, key="k")).payment
    assert refunded.state == payments_pb2.PAYMENT_STATE_REFUNDED


# --- never two charges for one order ------------------------------------------------------------------------


@BACKENDS
async def test_a_second_charge_of_a_charged_order_under_another_key_is_order_already_charged(
    payments: Payments,
) -> None:
    first = (await payments.charge(charge_request("ord_1"), key="attempt-1")).payment
    details = await failure(payments.charge(charge_request("ord_1", amount_minor=999), key="attempt-2"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_ALREADY_CHARGED")
    assert details.error_info is not None
    assert details.error_info.metadata == {"payment_id": first.id, "order_id": "ord_1"}
    replayed = await failure(payments.charge(charge_request("ord_1", amount_minor=999), key="attempt-2"))
    assert replayed.reason == "ORDER_ALREADY_CHARGED"
    assert payments.processor.charges == 1
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]


async def test_a_refunded_order_is_not_charged_again(payments: Payments) -> None:
    first = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    await payments.refund(first.id, key="ord_1:refund")
    details = await failure(payments.charge(charge_request("ord_1"), key="ord_1:charge-again"))
    assert details.reason == "ORDER_ALREADY_CHARGED"
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]


@BACKENDS
async def test_concurrent_charges_of_one_order_under_different_keys_capture_exactly_once(payments: Payments) -> None:
    keys = [f"attempt-{n}" for n in range(8)]
    outcomes = await asyncio.gather(
        *(payments.charge(charge_request("ord_1"), key=key) for key in keys), return_exceptions=True
    )
    captured = [o for o in outcomes if isinstance(o, payments_pb2.ChargeResponse)]
    refused = [details_of(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(captured) == 1
    assert len(refused) == len(keys) - 1
    assert {(d.code, d.reason) for d in refused} == {(grpc.StatusCode.FAILED_PRECONDITION, "ORDER_ALREADY_CHARGED")}
    assert {d.error_info.metadata["payment_id"] for d in refused if d.error_info} == {captured[0].payment.id}
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]
    assert await payments.outbox() == [("payments.v1.payment_captured", False)]


@BACKENDS
async def test_concurrent_retries_under_one_key_capture_exactly_once(payments: Payments) -> None:
    outcomes = await asyncio.gather(
        *(payments.charge(charge_request("ord_1"), key="ord_1:charge") for _ in range(6)), return_exceptions=True
    )
    captured = {o.payment.id for o in outcomes if isinstance(o, payments_pb2.ChargeResponse)}
    others = {(details_of(o).code, details_of(o).reason) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
    assert len(captured) == 1
    assert others <= {(grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE")}
    assert await payments.ledger("ord_1") == [("CAPTURED", "")]


@BACKENDS
async def test_concurrent_refunds_of_one_payment_under_different_keys_refund_it_once(payments: Payments) -> None:
    """Orders' compensation and a recheck on another replica may refund one payment at once, each under its
    own key: every call answers with the refunded payment, and the capture is given back once."""
    captured = (await payments.charge(charge_request("ord_1"), key="ord_1:charge")).payment
    outcomes = await asyncio.gather(
        *(payments.refund(captured.id, key=f"refund-{n}") for n in range(6)), return_exceptions=True
    )
    answers = {
        (o.payment.id, o.payment.state) if isinstance(o, payments_pb2.RefundResponse) else repr(o) for o in outcomes
    }
    assert answers == {(captured.id, payments_pb2.PAYMENT_STATE_REFUNDED)}
    assert await payments.outbox() == [
        ("payments.v1.payment_captured", False),
        ("payments.v1.payment_refunded", False),
    ]


@BACKENDS
async def test_a_declined_order_can_be_paid_with_another_card(payments: Payments) -> None:
    await failure(payments.charge(charge_request("ord_1", number=DECLINES), key="attempt-1"))
    paid = await payments.charge(charge_request("ord_1"), key="attempt-2")
    assert paid.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
    assert await payments.ledger("ord_1") == [("DECLINED", "CARD_DECLINED"), ("CAPTURED", "")]


# --- retention ---------------------------------------------------------------------------------------------


def test_keys_are_kept_at_least_24_hours() -> None:
    assert load_settings(PaymentsSettings).idempotency_retention_hours == 48
    with pytest.raises(ConfigError, match="IDEMPOTENCY_RETENTION_HOURS"):
        load_settings(PaymentsSettings, idempotency_retention_hours=23)


async def test_the_runtime_purges_expired_keys_in_the_background_until_stopped(tmp_path: Path) -> None:
    """The purge the wiring builds is the one its start() sets going: a key past its retention disappears
    without anyone calling purge_expired, while a key within it stays."""
    settings = payments_settings(tmp_path, idempotency_purge_interval_seconds=0.05)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)
    now = datetime.now(UTC)
    expired = now - timedelta(hours=settings.idempotency_retention_hours + 1)
    async with database.transaction() as session:
        for key, created_at in (("expired", expired), ("fresh", now)):
            await session.execute(
                insert(idempotency_records).values(
                    scope="orders||/shopmesh.payments.v1.PaymentsService/Charge",
                    key=key,
                    request_hash="0" * 64,
                    state="completed",
                    status_code=0,
                    locked_until=created_at,
                    created_at=created_at,
                )
            )

    async def only_the_fresh_key_left() -> bool:
        async with database.transaction() as session:
            return set((await session.execute(select(idempotency_records.c.key))).scalars()) == {"fresh"}

    runtime = PaymentsRuntime(settings, database)
    runtime.start()
    try:
        await eventually(only_the_fresh_key_left, "the expired key purged and the fresh one kept")
    finally:
        await runtime.stop()
        await database.dispose()
    assert not runtime.purge.running


async def test_a_retry_after_the_card_expired_replays_the_capture_its_first_call_made(payments: Payments) -> None:
    # The card is valid through December 2030; the first call captures a second before it expires.
    servicer: Any = payments.runtime.binding.servicer
    now = [datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)]
    servicer._app._clock = lambda: now[0]
    request = charge_request("ord_1", exp_month=12, exp_year=2030)
    first = await payments.charge(request, key="ord_1:charge")
    assert first.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
    # Its answer was lost; orders retries the step with the same key and request just after midnight.
    now[0] = datetime(2031, 1, 1, 0, 0, 5, tzinfo=UTC)
    again = await payments.charge(request, key="ord_1:charge")
    assert again == first
    assert payments.processor.charges == 1


@BACKENDS
async def test_a_retry_after_the_card_expired_and_the_key_was_purged_is_order_already_charged(
    payments: Payments,
) -> None:
    """payments.proto: ORDER_ALREADY_CHARGED is met "under the same key once its stored outcome is gone": the
    expiry was checked before the order's claim, so that retry was told CARD_EXPIRED (nothing charged, by the
    contract) while the first call had captured the amount."""
    servicer: Any = payments.runtime.binding.servicer
    now = [datetime(2030, 12, 31, 23, 0, tzinfo=UTC)]
    servicer._app._clock = lambda: now[0]
    request = charge_request("ord_1", exp_month=12, exp_year=2030)
    first = (await payments.charge(request, key="ord_1:charge")).payment
    async with payments.database.transaction() as session:
        await session.execute(delete(idempotency_records))  # the key's retention has passed
    now[0] = datetime(2031, 1, 3, tzinfo=UTC)
    details = await failure(payments.charge(request, key="ord_1:charge"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_ALREADY_CHARGED")
    assert details.error_info is not None
    assert details.error_info.metadata["payment_id"] == first.id
    assert payments.processor.charges == 1


async def test_an_expired_card_stores_nothing_under_its_key(payments: Payments) -> None:
    """CARD_EXPIRED is no outcome of the key: the order is not claimed, and the same key may carry the charge
    once the card is current (the customer's clock was wrong, or the renewed card has the same number)."""
    servicer: Any = payments.runtime.binding.servicer
    now = [datetime(2031, 1, 1, tzinfo=UTC)]
    servicer._app._clock = lambda: now[0]
    request = charge_request("ord_1", exp_month=12, exp_year=2030)
    details = await failure(payments.charge(request, key="ord_1:charge"))
    assert details.reason == "CARD_EXPIRED"
    now[0] = datetime(2030, 12, 31, tzinfo=UTC)
    charged = await payments.charge(request, key="ord_1:charge")
    assert charged.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
    assert payments.processor.charges == 1


@BACKENDS
async def test_a_long_x_user_id_does_not_make_a_charge_internal(
    payments: Payments, plain_stub: payments_pb2_grpc.PaymentsServiceAsyncStub
) -> None:
    """Keys are scoped by caller and user (`x-caller|x-user-id|method`), neither bounded: on PostgreSQL the
    scope no longer fits its VARCHAR(300) column, and the claim's INSERT failed as INTERNAL, where SQLite
    (no length limit) captured the payment. A client's header must not be a server error."""
    metadata = (*as_orders("k-long-user"), ("x-user-id", "usr_" + "u" * 296))
    code, details = grpc.StatusCode.OK, ""
    try:
        await plain_stub.Charge(charge_request("ord_long_user"), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
    assert code != grpc.StatusCode.INTERNAL, details
