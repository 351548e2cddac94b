"""The checkout saga from PlaceOrder's first call, with the real orders database and fakes of inventory and
payments: a checkout confirms, charged once, its stock committed; a declined card, too little stock or
payments away cancel it before the pivot (the charge) with nothing charged and the stock given back; what
the answer names; and the customer's orders read back a page at a time.

Each test states an end-to-end invariant of the saga: what is charged, what stock is held, which event
is in the outbox."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.db import Database
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import PaymentsClient
from shopmesh_orders.domain.model import CancelCode, OrderState
from shopmesh_orders.domain.ports import PricedProduct
from shopmesh_orders.domain.validation import CartLine
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings

from .conftest import FakeCatalog, FakeInventory, FakePayments
from .saga_kit import DECLINED, GOOD, PROCESSOR_DOWN, command, events, place

PAYMENTS_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]


async def test_successful_checkout_confirms_charges_once_and_commits_stock(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    order_id = await place(app, command())
    order = await app.get_order(order_id)
    assert order.state is OrderState.CONFIRMED
    assert order.total_minor == 2500
    assert payments.captured() == 1
    assert inventory.on_hand["prod_a"] == 3
    assert inventory.reserved("prod_a") == 0
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_confirmed"
    event = events_pb2.OrderConfirmed.FromString(payload)
    assert (event.order_id, event.total.amount_minor, event.email) == (order_id, 2500, "ada@example.com")


async def test_declined_card_cancels_and_gives_the_stock_back(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, database: Database
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(DECLINED))
    assert caught.value.reason == "CARD_DECLINED"
    order = await app.get_order(caught.value.metadata["order_id"])
    assert (order.state, order.cancel_code) == (OrderState.CANCELLED, CancelCode.CARD_DECLINED)
    assert payments.captured() == 0
    assert inventory.reserved("prod_a") == 0
    assert inventory.on_hand["prod_a"] == 5
    [(subject, payload)] = await events(database)
    assert subject == "orders.v1.order_cancelled"
    assert not events_pb2.OrderCancelled.FromString(payload).refunded


async def test_insufficient_stock_cancels_without_charging(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(GOOD, CartLine("prod_b", 2)))
    assert caught.value.reason == "INSUFFICIENT_STOCK"
    assert payments.charge_calls == 0
    assert "release" not in inventory.calls


async def test_payments_unavailable_is_retried_then_compensated(
    app: OrdersApplication, inventory: FakeInventory, payments: FakePayments, settings: OrdersSettings
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(PROCESSOR_DOWN))
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    assert payments.charge_calls == settings.step_attempts
    assert payments.captured() == 0
    assert inventory.reserved("prod_a") == 0


class ProcessorAwayOnce(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments over a real socket whose processor is away for the first Charge (UNAVAILABLE with RetryInfo, as
    payments answers, here 60 s) and back for the next, which captures."""

    def __init__(self) -> None:
        self.charges = 0

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        self.charges += 1
        if self.charges == 1:
            raise errors.Unavailable(
                "the processor is unavailable", reason="PROCESSOR_UNAVAILABLE", retry_after_seconds=60
            )
        payment = payments_pb2.Payment(id="pay_1", order_id=request.order_id, state=payments_pb2.PAYMENT_STATE_CAPTURED)
        return payments_pb2.ChargeResponse(payment=payment)


