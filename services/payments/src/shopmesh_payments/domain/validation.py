"""Validation of requests: INVALID_ARGUMENT with one FieldViolation per bad field.

ErrorInfo reason: INVALID_CARD_NUMBER or CARD_EXPIRED when that is all that is wrong (a caller can tell
its user exactly that); for ListPayments, INVALID_PAGE_TOKEN whenever the page token is one of the bad
fields (the chassis' rule for every list); VALIDATION_FAILED otherwise. Messages and descriptions never
repeat a card number or CVV. Each `validate_*` returns what the use case runs with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shopmesh_chassis.card_checks import CARD_EXPIRED, card_violations, refusal_reason
from shopmesh_chassis.contract_limits import (
    id_violations,
    money_violations,
    required_violation,
    too_long,
)
from shopmesh_chassis.errors import FieldViolation, InvalidArgument
from shopmesh_chassis.pagination import (
    encode_page_token,
    invalid_page_token,
    invalid_request,
    page_limit,
    page_token_key,
)
from shopmesh_chassis.text_lines import characters_violation
from shopmesh_payments.domain.models import Card, Money, Payment

MAX_REFUND_REASON_LENGTH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ChargeCommand:
    order_id: str
    amount: Money
    card: Card


@dataclass(frozen=True, slots=True)
class RefundCommand:
    payment_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ListPaymentsQuery:
    order_id: str
    limit: int
    # (created_at, id) of the last payment of the previous page; pages run newest first.
    after: tuple[datetime, str] | None

    def next_page_token(self, last: Payment) -> str:
        return encode_page_token((_micros(last.created_at), last.id), _list_filters(self.order_id))


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(microseconds=1)


def _list_filters(order_id: str) -> dict[str, str]:
    return {"rpc": "ListPayments", "order_id": order_id}


def _fail(violations: Sequence[FieldViolation], *, outcome: bool = True) -> InvalidArgument:
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgument(
        f"invalid request: {summary}", violations, reason=refusal_reason(violations), outcome=outcome
    )


def _check_amount(amount: Money | None, violations: list[FieldViolation]) -> None:
    if amount is None:
        violations.append(required_violation("amount"))
        return
    # Orders holds every order's total to the bound: no caller can charge more than an order could cost.
    # A refund is of a whole captured charge, so it keeps to it too.
    violations.extend(money_violations("amount", amount.amount_minor, amount.currency))


def validate_charge(order_id: str, amount: Money | None, card: Card | None, today: date | None) -> ChargeCommand:
    """`amount` and `card` are None when the request leaves them unset. With `today` None, every rule but
    the card's expiry (`check_card_current`)."""
    violations: list[FieldViolation] = []
    violations.extend(id_violations("order_id", order_id))
    _check_amount(amount, violations)
    violations.extend(card_violations("card", card, today))
    # amount and card are never None here without a violation saying so; the test only narrows their types.
    if violations or amount is None or card is None:
        raise _fail(violations)
    return ChargeCommand(order_id=order_id, amount=amount, card=card)


def validate_charge_before_lookup(order_id: str, amount: Money | None, card: Card | None, today: date) -> ChargeCommand:
    """The rules checked before the idempotency lookup: all of them, except that a card whose expiry is all
    that is wrong passes, for `check_card_current` to judge after the lookup (a retry of a charge made before
    the card's expiry month ended replays that charge). With anything else wrong the request is refused, which
    stores nothing under its key, so there is no charge to replay: the refusal names the expiry too, one
    violation per invalid field, and INVALID_CARD_NUMBER only when that is all that is wrong."""
    violations: list[FieldViolation] = []
    violations.extend(id_violations("order_id", order_id))
    _check_amount(amount, violations)
    violations.extend(card_violations("card", card, today))
    if all(v.reason == CARD_EXPIRED for v in violations) and amount is not None and card is not None:
        return ChargeCommand(order_id=order_id, amount=amount, card=card)
    raise _fail(violations)


def check_card_current(card: Card, today: date) -> None:
    """The one rule that depends on the date, checked apart from the others, once the charge knows the order
    is not charged already: a retry of a charge made before the card's expiry month ended must read that
    charge (its replay, or ORDER_ALREADY_CHARGED once the key's record is purged), not fail CARD_EXPIRED.
    The refusal is no outcome of the key (`outcome=False`): nothing is stored, as for the rules above."""
    violations = card_violations("card", card, today)
    if violations:
        raise _fail(violations, outcome=False)


def validate_refund(payment_id: str, reason: str) -> RefundCommand:
    """The reason is optional free text, stored with the payment and sent on in PaymentRefunded: one line
    (`text_lines`), as orders holds a cancellation's reason, or a line break or a terminal escape in it would
    reach every log and screen that shows it."""
    violations: list[FieldViolation] = []
    violations.extend(id_violations("payment_id", payment_id))
    if len(reason) > MAX_REFUND_REASON_LENGTH:
        violations.append(too_long("reason", MAX_REFUND_REASON_LENGTH))
    elif (found := characters_violation("reason", reason)) is not None:
        violations.append(found)
    if violations:
        raise _fail(violations)
    return RefundCommand(payment_id=payment_id, reason=reason)


def validate_payment_id(payment_id: str) -> str:
    violations: list[FieldViolation] = []
    violations.extend(id_violations("payment_id", payment_id))
    if violations:
        raise _fail(violations)
    return payment_id


def _after_key(page_token: str, order_id: str, violations: list[FieldViolation]) -> tuple[datetime, str] | None:
    key = page_token_key(page_token, _list_filters(order_id), (int, str), violations)
    if key is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(key[0])), str(key[1])
    except OverflowError:
        # A forged token whose instant no datetime can hold.
        violations.extend(invalid_page_token("not a page token issued by this service").violations)
        return None


def validate_list_payments(order_id: str, page_size: int, page_token: str) -> ListPaymentsQuery:
    violations: list[FieldViolation] = []
    violations.extend(id_violations("order_id", order_id))
    limit = page_limit(page_size, violations)
    after = _after_key(page_token, order_id, violations)
    if violations:
        raise invalid_request(violations)
    return ListPaymentsQuery(order_id=order_id, limit=limit, after=after)
