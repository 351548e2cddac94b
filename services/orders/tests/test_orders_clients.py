"""The adapters to other services, against a stand-in server: what orders relays of their answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import ClientOptions, ResilientChannel, idempotency_metadata
from shopmesh_chassis.idempotency import key_reused
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process, told_not_to_retry
from shopmesh_orders.clients import CatalogClient, InventoryClient, PaymentsClient
from shopmesh_orders.domain.model import CancelCode
from shopmesh_orders.domain.ports import (
    DependencyDown,
    InsufficientStock,
    LostRace,
    PaymentRecord,
    PaymentRefused,
    RefundRefused,
    ReservationExpired,
)
from shopmesh_orders.domain.validation import Card, CartLine
from shopmesh_orders.settings import OrdersSettings

CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]
PAYMENTS = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
INVENTORY = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]
# The wait the adapters ask for on a state a newer release stored (wired: the recovery loop's interval); not
# the 1 s they said before.
UNKNOWN_STATE_WAIT = 7.0


class MissingProducts(catalog_pb2_grpc.CatalogServiceServicer):
    """Answers BatchGetProducts as catalog does when ids are missing: the first ones listed, all counted."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = metadata

    async def BatchGetProducts(self, request: catalog_pb2.BatchGetProductsRequest, context: Any) -> Any:
        raise errors.NotFound("not found", reason="PRODUCT_NOT_FOUND", metadata=self._metadata)


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        (
            {"product_ids": "prod_a,prod_b", "missing_count": "40"},
            {"product_ids": "prod_a,prod_b", "missing_count": "40"},
        ),
        # A catalog from before missing_count listed every missing id.
        ({"product_ids": "prod_a,prod_b"}, {"product_ids": "prod_a,prod_b", "missing_count": "2"}),
    ],
)
async def test_unknown_products_relay_the_ids_catalog_listed_and_how_many_are_missing(
    settings: OrdersSettings, sent: dict[str, str], relayed: dict[str, str]
) -> None:
    binding = ServiceBinding(CATALOG, MissingProducts(sent), catalog_pb2_grpc.add_CatalogServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [CATALOG], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(errors.NotFound) as caught:
            await CatalogClient(channel.channel, timeout=5).price(["prod_a", "prod_b", "prod_c"])
    assert (caught.value.reason, caught.value.metadata) == ("PRODUCT_NOT_FOUND", relayed)


class RateLimitedCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    async def BatchGetProducts(self, request: catalog_pb2.BatchGetProductsRequest, context: Any) -> Any:
        raise errors.ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=20)