async def test_a_charge_payments_told_a_short_step_deadline_not_to_retry_is_sent_again_and_confirms(
    database: Database, catalog: FakeCatalog, inventory: FakeInventory, settings: OrdersSettings
) -> None:
    """Payments' 60 s wait does not fit the charge's 5 s deadline, so its chassis answers with gRPC's "do not
    retry" for that call: a transient answer, not a final one, and the saga sends the charge again with a fresh
    deadline, which captures (taken as final, the order was cancelled PAYMENT_UNAVAILABLE after one call). The
    wait is far past the deadline, not just past it, so that a loaded machine cannot stall the first charge
    into DEADLINE_EXCEEDED (CHARGE_IN_DOUBT) before its answer."""
    servicer = ProcessorAwayOnce()
    binding = ServiceBinding(PAYMENTS_SERVICE, servicer, payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS_SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        payments = PaymentsClient(channel.channel, timeout=5, unknown_state_wait=settings.recovery_interval_seconds)
        app = OrdersApplication(database, catalog, SagaDriver(database, inventory, payments, settings))
        order = await app.get_order(await place(app, command()))
    assert (order.state, servicer.charges, inventory.on_hand["prod_a"]) == (OrderState.CONFIRMED, 2, 3)


class RefusingTheAmount(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments over a real socket refusing every Charge's amount as its validation does ("must be greater than 0"):
    a field of the request orders sent, not of the card. It records nothing, so ListPayments lists nothing."""

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeResponse:
        violation = errors.FieldViolation("amount.amount_minor", "must be greater than 0", "OUT_OF_RANGE")
        raise errors.InvalidArgument(
            "invalid request: amount.amount_minor: must be greater than 0", [violation], reason="VALIDATION_FAILED"
        )

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Any
    ) -> payments_pb2.ListPaymentsResponse:
        return payments_pb2.ListPaymentsResponse()


async def test_a_charge_request_payments_refuses_cancels_as_our_fault_not_as_a_declined_card(
    database: Database,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    settings: OrdersSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Payments refusing the amount orders sent was cancelled CARD_DECLINED: the customer was told "Your card
    was declined." (in PlaceOrder's answer, on the order, in the cancellation e-mail, whose text is the event's
    reason) and sent to their bank, while the shop's data was at fault and nothing alarmed whoever is on call.
    Now it is PAYMENT_REQUEST_REJECTED: the stock released, nothing charged, an ERROR naming payments' reason,
    and counted under its own reason."""
    servicer = RefusingTheAmount()
    binding = ServiceBinding(PAYMENTS_SERVICE, servicer, payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    registry = CollectorRegistry()
    metrics = OrderMetrics(registry)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS_SERVICE], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        payments = PaymentsClient(channel.channel, timeout=5, unknown_state_wait=settings.recovery_interval_seconds)
        saga = SagaDriver(database, inventory, payments, settings, on_finished=metrics.finished)
        app = OrdersApplication(database, catalog, saga)
        with caplog.at_level(logging.ERROR), pytest.raises(errors.FailedPrecondition) as caught:
            await place(app, command())
        order = await app.get_order(caught.value.metadata["order_id"])
    message = "We could not take payment for this order; nothing was charged."
    assert (caught.value.reason, caught.value.message) == ("PAYMENT_REQUEST_REJECTED", message)
    assert (order.state, order.cancel_code, order.cancel_message) == (
        OrderState.CANCELLED,
        CancelCode("PAYMENT_REQUEST_REJECTED"),
        message,
    )
    assert (inventory.reserved("prod_a"), inventory.on_hand["prod_a"]) == (0, 5)
    [(subject, payload)] = await events(database)
    event = events_pb2.OrderCancelled.FromString(payload)
    assert subject == "orders.v1.order_cancelled"
    assert (orders_pb2.CancelReasonCode.Name(event.reason.code), event.reason.message, event.refunded) == (
        "CANCEL_REASON_CODE_PAYMENT_REQUEST_REJECTED",
        message,
        False,
    )
    assert [r.getMessage() for r in caplog.records if "VALIDATION_FAILED" in r.getMessage()] != []
    counted = registry.get_sample_value(
        "shopmesh_orders_finished_total", {"state": "CANCELLED", "reason": "PAYMENT_REQUEST_REJECTED"}
    )
    assert counted == 1.0


@pytest.mark.parametrize(("price_minor", "currency"), [(0, "USD"), (-100, "USD"), (1250, "")])
async def test_a_product_priced_at_no_sellable_price_is_refused_before_anything_is_recorded_reserved_or_charged(
    app: OrdersApplication,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    payments: FakePayments,
    caplog: pytest.LogCaptureFixture,
    price_minor: int,
    currency: str,
) -> None:
    """Orders took catalog's prices as they came: a product priced 0 went on to the charge, which payments refused
    after the stock was reserved (and the customer heard their card was declined); one whose currency was no
    code at all was refused CURRENCY_MISMATCH, as if the customer had asked for the wrong currency. Neither is
    the customer's doing: FAILED_PRECONDITION naming the product, and a warning naming it and its price."""
    catalog.products["prod_odd"] = PricedProduct("prod_odd", "Odd", price_minor, currency)
    inventory.on_hand["prod_odd"] = 5
    with caplog.at_level(logging.WARNING, logger="shopmesh.orders"), pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(GOOD, CartLine("prod_a", 1), CartLine("prod_odd", 1)))
    assert (caught.value.reason, caught.value.metadata) == (
        "PRODUCT_PRICE_INVALID",
        {"product_ids": "prod_odd", "invalid_count": "1"},
    )
    assert await app.list_orders("usr_1", 10, "") == ([], "")
    assert (inventory.calls, payments.charge_calls) == ([], 0)
    [warning] = [r for r in caplog.records if r.name == "shopmesh.orders" and r.levelno == logging.WARNING]
    assert f"prod_odd at {price_minor} {currency!r}" in warning.getMessage()


async def test_unknown_product_records_no_order(app: OrdersApplication, database: Database) -> None:
    with pytest.raises(errors.NotFound) as caught:
        await place(app, command(GOOD, CartLine("prod_zzz", 1)))
    assert caught.value.reason == "PRODUCT_NOT_FOUND"
    assert await app.list_orders("usr_1", 10, "") == ([], "")


async def test_list_orders_pages_newest_first(app: OrdersApplication) -> None:
    ids = [await place(app, command(GOOD, CartLine("prod_a", 1)), key=f"k{i}") for i in range(3)]
    first, token = await app.list_orders("usr_1", 2, "")
    second, last = await app.list_orders("usr_1", 2, token)
    assert [o.id for o in first + second] == list(reversed(ids))
    assert last == ""
    with pytest.raises(errors.InvalidArgument) as caught:
        await app.list_orders("usr_2", 2, token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_insufficient_stock_names_the_products_as_the_contract_says(app: OrdersApplication) -> None:
    """Review finding: orders.proto (PlaceOrder) promises FAILED_PRECONDITION INSUFFICIENT_STOCK with
    metadata "product_ids" (and inventory now sends short_count beside it), but _outcome answers only
    {"order_id"}: the client cannot tell which items to remove."""
    with pytest.raises(errors.FailedPrecondition) as caught:
        await place(app, command(GOOD, CartLine("prod_b", 2)))
    assert caught.value.reason == "INSUFFICIENT_STOCK"
    assert caught.value.metadata.get("product_ids") == "prod_b", caught.value.metadata
