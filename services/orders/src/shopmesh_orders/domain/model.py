"""The order aggregate and its saga state machine. Pure: no I/O, no gRPC, no SQL."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from shopmesh_chassis import errors
from shopmesh_chassis.text_lines import characters_violation


class OrderState(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    # A state a newer release stored (see CancelCode.UNSPECIFIED): the order stays readable, nothing else.
    UNSPECIFIED = "UNSPECIFIED"


class SagaStep(enum.StrEnum):
    """What the saga must do next. Persisted with the order, so a restarted driver knows where to go on."""

    RESERVE = "RESERVE"  # reserve the stock
    CHARGE = "CHARGE"  # stock reserved: charge the card (the pivot)
    COMMIT = "COMMIT"  # charged: commit the reservation
    COMPENSATE = "COMPENSATE"  # failed before the pivot: undo any charge, release the stock, cancel
    REFUND = "REFUND"  # past the pivot but cancelled (reservation expired, customer request): refund, release
    DONE = "DONE"
    # A step a newer release stored: this release cannot drive it (no transition accepts it, and the
    # recovery loop and claims pass it over), and leaves it to that release's drivers.
    UNSPECIFIED = "UNSPECIFIED"


class CancelCode(enum.StrEnum):
    """Why an order was cancelled; each equals the ErrorInfo reason PlaceOrder answers with."""

    CUSTOMER_REQUESTED = "CUSTOMER_REQUESTED"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    CARD_DECLINED = "CARD_DECLINED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    PAYMENT_UNAVAILABLE = "PAYMENT_UNAVAILABLE"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    # Resumed without the card (never stored), and payments has no charge of the order: the call that had it
    # is gone without an answer from payments (it gave up on something else, or orders restarted).
    CHECKOUT_INTERRUPTED = "CHECKOUT_INTERRUPTED"
    # Expired by the time it was charged: a retry after the expiry month ended drove a charge never sent.
    CARD_EXPIRED = "CARD_EXPIRED"
    # Payments refused the charge's request itself, not the card: a field of ours (the amount, the currency, the
    # order id) or the charge's key reused with another request. A fault on our side: the customer is not told
    # their card was declined, which would send them to their bank for nothing.
    PAYMENT_REQUEST_REJECTED = "PAYMENT_REQUEST_REJECTED"
    # A code a newer release stored that this one does not know (a rolling update, a canary, a rollback: both
    # run on the same database). Only ever read, never decided: the order stays readable, with the message
    # stored beside the code, and the stored code is never written over with this.
    UNSPECIFIED = "UNSPECIFIED"


CANCEL_MESSAGES: dict[CancelCode, str] = {
    CancelCode.INSUFFICIENT_STOCK: "Some items are out of stock; nothing was charged.",
    CancelCode.CARD_DECLINED: "Your card was declined.",
    CancelCode.INSUFFICIENT_FUNDS: "Your card has insufficient funds.",
    CancelCode.PAYMENT_UNAVAILABLE: "Payment could not be processed right now; nothing was charged.",
    CancelCode.RESERVATION_EXPIRED: "The order took too long to complete; any payment was refunded.",
    CancelCode.CHECKOUT_INTERRUPTED: "The order could not be completed in time; nothing was charged.",
    CancelCode.CARD_EXPIRED: "Your card has expired; nothing was charged.",
    CancelCode.PAYMENT_REQUEST_REJECTED: "We could not take payment for this order; nothing was charged.",
}


_NOTHING_CHARGED = "; nothing was charged."
_REFUNDED = "; your payment was refunded."


def _refunded_message(code: CancelCode | None, message: str) -> str:
    """Orders' own reason, decided before the money was seen, says "nothing was charged"; once a charge of the
    order was found and refunded (a capture that landed late, a refund whose answer was lost), it says so
    instead. Only orders' own words change: a customer's reason (CUSTOMER_REQUESTED) stays as given."""
    if code is None or CANCEL_MESSAGES.get(code) != message or not message.endswith(_NOTHING_CHARGED):
        return message
    return message.removesuffix(_NOTHING_CHARGED) + _REFUNDED


@dataclass(frozen=True, slots=True)
class Address:
    full_name: str
    street: str
    city: str
    postal_code: str
    country: str


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: str
    product_name: str
    quantity: int
    unit_price_minor: int

    @property
    def total_minor(self) -> int:
        return self.unit_price_minor * self.quantity


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    user_id: str
    email: str
    currency: str
    lines: tuple[OrderLine, ...]
    address: Address
    created_at: datetime
    updated_at: datetime
    state: OrderState = OrderState.PENDING
    step: SagaStep = SagaStep.RESERVE
    reservation_id: str = ""
    payment_id: str = ""
    cancel_code: CancelCode | None = None
    cancel_message: str = ""
    # Write-ahead marks: set before the remote call, so a resumed saga knows the call may have happened.
    reserve_attempted: bool = False
    charge_attempted_at: datetime | None = None
    refunded: bool = False
    # A cancelled order whose charge may still land after compensation asked payments (the charge was in
    # doubt then): when to ask payments again, and refund what it captured. None: nothing left to check.
    charge_recheck_at: datetime | None = None
    # Cancelled for INSUFFICIENT_STOCK: the products inventory said were short (the first ones, whole ids,
    # when they are many) and how many in all, for PlaceOrder's answer and its retries. None: not known (no
    # such cancellation, or one recorded before orders kept them).
    short_product_ids: tuple[str, ...] = ()
    short_count: int | None = None
    # The version stored with the order: the store's optimistic-concurrency check bumps it on each save.
    version: int = field(default=1)

    @property
    def total_minor(self) -> int:
        return sum(line.total_minor for line in self.lines)

    @property
    def is_terminal(self) -> bool:
        return self.step is SagaStep.DONE

    @property
    def refund_reason(self) -> str:
        """The reason payments is asked to refund with, the same on every try (payments replays the refund's key
        only for the same request). A cancellation message that is not one line of text, which a release before
        the rule (`validate_cancel_reason`) accepted, is not sent: payments refuses it on every try, and the
        money would never go back. Its code is sent instead."""
        code = self.cancel_code.value if self.cancel_code else "cancelled"
        if not self.cancel_message or characters_violation("reason", self.cancel_message) is not None:
            return code
        return self.cancel_message

    @property
    def cancellation_pending(self) -> bool:
        """A customer's cancellation accepted but not complete (its refund or release waits): the order still
        reads CONFIRMED until it is."""
        return self.state is OrderState.CONFIRMED and self.step is SagaStep.REFUND

    def _require(self, *steps: SagaStep) -> None:
        if self.step not in steps:
            raise errors.FailedPrecondition(
                f"order {self.id} is at saga step {self.step}, not {'/'.join(steps)}",
                reason="ILLEGAL_SAGA_TRANSITION",
                metadata={"order_id": self.id, "step": self.step.value},
            )

    def _next(self, now: datetime, **changes: object) -> Order:
        return replace(self, updated_at=now, **changes)  # type: ignore[arg-type]

    def reserving(self, now: datetime) -> Order:
        self._require(SagaStep.RESERVE)
        return self._next(now, reserve_attempted=True)

    def reserved(self, reservation_id: str, now: datetime) -> Order:
        self._require(SagaStep.RESERVE)
        return self._next(now, reservation_id=reservation_id, step=SagaStep.CHARGE)

    def charging(self, now: datetime) -> Order:
        self._require(SagaStep.CHARGE)
        return self._next(now, charge_attempted_at=now)

    def charged(self, payment_id: str, now: datetime) -> Order:
        self._require(SagaStep.CHARGE)
        return self._next(now, payment_id=payment_id, step=SagaStep.COMMIT)

    def committed(self, now: datetime) -> Order:
        self._require(SagaStep.COMMIT)
        return self._next(now, step=SagaStep.DONE, state=OrderState.CONFIRMED)

    def failed_before_pivot(self, code: CancelCode, now: datetime, payment_id: str = "") -> Order:
        """Reserve or charge failed for good: compensate (release; refund a charge that did happen)."""
        self._require(SagaStep.RESERVE, SagaStep.CHARGE)
        return self._next(
            now,
            step=SagaStep.COMPENSATE,
            cancel_code=code,
            cancel_message=CANCEL_MESSAGES[code],
            payment_id=payment_id or self.payment_id,
        )

    def nothing_reserved(self, short_product_ids: Sequence[str], short_count: int) -> Order:
        """Inventory refused the reservation outright, short of these products: compensation has no stock to
        release."""
        return replace(
            self, reserve_attempted=False, short_product_ids=tuple(short_product_ids), short_count=short_count
        )

    def failed_after_pivot(self, code: CancelCode, now: datetime) -> Order:
        """Charged, but the reservation can no longer be committed: refund and cancel."""
        self._require(SagaStep.COMMIT)
        return self._next(now, step=SagaStep.REFUND, cancel_code=code, cancel_message=CANCEL_MESSAGES[code])

    def cancellation_requested(self, message: str, now: datetime) -> Order:
        if self.state is not OrderState.CONFIRMED or self.step is not SagaStep.DONE:
            # A CONFIRMED order whose saga runs again is being cancelled (the only way back from DONE):
            # say so, rather than that a confirmed order cannot be cancelled.
            being_cancelled = self.state is OrderState.CONFIRMED
            raise errors.FailedPrecondition(
                f"order {self.id} is already being cancelled"
                if being_cancelled
                else f"order {self.id} is {self.state.value} and cannot be cancelled",
                reason="ORDER_NOT_CANCELLABLE",
                metadata={"order_id": self.id, "state": f"ORDER_STATE_{self.state.value}"},
            )
        return self._next(now, step=SagaStep.REFUND, cancel_code=CancelCode.CUSTOMER_REQUESTED, cancel_message=message)

    def payment_found(self, payment_id: str, now: datetime) -> Order:
        return self._next(now, payment_id=payment_id)

    def refund_done(self, now: datetime) -> Order:
        self._require(SagaStep.COMPENSATE, SagaStep.REFUND)
        return self._next(now, refunded=True, cancel_message=_refunded_message(self.cancel_code, self.cancel_message))

    def compensated(self, now: datetime, charge_recheck_at: datetime | None = None) -> Order:
        """Cancelled; `charge_recheck_at` when a charge may still land after it (see `charge_rechecked`)."""
        self._require(SagaStep.COMPENSATE, SagaStep.REFUND)
        return self._next(now, step=SagaStep.DONE, state=OrderState.CANCELLED, charge_recheck_at=charge_recheck_at)

    def charge_recheck_postponed(self, until: datetime) -> Order:
        """Payments could not answer about this order's charge (and only this order's): ask again at `until`.
        Nothing about the order changed for its customer, so `updated_at` stays: how long the recheck has
        waited since the order was cancelled sets how far the next is put off."""
        if self.state is not OrderState.CANCELLED or self.charge_recheck_at is None:
            raise errors.FailedPrecondition(
                f"order {self.id} has no charge to check again",
                reason="ILLEGAL_SAGA_TRANSITION",
                metadata={"order_id": self.id, "state": self.state.value},
            )
        return replace(self, charge_recheck_at=until)

    def charge_rechecked(self, refunded: bool, now: datetime) -> Order:
        """Payments was asked again once the charge could no longer land, and a capture it had was refunded
        (`refunded`): the cancelled order is final. Its state, cancel reason and event stay as they were."""
        if self.state is not OrderState.CANCELLED or self.charge_recheck_at is None:
            raise errors.FailedPrecondition(
                f"order {self.id} has no charge to check again",
                reason="ILLEGAL_SAGA_TRANSITION",
                metadata={"order_id": self.id, "state": self.state.value},
            )
        message = _refunded_message(self.cancel_code, self.cancel_message) if refunded else self.cancel_message
        return self._next(now, charge_recheck_at=None, refunded=self.refunded or refunded, cancel_message=message)