async def test_a_dependencys_retry_info_is_the_wait_orders_passes_on(settings: OrdersSettings) -> None:
    """Catalog rate-limiting asks for 20 s: the saga's recovery loop, and PlaceOrder's caller, wait that long,
    not the 1 s that was said whatever catalog asked."""
    binding = ServiceBinding(CATALOG, RateLimitedCatalog(), catalog_pb2_grpc.add_CatalogServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [CATALOG], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(DependencyDown) as caught:
            await CatalogClient(channel.channel, timeout=5).price(["prod_a"])
    assert (caught.value.reason, caught.value.retry_after_seconds) == ("DEPENDENCY_UNAVAILABLE", 20)


class ProcessorUnavailable(payments_pb2_grpc.PaymentsServiceServicer):
    """Answers Charge as payments does while its processor is away: UNAVAILABLE with RetryInfo (here 60 s)."""

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> Any:
        raise errors.Unavailable("the processor is unavailable", reason="PROCESSOR_UNAVAILABLE", retry_after_seconds=60)


async def test_a_dependencys_do_not_retry_for_a_short_step_deadline_is_not_final(settings: OrdersSettings) -> None:
    """Payments' 60 s wait does not fit a step's 5 s deadline, so its chassis sends gRFC A6's "do not retry" for
    that call: not final for the order, whose saga tries the step again with a fresh deadline (made final, a
    transient processor answer cancelled the order PAYMENT_UNAVAILABLE after one call). Far past the deadline,
    so that a loaded machine cannot stall the call into DEADLINE_EXCEEDED (CHARGE_IN_DOUBT) first."""
    binding = ServiceBinding(PAYMENTS, ProcessorUnavailable(), payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    card = Card("4242424242424242", 12, 2030, "123")
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as on_the_wire:
            await payments_pb2_grpc.PaymentsServiceStub(channel.channel).Charge(
                payments_pb2.ChargeRequest(order_id="ord_1"), timeout=5, metadata=idempotency_metadata("k")
            )
        with pytest.raises(DependencyDown) as caught:
            await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).charge(
                "ord_1", 100, "USD", card, "ord_1:charge"
            )
    assert told_not_to_retry(on_the_wire.value)
    assert (caught.value.reason, caught.value.retry_after_seconds, caught.value.final) == (
        "PAYMENT_UNAVAILABLE",
        60,
        False,
    )


class RefusingPayments(payments_pb2_grpc.PaymentsServiceServicer):
    """Answers Charge INVALID_ARGUMENT with `reason` and a violation of each (field, violation reason) given, as
    payments does for a charge request it will not take."""

    def __init__(self, reason: str, violations: list[tuple[str, str]]) -> None:
        self._reason = reason
        self._violations = [errors.FieldViolation(field, "refused", why) for field, why in violations]

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> Any:
        raise errors.InvalidArgument("the charge request is invalid", self._violations, reason=self._reason)

    async def ListPayments(self, request: payments_pb2.ListPaymentsRequest, context: Any) -> Any:
        # No capture held: a reused charge key is then no charge of the order's.
        return payments_pb2.ListPaymentsResponse()


async def _refused_charge(settings: OrdersSettings, servicer: RefusingPayments) -> PaymentRefused:
    add = payments_pb2_grpc.add_PaymentsServiceServicer_to_server
    card = Card("4242424242424242", 1, 2020, "123")
    async with (
        serve_in_process(settings, [ServiceBinding(PAYMENTS, servicer, add)]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(PaymentRefused) as caught:
            await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).charge(
                "ord_1", 100, "USD", card, "ord_1:charge"
            )
    return caught.value


@pytest.mark.parametrize(
    ("reason", "violations", "code"),
    [
        # A PlaceOrder retried after the card's expiry month ended drives a charge that was never sent.
        ("CARD_EXPIRED", [("card.exp_month", "CARD_EXPIRED")], CancelCode.CARD_EXPIRED),
        # Any other disagreement on the card is the customer's card refused.
        ("INVALID_CARD_NUMBER", [("card.number", "INVALID_CARD_NUMBER")], CancelCode.CARD_DECLINED),
        (
            "VALIDATION_FAILED",
            [("card.exp_year", "CARD_EXPIRED"), ("card.cvv", "INVALID_FORMAT")],
            CancelCode.CARD_DECLINED,
        ),
    ],
)
async def test_a_card_payments_will_not_charge_cancels_for_the_reason_payments_gave(
    settings: OrdersSettings, reason: str, violations: list[tuple[str, str]], code: CancelCode
) -> None:
    assert (await _refused_charge(settings, RefusingPayments(reason, violations))).code is code


@pytest.mark.parametrize(
    ("reason", "violations"),
    [
        # A price of 0 that reached the charge: the amount is ours, not the customer's.
        ("VALIDATION_FAILED", [("amount.amount_minor", "OUT_OF_RANGE")]),
        ("VALIDATION_FAILED", [("amount.currency", "INVALID_FORMAT")]),
        ("VALIDATION_FAILED", [("order_id", "INVALID_FORMAT")]),
        # The card left out of the request is no card of the customer's refused.
        ("VALIDATION_FAILED", [("card", "REQUIRED")]),
        # With a field of ours among them, the request is ours at fault whatever else is named.
        ("VALIDATION_FAILED", [("card.cvv", "INVALID_FORMAT"), ("amount.amount_minor", "OUT_OF_RANGE")]),
        ("IDEMPOTENCY_KEY_REUSED", [("idempotency-key", "ALREADY_USED")]),
        # An INVALID_ARGUMENT that names no field says nothing about the card.
        ("VALIDATION_FAILED", []),
    ],
)
async def test_a_charge_request_payments_refuses_for_our_fields_is_not_told_as_a_declined_card(
    settings: OrdersSettings, caplog: pytest.LogCaptureFixture, reason: str, violations: list[tuple[str, str]]
) -> None:
    """Every INVALID_ARGUMENT but CARD_EXPIRED was cancelled CARD_DECLINED: a price of 0 from catalog told the
    customer "Your card was declined.", and on-call heard nothing. Now the order is cancelled as our fault,
    logged at ERROR with payments' reason and the fields it named."""
    with caplog.at_level(logging.ERROR, logger="shopmesh.orders.clients"):
        refused = await _refused_charge(settings, RefusingPayments(reason, violations))
    assert (refused.code.value, refused.payment_id) == ("PAYMENT_REQUEST_REJECTED", "")
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (record.order_id, record.payments_reason) == ("ord_1", reason)  # type: ignore[attr-defined]
    assert all(field in record.getMessage() for field, _ in violations)


class ChargedBefore(payments_pb2_grpc.PaymentsServiceServicer):
    """Payments once the stored outcome of the order's charge is gone (kept 24 hours at least): Charge under the
    same key finds the order held by the earlier payment, which ListPayments shows in `state`."""

    def __init__(self, state: payments_pb2.PaymentState.ValueType) -> None:
        self._state = state

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> Any:
        raise errors.FailedPrecondition(
            "already charged",
            reason="ORDER_ALREADY_CHARGED",
            metadata={"payment_id": "pay_1", "order_id": request.order_id},
        )

    async def ListPayments(self, request: payments_pb2.ListPaymentsRequest, context: Any) -> Any:
        amount = money_pb2.Money(amount_minor=100, currency="USD")
        earlier = payments_pb2.Payment(id="pay_1", order_id=request.order_id, amount=amount, state=self._state)
        return payments_pb2.ListPaymentsResponse(payments=[earlier])


async def _charge_against(settings: OrdersSettings, servicer: payments_pb2_grpc.PaymentsServiceServicer) -> str:
    binding = ServiceBinding(PAYMENTS, servicer, payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    card = Card("4242424242424242", 12, 2030, "123")
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        return await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).charge(
            "ord_1", 100, "USD", card, "ord_1:charge"
        )


async def test_a_charge_payments_no_longer_replays_is_the_capture_it_made_before(settings: OrdersSettings) -> None:
    # A PlaceOrder retry, with the card, of an order left at the charge step past payments' key retention.
    assert await _charge_against(settings, ChargedBefore(payments_pb2.PAYMENT_STATE_CAPTURED)) == "pay_1"


async def test_an_order_whose_earlier_capture_was_refunded_cannot_be_paid_and_is_cancelled(
    settings: OrdersSettings,
) -> None:
    # Payments captures an order at most once: a refunded capture leaves the order unpayable, not charged.
    with pytest.raises(PaymentRefused) as caught:
        await _charge_against(settings, ChargedBefore(payments_pb2.PAYMENT_STATE_REFUNDED))
    assert (caught.value.code, caught.value.payment_id) == (CancelCode.PAYMENT_UNAVAILABLE, "pay_1")


@pytest.mark.parametrize(
    ("state", "record"),
    [
        (payments_pb2.PAYMENT_STATE_CAPTURED, PaymentRecord("pay_1", True, None, False, 100, "USD")),
        # An earlier refund of the order's capture (its answer lost, or its saver gone): compensation counts
        # it as the order's refund.
        (payments_pb2.PAYMENT_STATE_REFUNDED, PaymentRecord("pay_1", False, None, True, 100, "USD")),
    ],
)
async def test_the_payments_of_an_order_say_which_are_captured_and_which_refunded(
    settings: OrdersSettings, state: payments_pb2.PaymentState.ValueType, record: PaymentRecord
) -> None:
    binding = ServiceBinding(PAYMENTS, ChargedBefore(state), payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        assert await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).payments_for(
            "ord_1"
        ) == [record]


@asynccontextmanager
async def _inventory_client(
    settings: OrdersSettings, servicer: inventory_pb2_grpc.InventoryServiceServicer
) -> AsyncIterator[InventoryClient]:
    """Orders' InventoryClient, over a real socket to `servicer` standing in for inventory."""
    binding = ServiceBinding(INVENTORY, servicer, inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [INVENTORY], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        yield InventoryClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT)


class ShortInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers Reserve FAILED_PRECONDITION INSUFFICIENT_STOCK with `metadata`, as inventory does."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = metadata

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> Any:
        raise errors.FailedPrecondition("short", reason="INSUFFICIENT_STOCK", metadata=self._metadata)


@pytest.mark.parametrize(
    ("sent", "ids", "count"),
    [
        ({"product_ids": "prod_a,prod_b", "short_count": "40"}, ("prod_a", "prod_b"), 40),
        # An inventory from before short_count listed every short id.
        ({"product_ids": "prod_a,prod_b"}, ("prod_a", "prod_b"), 2),
    ],
)
async def test_insufficient_stock_keeps_the_ids_inventory_listed_and_how_many_are_short(
    settings: OrdersSettings, sent: dict[str, str], ids: tuple[str, ...], count: int
) -> None:
    async with _inventory_client(settings, ShortInventory(sent)) as client:
        with pytest.raises(InsufficientStock) as caught:
            await client.reserve("ord_1", [CartLine("prod_a", 1)], 60)
    assert (caught.value.product_ids, caught.value.short_count) == (ids, count)


class ReplayingInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers Reserve with the order's existing reservation in `state`, as inventory replays a repeated one."""

    def __init__(self, state: inventory_pb2.ReservationState.ValueType) -> None:
        self._state = state

    async def Reserve(self, request: inventory_pb2.ReserveRequest, context: Any) -> Any:
        reservation = inventory_pb2.Reservation(id="res_1", order_id=request.order_id, state=self._state)
        return inventory_pb2.ReserveResponse(reservation=reservation)


async def _reserve_against(settings: OrdersSettings, state: inventory_pb2.ReservationState.ValueType) -> str:
    async with _inventory_client(settings, ReplayingInventory(state)) as client:
        return await client.reserve("ord_1", [CartLine("prod_a", 1)], 60)


@pytest.mark.parametrize("state", [inventory_pb2.RESERVATION_STATE_EXPIRED, inventory_pb2.RESERVATION_STATE_RELEASED])
async def test_a_replayed_reservation_that_lapsed_is_refused_as_expired(
    settings: OrdersSettings, state: inventory_pb2.ReservationState.ValueType
) -> None:
    with pytest.raises(ReservationExpired):
        await _reserve_against(settings, state)


@pytest.mark.parametrize(
    "state",
    [
        inventory_pb2.RESERVATION_STATE_PENDING,
        # Committed for this very order: the stock is its own, and committing again changes nothing.
        inventory_pb2.RESERVATION_STATE_COMMITTED,
    ],
)
async def test_a_reservation_that_holds_the_stock_is_named(
    settings: OrdersSettings, state: inventory_pb2.ReservationState.ValueType
) -> None:
    assert await _reserve_against(settings, state) == "res_1"


@pytest.mark.parametrize("state", [payments_pb2.PAYMENT_STATE_UNSPECIFIED, 7], ids=["unspecified", "unknown"])
async def test_a_payment_in_a_state_this_release_cannot_name_leaves_the_order_waiting(
    settings: OrdersSettings, state: int
) -> None:
    # A newer payments (a rollout, a rollback of orders) may answer a state orders cannot name. Taken as "not
    # captured", the saga would cancel the order without refunding money that payment may hold: orders waits.
    with pytest.raises(errors.Unavailable) as caught:
        await _charge_against(settings, ChargedBefore(state))  # type: ignore[arg-type]
    assert caught.value.reason == "PAYMENT_UNAVAILABLE"
    # About this order alone: payments answered (the recovery loop's rechecks go on with the other orders).
    assert not isinstance(caught.value, DependencyDown)
    _asks_to_wait_for_a_release_that_knows(caught.value)


def _asks_to_wait_for_a_release_that_knows(error: errors.Unavailable) -> None:
    """Nothing changes until a release of orders that knows the state drives the order: the wait is the recovery
    loop's next pass, not 1 s, and final, so no channel retries it at once to meet the same answer."""
    assert (error.retry_after_seconds, error.final) == (UNKNOWN_STATE_WAIT, True)


async def test_a_replayed_reservation_in_a_state_this_release_cannot_name_is_not_taken_as_held_stock(
    settings: OrdersSettings,
) -> None:
    # Inventory answers a repeated Reserve with a reservation a newer release stored as
    # RESERVATION_STATE_UNSPECIFIED (docs/operations.md), and then refuses to commit or release it
    # (RESERVATION_STATE_UNKNOWN). Named as held stock, the saga charges the card before the pivot for a
    # reservation the commit refuses: the order waits at COMMIT with the money captured. As for an unknown
    # payment state, the order must wait before the charge (UNAVAILABLE), not go on to charge.
    with pytest.raises(errors.Unavailable) as caught:
        await _reserve_against(settings, inventory_pb2.RESERVATION_STATE_UNSPECIFIED)
    _asks_to_wait_for_a_release_that_knows(caught.value)


class UnknownStateInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Commit and Release refused as inventory's contract now says for a state a newer release stored."""

    async def CommitReservation(self, request: Any, context: Any) -> Any:
        raise errors.FailedPrecondition(
            "unknown state", reason="RESERVATION_STATE_UNKNOWN", metadata={"reservation_id": request.reservation_id}
        )

    async def ReleaseReservation(self, request: Any, context: Any) -> Any:
        raise errors.FailedPrecondition(
            "unknown state", reason="RESERVATION_STATE_UNKNOWN", metadata={"reservation_id": request.reservation_id}
        )


@pytest.mark.parametrize("call", ["commit", "release"])
async def test_a_reservation_state_inventory_documents_as_unknown_leaves_the_order_waiting_not_internal(
    settings: OrdersSettings, call: str
) -> None:
    # RESERVATION_STATE_UNKNOWN is in inventory's contract (2597362): "left as it is" for a newer release.
    # Orders treats any undocumented status as a bug (RuntimeError, answered INTERNAL to PlaceOrder /
    # CancelOrder); this one is documented and means "wait".
    async with _inventory_client(settings, UnknownStateInventory()) as client:
        with pytest.raises(errors.Unavailable) as caught:
            await getattr(client, call)("res_1")
    # Nor a lost race: asked again, inventory would answer the same.
    assert not isinstance(caught.value, DependencyDown | LostRace)
    _asks_to_wait_for_a_release_that_knows(caught.value)


class RacingInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Every reservation call answered ABORTED, as inventory does when its write lost a concurrency race."""

    async def _lost(self) -> Any:
        raise errors.Aborted("concurrent update of the same records; retry", reason="CONCURRENT_UPDATE")

    async def Reserve(self, request: Any, context: Any) -> Any:
        return await self._lost()

    async def CommitReservation(self, request: Any, context: Any) -> Any:
        return await self._lost()

    async def ReleaseReservation(self, request: Any, context: Any) -> Any:
        return await self._lost()


@pytest.mark.parametrize("call", ["reserve", "commit", "release"])
async def test_a_race_inventory_lost_is_told_apart_as_worth_asking_again_about_this_order(
    settings: OrdersSettings, call: str
) -> None:
    # The saga asks again after a LostRace where it would otherwise leave the order in doubt; the race says
    # nothing of inventory as a whole (not DependencyDown).
    async with _inventory_client(settings, RacingInventory()) as client:
        args: tuple[Any, ...] = ("ord_1", [CartLine("prod_a", 1)], 60.0) if call == "reserve" else ("res_1",)
        with pytest.raises(LostRace) as caught:
            await getattr(client, call)(*args)
    assert caught.value.reason == errors.DEPENDENCY_UNAVAILABLE
    assert not isinstance(caught.value, DependencyDown)


class ForgetfulInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers CommitReservation and ReleaseReservation as inventory does for a reservation it has no row for."""

    async def _not_found(self, request: Any) -> Any:
        raise errors.NotFound(
            "not found", reason="RESERVATION_NOT_FOUND", metadata={"reservation_id": request.reservation_id}
        )

    async def CommitReservation(self, request: Any, context: Any) -> Any:
        return await self._not_found(request)

    async def ReleaseReservation(self, request: Any, context: Any) -> Any:
        return await self._not_found(request)


async def test_releasing_a_reservation_inventory_no_longer_has_is_done(settings: OrdersSettings) -> None:
    # Its row was removed (a restore, a clean-up): it holds no stock. Raised as a bug (INTERNAL), compensation
    # could never finish, and the order would stay cancelled-in-progress for good.
    async with _inventory_client(settings, ForgetfulInventory()) as client:
        await client.release("res_gone")


async def test_committing_a_reservation_inventory_no_longer_has_is_refused_as_expired(
    settings: OrdersSettings,
) -> None:
    # Its row was removed (a restore, a clean-up): it holds no stock to commit, as a lapsed one. Raised as a bug
    # (INTERNAL), the saga could never finish the order, and its capture would never be refunded.
    async with _inventory_client(settings, ForgetfulInventory()) as client:
        with pytest.raises(ReservationExpired):
            await client.commit("res_gone")


class UnrefundableUnknownPayment(payments_pb2_grpc.PaymentsServiceServicer):
    """Refund of a payment in a state a newer payments stored, refused as payments now does (e6da471)."""

    async def Refund(self, request: payments_pb2.RefundRequest, context: Any) -> Any:
        raise errors.FailedPrecondition(
            "unknown state",
            reason="PAYMENT_NOT_REFUNDABLE",
            metadata={"payment_id": request.payment_id, "state": "UNSPECIFIED"},
        )


async def test_a_refund_payments_refuses_for_a_state_it_cannot_name_leaves_the_order_waiting_not_internal(
    settings: OrdersSettings,
) -> None:
    # Payments leaves a payment in a state a newer release stored as it is and refuses to refund it; the order's
    # compensation (a customer cancellation, a commit that failed after the pivot) must wait for a release
    # that knows, as ListPayments' unknown state does (0b3d80f), not fail INTERNAL as an unexpected status.
    binding = ServiceBinding(
        PAYMENTS, UnrefundableUnknownPayment(), payments_pb2_grpc.add_PaymentsServiceServicer_to_server
    )
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(errors.Unavailable) as caught:
            await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).refund(
                "pay_1", "cancelled", "ord_1:refund"
            )
    assert not isinstance(caught.value, DependencyDown)
    _asks_to_wait_for_a_release_that_knows(caught.value)


class RefusingRefunds(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, refusal: errors.InvalidArgument) -> None:
        self._refusal = refusal

    async def Refund(self, request: Any, context: Any) -> Any:
        raise self._refusal


def _invalid(field: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "invalid", [errors.FieldViolation(field, "bad", "INVALID_CHARACTERS")], reason="VALIDATION_FAILED"
    )


@pytest.mark.parametrize(
    ("refusal", "request_refused"),
    [(key_reused(), True), (_invalid("reason"), True), (_invalid("payment_id"), False)],
)
async def test_a_refund_refused_for_its_key_or_its_reason_is_told_apart_from_any_other_refusal(
    settings: OrdersSettings, refusal: errors.InvalidArgument, request_refused: bool
) -> None:
    # The refusals an earlier orders release's refund under the same key leads to (its reason differed, or broke
    # payments' newer rule): the saga asks payments whether that refund went through. Any other stays a bug.
    binding = ServiceBinding(
        PAYMENTS, RefusingRefunds(refusal), payments_pb2_grpc.add_PaymentsServiceServicer_to_server
    )
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        with pytest.raises(RuntimeError) as caught:
            await PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT).refund(
                "pay_1", "cancelled", "ord_1:refund"
            )
    assert isinstance(caught.value, RefundRefused) is request_refused


