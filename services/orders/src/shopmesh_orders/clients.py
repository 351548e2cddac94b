"""gRPC adapters for the saga's ports: proto in and out, and each status translated into the domain's terms."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc
from cachetools import TTLCache

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.common.v1 import money_pb2
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.grpc_errors import (
    IDEMPOTENT_RETRY_CODES,
    ErrorDetails,
    dependency_unavailable,
    details_of,
    unexpected_status,
)
from shopmesh_orders.domain.charges import earlier_charge
from shopmesh_orders.domain.model import CancelCode
from shopmesh_orders.domain.ports import (
    Catalog,
    DependencyDown,
    InsufficientStock,
    LostRace,
    PaymentRecord,
    PaymentRefused,
    PricedProduct,
    RefundRefused,
    ReservationExpired,
)
from shopmesh_orders.domain.validation import Card, CartLine

log = logging.getLogger("shopmesh.orders.clients")


def _unavailable(
    service: str, error: grpc.aio.AioRpcError, reason: str = errors.DEPENDENCY_UNAVAILABLE
) -> errors.Unavailable:
    """A status worth another try (`IDEMPOTENT_RETRY_CODES`: the steps are idempotent) of a call to `service`,
    told apart as a lost race or the service down."""
    answer = dependency_unavailable(service, error, reason=reason)
    # ABORTED, a lost race: the other side answered, about this order only, and asked again it is likely to
    # settle. Any other (down, too slow, circuit open or shedding load): a call for any other order would fare
    # no better.
    kind: type[errors.Unavailable] = LostRace if error.code() == grpc.StatusCode.ABORTED else DependencyDown
    return kind(
        answer.message,
        reason=answer.reason,
        retry_after_seconds=answer.retry_after_seconds,
        metadata=answer.metadata,
        domain=answer.domain,
    )


def _call_failed(
    service: str, error: grpc.aio.AioRpcError, reason: str = errors.DEPENDENCY_UNAVAILABLE
) -> errors.Unavailable | RuntimeError:
    """A status of a call to `service` that the step does not tell apart itself: worth another try
    (`_unavailable`), or one the contract does not promise (`unexpected_status`)."""
    if error.code() in IDEMPOTENT_RETRY_CODES:
        return _unavailable(service, error, reason)
    return unexpected_status(service, error)


_RESERVATION_STATE_UNKNOWN = "RESERVATION_STATE_UNKNOWN"
# Inventory's answers about a reservation it deleted past its retention (RESERVATION_RETENTION_SECONDS): a
# Reserve for the order is refused with this reason; Commit and Release answer RESERVATION_NOT_FOUND, whose
# metadata names the state it ended in.
_RESERVATION_PURGED = "RESERVATION_PURGED"
_COMMITTED = inventory_pb2.ReservationState.Name(inventory_pb2.RESERVATION_STATE_COMMITTED)


def _metadata(details: ErrorDetails) -> dict[str, str]:
    return dict(details.error_info.metadata) if details.error_info is not None else {}


def _state_unknown(service: str, what: str, state: int, order_id: str, reason: str, wait: float) -> errors.Unavailable:
    """A state a newer release of `service` stored, which orders cannot act on: the order waits, logged.
    `wait` and final as for `_refused_for_unknown_state`."""
    log.warning(
        "%s of order %s is in a state this release does not know (%d); the order waits",
        what,
        order_id,
        state,
        extra={"order_id": order_id},
    )
    return errors.Unavailable(
        f"{service} answered a state this release of orders does not know for {what} ({state})",
        reason=reason,
        retry_after_seconds=wait,
        metadata={"order_id": order_id},
        final=True,
    )


def _refused_for_unknown_state(
    service: str, error: grpc.aio.AioRpcError, reason: str, wait: float
) -> errors.Unavailable:
    """`service` refused the call for a state a newer release of it stored (inventory's RESERVATION_STATE_UNKNOWN,
    payments' PAYMENT_NOT_REFUNDABLE for an UNSPECIFIED payment): about this order alone, and the same answer
    until a release of orders that knows the state drives the order.

    Asked again within this release, the answer cannot change, so a retry sooner than the recovery loop's next
    pass (`wait`, its interval: the first moment a driver, perhaps of that newer release, tries the order again)
    only drives the saga again to meet it. Final for the call: a channel's own retry, within 350 ms, would do
    that three more times. The interval, not the loop's longest wait: it is also the wait `_retry_at` starts
    from, which a longer one would stretch for the newer release's drivers too."""
    answer = dependency_unavailable(service, error, reason=reason)
    return errors.Unavailable(
        answer.message, reason=answer.reason, retry_after_seconds=wait, metadata=answer.metadata, final=True
    )


def _products_not_found(error: grpc.aio.AioRpcError) -> errors.NotFound:
    """Catalog's PRODUCT_NOT_FOUND, relayed with its metadata: the missing ids it listed (only the first ones
    when their list is long) and how many are missing, which alone says whether that list is whole."""
    details = details_of(error)
    info = _metadata(details)
    listed = info.get("product_ids", "")
    # A catalog from before missing_count listed every missing id.
    count = info.get("missing_count") or str(len([p for p in listed.split(",") if p]))
    return errors.NotFound(
        f"{count} unknown products: {listed}",
        reason="PRODUCT_NOT_FOUND",
        metadata={"product_ids": listed, "missing_count": count},
    )


class CatalogClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        try:
            response = await self._stub.BatchGetProducts(
                catalog_pb2.BatchGetProductsRequest(product_ids=list(product_ids)), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise _products_not_found(error) from None
            raise _call_failed("catalog", error) from None
        return {p.id: PricedProduct(p.id, p.name, p.price.amount_minor, p.price.currency) for p in response.products}


class CachedCatalog:
    """Prices from catalog, remembered for `ttl_seconds`.

    Why: pricing was one of the four calls on a checkout's critical path (~2 ms of CPU over both
    processes, docs/benchmarks.md), asking the same question again and again for the products people
    buy most. The price of that: a price change reaches new orders up to `ttl_seconds` later. A product
    catalog does not know is never remembered as unknown, so a new product is orderable at once.
    """

    def __init__(
        self, catalog: Catalog, ttl_seconds: float, max_products: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._catalog = catalog
        self._prices: TTLCache[str, PricedProduct] = TTLCache(maxsize=max_products, ttl=ttl_seconds, timer=timer)

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        # fresh: a customer who confirmed a total at catalog's new price must not be refused for the old one
        # remembered here (PlaceOrder's expected_total); what catalog answers replaces what was remembered.
        priced = {} if fresh else {pid: known for pid in product_ids if (known := self._prices.get(pid)) is not None}
        missing = [pid for pid in product_ids if pid not in priced]
        if missing:
            fetched = await self._catalog.price(missing)
            self._prices.update(fetched)
            priced.update(fetched)
        return priced


class InventoryClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, *, unknown_state_wait: float) -> None:
        """`unknown_state_wait`: the wait asked for an order that meets a state a newer inventory stored, the
        recovery loop's interval (`_refused_for_unknown_state`)."""
        self._stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        self._timeout = timeout
        self._unknown_state_wait = unknown_state_wait

    async def reserve(self, order_id: str, items: Sequence[CartLine], ttl_seconds: float) -> str:
        request = inventory_pb2.ReserveRequest(
            order_id=order_id,
            items=[inventory_pb2.ReservationItem(product_id=i.product_id, quantity=i.quantity) for i in items],
        )
        request.ttl.FromMilliseconds(int(ttl_seconds * 1000))
        try:
            response = await self._stub.Reserve(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            if details.reason == "INSUFFICIENT_STOCK":
                info = _metadata(details)
                ids = [p for p in info.get("product_ids", "").split(",") if p]
                # An inventory from before short_count listed every short id.
                count = info.get("short_count", "")
                raise InsufficientStock(ids, int(count) if count.isdigit() else None) from None
            if details.reason == _RESERVATION_PURGED:
                # The order's reservation ended (committed, released or expired) longer ago than inventory keeps
                # reservations, and inventory refuses to reserve for the order again: it holds no stock, as a
                # lapsed one. Only an order this saga could not move on for that long meets it.
                log.warning("reservation of order %s was purged by inventory: %s", order_id, details.message)
                raise ReservationExpired(_metadata(details).get("reservation_id", "")) from None
            raise _call_failed("inventory", error) from None
        reservation = response.reservation
        # Reserve replays the order's reservation whatever its state: a lapsed one holds nothing to commit.
        if reservation.state in (inventory_pb2.RESERVATION_STATE_EXPIRED, inventory_pb2.RESERVATION_STATE_RELEASED):
            raise ReservationExpired(reservation.id)
        if reservation.state not in (
            inventory_pb2.RESERVATION_STATE_PENDING,
            inventory_pb2.RESERVATION_STATE_COMMITTED,
        ):
            # A state a newer inventory stored: whether it holds the stock is unknown, so nothing is charged
            # against it; the order waits for a release that knows.
            raise _state_unknown(
                "inventory",
                f"reservation {reservation.id}",
                reservation.state,
                order_id,
                errors.DEPENDENCY_UNAVAILABLE,
                self._unknown_state_wait,
            )
        return reservation.id

    def _reservation_call_failed(
        self, error: grpc.aio.AioRpcError, reason: str | None
    ) -> errors.Unavailable | RuntimeError:
        """`_call_failed` for a call about a reservation, which may be in a state a newer inventory stored."""
        if reason == _RESERVATION_STATE_UNKNOWN:
            return _refused_for_unknown_state(
                "inventory", error, errors.DEPENDENCY_UNAVAILABLE, self._unknown_state_wait
            )
        return _call_failed("inventory", error)

    async def commit(self, reservation_id: str) -> None:
        try:
            await self._stub.CommitReservation(
                inventory_pb2.CommitReservationRequest(reservation_id=reservation_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            reason = details.reason
            if reason == "RESERVATION_NOT_FOUND":
                if _metadata(details).get("purged_state") == _COMMITTED:
                    # Committed (by this order's earlier driver, whose save was lost) and purged past inventory's
                    # retention since: the commit is done, as a repeated commit of a COMMITTED one answers.
                    log.warning("reservation %s was committed, then purged by inventory", reservation_id)
                    return
                # Inventory no longer has it (its row was removed: a restore, a manual clean-up; or it lapsed and
                # was purged past inventory's retention), so it holds no stock to commit, as a lapsed one. (Raised
                # as a bug, the saga would answer INTERNAL for ever and keep the customer's capture; as lapsed, the
                # capture is refunded and the order cancelled.)
                log.warning("reservation %s is unknown to inventory: it cannot be committed", reservation_id)
                raise ReservationExpired(reservation_id) from None
            if reason in ("RESERVATION_EXPIRED", "RESERVATION_RELEASED"):
                raise ReservationExpired(reservation_id) from None
            raise self._reservation_call_failed(error, reason) from None

    async def release(self, reservation_id: str) -> None:
        try:
            await self._stub.ReleaseReservation(
                inventory_pb2.ReleaseReservationRequest(reservation_id=reservation_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            reason = details.reason
            if reason == "RESERVATION_NOT_FOUND":
                if _metadata(details).get("purged_state") == _COMMITTED:
                    # A confirmed order cancelled longer after its commit than inventory keeps reservations: the
                    # units cannot be restocked (inventory no longer knows them), the refund goes ahead all the
                    # same. An operator restocks them by hand (SetStock) if they come back.
                    log.warning(
                        "reservation %s was committed and purged by inventory: its units are not restocked",
                        reservation_id,
                    )
                    return
                # Inventory no longer has it (its row was removed: a restore, a manual clean-up; or it ended and
                # was purged past inventory's retention), so it holds no stock: nothing is left to release.
                # (Raised, compensation would answer INTERNAL for ever.)
                log.warning("reservation %s is unknown to inventory: nothing to release", reservation_id)
                return
            raise self._reservation_call_failed(error, reason) from None


# The states ListPayments may answer that orders can act on; any other is a newer release's.
_PAYMENT_STATES_KNOWN = frozenset(
    {payments_pb2.PAYMENT_STATE_CAPTURED, payments_pb2.PAYMENT_STATE_REFUNDED, payments_pb2.PAYMENT_STATE_DECLINED}
)
_REFUSALS = {"CARD_DECLINED": CancelCode.CARD_DECLINED, "INSUFFICIENT_FUNDS": CancelCode.INSUFFICIENT_FUNDS}


def _about_the_card(details: ErrorDetails) -> bool:
    """Whether payments' INVALID_ARGUMENT refuses the card alone: its reason says so (INVALID_CARD_NUMBER), or
    every field it names is one of the card's (card.number, card.exp_month, card.exp_year, card.cvv)."""
    if details.reason == "INVALID_CARD_NUMBER":
        return True
    violations = details.field_violations
    return bool(violations) and all(violation.field.startswith("card.") for violation in violations)


def _refused_request(order_id: str, details: ErrorDetails) -> CancelCode:
    """Why a charge payments refused as INVALID_ARGUMENT cancels the order.

    Orders checks the card as payments does, but only when the request comes in: a retry after the card's
    expiry month ended may drive a charge never sent (CARD_EXPIRED), and a card payments refuses on other
    grounds is the customer's card refused (CARD_DECLINED). Anything else is our request at fault (an amount,
    currency or order id payments will not take, the charge's key reused with another request and no capture
    of the order held): the customer
    is not told their card was declined, and whoever is on call hears of it (an ERROR, and the cancellation's
    own count)."""
    if details.reason == "CARD_EXPIRED":
        return CancelCode.CARD_EXPIRED
    if _about_the_card(details):
        return CancelCode.CARD_DECLINED
    fields = ", ".join(f"{v.field} {v.reason or v.description}" for v in details.field_violations) or "none named"
    log.error(
        "payments refused the charge request of order %s (reason %s; fields: %s): not the card, the request orders "
        "sent; the order is cancelled %s",
        order_id,
        details.reason,
        fields,
        CancelCode.PAYMENT_REQUEST_REJECTED.value,
        extra={"order_id": order_id, "payments_reason": details.reason},
    )
    return CancelCode.PAYMENT_REQUEST_REJECTED


class PaymentsClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, *, unknown_state_wait: float) -> None:
        """`unknown_state_wait`: as InventoryClient's, for a payment state a newer payments stored."""
        self._stub = payments_pb2_grpc.PaymentsServiceStub(channel)
        self._timeout = timeout
        self._unknown_state_wait = unknown_state_wait

    async def charge(self, order_id: str, amount_minor: int, currency: str, card: Card, idempotency_key: str) -> str:
        request = payments_pb2.ChargeRequest(
            order_id=order_id,
            amount=money_pb2.Money(amount_minor=amount_minor, currency=currency),
            card=payments_pb2.PaymentCard(
                number=card.number, exp_month=card.exp_month, exp_year=card.exp_year, cvv=card.cvv
            ),
        )
        try:
            response = await self._stub.Charge(
                request, timeout=self._timeout, metadata=idempotency_metadata(idempotency_key)
            )
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            payment_id = _metadata(details).get("payment_id", "")
            refusal = _REFUSALS.get(details.reason or "")
            if refusal is not None:
                raise PaymentRefused(refusal, payment_id) from None
            if details.reason == "ORDER_ALREADY_CHARGED":
                # Payments no longer keeps this key's outcome (a retry past its retention), but the order's
                # charge went through then: that payment is the charge, if still captured and of this amount.
                # Payments captures an order at most once, so one refunded since leaves the order unpayable:
                # refused, and compensation finds nothing to refund.
                found = earlier_charge(await self.payments_for(order_id), amount_minor, currency, holder=payment_id)
                if found.charge_id is not None:
                    return found.charge_id
                if found.another_amount is not None:
                    raise found.another_amount from None
                raise PaymentRefused(CancelCode.PAYMENT_UNAVAILABLE, payment_id) from None
            if error.code() in IDEMPOTENT_RETRY_CODES:
                raise _unavailable("payments", error, reason="PAYMENT_UNAVAILABLE") from None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                if details.reason == "IDEMPOTENCY_KEY_REUSED":
                    # Payments holds an outcome under this order's charge key from another request (the first
                    # answer lost, and the retry's request built otherwise: another release, a price re-read).
                    # That outcome is the order's: its capture is the charge, as for ORDER_ALREADY_CHARGED, and
                    # its decline is the card's (the request at fault would page for a card refused).
                    found = earlier_charge(await self.payments_for(order_id), amount_minor, currency)
                    if found.charge_id is not None:
                        log.warning(
                            "payments refused the charge of order %s as another request under its key; its "
                            "capture %s is the charge",
                            order_id,
                            found.charge_id,
                            extra={"order_id": order_id, "payment_id": found.charge_id},
                        )
                        return found.charge_id
                    if found.refusal is not None:
                        raise found.refusal from None
                raise PaymentRefused(_refused_request(order_id, details), "") from None
            raise unexpected_status("payments", error) from None
        return response.payment.id

    async def payments_for(self, order_id: str) -> list[PaymentRecord]:
        try:
            response = await self._stub.ListPayments(
                payments_pb2.ListPaymentsRequest(order_id=order_id, page_size=100), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _call_failed("payments", error, "PAYMENT_UNAVAILABLE") from None
        records = []
        for payment in response.payments:
            if payment.state not in _PAYMENT_STATES_KNOWN:
                # A newer payments' state (a rollout; orders rolled back). Read as "not captured", the saga would
                # cancel without refunding money that payment may hold: the order waits for a release that knows.
                raise _state_unknown(
                    "payments",
                    f"payment {payment.id}",
                    payment.state,
                    order_id,
                    "PAYMENT_UNAVAILABLE",
                    self._unknown_state_wait,
                )
            declined = (
                _REFUSALS.get(payment.decline_reason) if payment.state == payments_pb2.PAYMENT_STATE_DECLINED else None
            )
            records.append(
                PaymentRecord(
                    payment_id=payment.id,
                    captured=payment.state == payments_pb2.PAYMENT_STATE_CAPTURED,
                    declined=declined,
                    refunded=payment.state == payments_pb2.PAYMENT_STATE_REFUNDED,
                    amount_minor=payment.amount.amount_minor,
                    currency=payment.amount.currency,
                )
            )
        return records

    async def refund(self, payment_id: str, reason: str, idempotency_key: str) -> None:
        try:
            await self._stub.Refund(
                payments_pb2.RefundRequest(payment_id=payment_id, reason=reason),
                timeout=self._timeout,
                metadata=idempotency_metadata(idempotency_key),
            )
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            info = _metadata(details)
            unknown = details.reason == "PAYMENT_NOT_REFUNDABLE" and info.get("state") == "UNSPECIFIED"
            if unknown:
                # UNSPECIFIED: a state a newer payments stored, which this payments leaves alone; the refund
                # waits for a release that knows what money the payment holds.
                raise _refused_for_unknown_state(
                    "payments", error, "PAYMENT_UNAVAILABLE", self._unknown_state_wait
                ) from None
            if error.code() in IDEMPOTENT_RETRY_CODES:
                raise _unavailable("payments", error, reason="PAYMENT_UNAVAILABLE") from None
            if _request_refused(details):
                raise RefundRefused(str(unexpected_status("payments", error))) from None
            raise unexpected_status("payments", error) from None


def _request_refused(details: ErrorDetails) -> bool:
    """A Refund's request refused as such: its key used with another request, or its reason invalid."""
    if details.code != grpc.StatusCode.INVALID_ARGUMENT:
        return False
    reason_invalid = any(violation.field == "reason" for violation in details.field_violations)
    return details.reason == "IDEMPOTENCY_KEY_REUSED" or (details.reason == "VALIDATION_FAILED" and reason_invalid)