class PaymentsDown(payments_pb2_grpc.PaymentsServiceServicer):
    async def ListPayments(self, request: Any, context: Any) -> Any:
        raise errors.Unavailable("down for maintenance", retry_after_seconds=1.0)

    async def Refund(self, request: Any, context: Any) -> Any:
        raise errors.Unavailable("down for maintenance", retry_after_seconds=1.0)


@pytest.mark.parametrize("call", ["payments_for", "refund"])
async def test_payments_answering_unavailable_is_told_apart_as_payments_down(
    settings: OrdersSettings, call: str
) -> None:
    # A transport UNAVAILABLE (or a deadline, or the breaker open) would fail every order's call alike: the
    # recheck pass stops there. A state payments cannot name is about one order (the tests above).
    binding = ServiceBinding(PAYMENTS, PaymentsDown(), payments_pb2_grpc.add_PaymentsServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        ResilientChannel(server.address, [PAYMENTS], ClientOptions(breaker=None, caller="orders")) as channel,
    ):
        client = PaymentsClient(channel.channel, timeout=5, unknown_state_wait=UNKNOWN_STATE_WAIT)
        ask = {
            "refund": lambda: client.refund("pay_1", "cancelled", "ord_1:refund"),
            "payments_for": lambda: client.payments_for("ord_1"),
        }[call]
        with pytest.raises(DependencyDown) as caught:
            await ask()
    assert (caught.value.reason, caught.value.metadata) == ("PAYMENT_UNAVAILABLE", {"dependency": "payments"})
