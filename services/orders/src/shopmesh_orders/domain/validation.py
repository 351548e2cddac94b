"""Request validation: every rule of the contract, one FieldViolation per bad field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime

import pycountry

from shopmesh_chassis import errors, pagination
from shopmesh_chassis.card_checks import card_violations, refusal_reason
from shopmesh_chassis.contract_limits import (
    MAX_AMOUNT_MINOR,
    currency_violation,
    id_violations,
    money_violations,
    too_long,
)
from shopmesh_chassis.email_addresses import is_email_address
from shopmesh_chassis.errors import FieldViolation
from shopmesh_chassis.text_lines import characters_violation, line_violation, normalized_line, too_long_to_normalize
from shopmesh_orders.domain.model import Address, OrderLine

MAX_ITEMS = 50
MAX_QUANTITY = 100
# The codes ISO 3166-1 has assigned to countries (pycountry's table, upper case): two upper-case letters took
# user-assigned and reserved ones too ("ZZ", "XK", "UK"), which name no country orders.proto ships to.
COUNTRIES = frozenset(country.alpha_2 for country in pycountry.countries)
COUNTRY_RULE = 'an assigned ISO 3166-1 alpha-2 code in upper case, e.g. "DE"'


@dataclass(frozen=True, slots=True)
class CartLine:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Card:
    """Kept out of repr() (and so out of the command's), as payments' Card: no log line or traceback may
    carry the number or the CVV."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvv: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ExpectedTotal:
    """The total the customer was shown and agreed to pay (PlaceOrderRequest.expected_total)."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    user_id: str
    items: tuple[CartLine, ...]
    currency: str
    address: Address
    email: str
    card: Card | None
    # None: the customer accepts the current prices (clients written before the field existed).
    expected_total: ExpectedTotal | None = None


def _user_id_violations(user_id: str) -> list[FieldViolation]:
    # PlaceOrder's OrderConfirmed event carries it to notifications, which refuses an unprintable one: the order
    # would be charged and confirmed, and its e-mail parked for ever; ListOrders holds it to the same rule.
    return id_violations("user_id", user_id)


def _line(violations: list[FieldViolation], field: str, value: str, high: int) -> str:
    """A line of the shipping label (`text_lines`), 1 to `high` characters once normalized: the line as kept.
    One longer than any could be as sent is neither normalized nor scanned (`text_lines.too_long_to_normalize`):
    it comes back as it is, TOO_LONG."""
    over = too_long(field, high)
    if too_long_to_normalize(value, high):
        violations.append(over)
        return value
    line = normalized_line(value)
    violation = line_violation(field, line)
    if violation is not None:
        violations.append(violation)
    elif len(line) > high:
        violations.append(over)
    return line


def _invalid_order(violations: list[FieldViolation]) -> errors.InvalidArgument:
    # Payments' rule: a specific reason when it is all that is wrong, so the caller can tell the customer just that.
    return errors.InvalidArgument("the order request is invalid", violations, reason=refusal_reason(violations))


def validate_place_order(command: PlaceOrder, today: date) -> PlaceOrder:
    """Every rule of the request, the card's expiry on `today` with the others; the command as kept (its
    address lines normalized)."""
    violations: list[FieldViolation] = []
    violations += _user_id_violations(command.user_id)
    if not command.items:
        violations.append(FieldViolation("items", "at least one item is required", "REQUIRED"))
    elif len(command.items) > MAX_ITEMS:
        violations.append(FieldViolation("items", f"at most {MAX_ITEMS} items", "TOO_MANY"))
    seen: set[str] = set()
    for index, item in enumerate(command.items):
        # No product has such an id, and catalog and inventory name ids in comma-separated lists: one with a
        # comma read as several, another line of the order taken for missing or short.
        violations += id_violations(f"items[{index}].product_id", item.product_id, listable=True)
        if item.product_id in seen:
            violations.append(FieldViolation(f"items[{index}].product_id", "appears twice", "DUPLICATE"))
        seen.add(item.product_id)
        if not 1 <= item.quantity <= MAX_QUANTITY:
            violations.append(
                FieldViolation(f"items[{index}].quantity", f"must be 1 to {MAX_QUANTITY}", "OUT_OF_RANGE")
            )
    if (found := currency_violation("currency", command.currency)) is not None:
        violations.append(found)
    sent = command.address
    address = Address(
        full_name=_line(violations, "shipping_address.full_name", sent.full_name, 100),
        street=_line(violations, "shipping_address.street", sent.street, 200),
        city=_line(violations, "shipping_address.city", sent.city, 100),
        postal_code=_line(violations, "shipping_address.postal_code", sent.postal_code, 20),
        country=sent.country,
    )
    if address.country not in COUNTRIES:
        violations.append(FieldViolation("shipping_address.country", COUNTRY_RULE, "INVALID_FORMAT"))
    if not is_email_address(command.email):
        violations.append(FieldViolation("email", "a valid e-mail address", "INVALID_FORMAT"))
    # Payments' own rules (ChargeRequest), checked before any stock is reserved: a card that orders let through
    # and payments refused would be cancelled as a decline.
    violations += card_violations("card", command.card, today)
    _expected_total(violations, command.expected_total, command.currency)
    if violations:
        raise _invalid_order(violations)
    return replace(command, address=address)


def _expected_total(violations: list[FieldViolation], expected: ExpectedTotal | None, currency: str) -> None:
    if expected is None:
        return
    if expected.amount_minor < 0:
        violations.append(FieldViolation("expected_total.amount_minor", "must not be negative", "OUT_OF_RANGE"))
    elif expected.amount_minor > MAX_AMOUNT_MINOR:
        violations.append(
            FieldViolation("expected_total.amount_minor", f"must be at most {MAX_AMOUNT_MINOR:,}", "OUT_OF_RANGE")
        )
    if (found := currency_violation("expected_total.currency", expected.currency)) is not None:
        violations.append(found)
    elif expected.currency != currency:
        # No conversion: a total in another currency cannot be compared with the order's, only refused.
        violations.append(
            FieldViolation("expected_total.currency", f"must be the order's currency, {currency}", "CURRENCY_MISMATCH")
        )


def lines_total(lines: tuple[OrderLine, ...]) -> int:
    return sum(line.total_minor for line in lines)


def matches_expected_total(lines: tuple[OrderLine, ...], expected: ExpectedTotal | None) -> bool:
    return expected is None or lines_total(lines) == expected.amount_minor


def check_expected_total(lines: tuple[OrderLine, ...], expected: ExpectedTotal | None) -> None:
    """The customer pays what they were shown, or nothing: a total at the prices just fetched that differs from
    the one they agreed to is refused before the order is recorded, so nothing is reserved or charged."""
    if expected is not None and not matches_expected_total(lines, expected):
        current = lines_total(lines)
        raise errors.FailedPrecondition(
            f"the prices changed: the order's total is now {current} minor units of {expected.currency}, "
            f"not {expected.amount_minor}; confirm the new total and place the order again",
            reason="PRICE_CHANGED",
            metadata={"current_total_minor": str(current), "currency": expected.currency},
        )


PRODUCT_PRICE_INVALID = "PRODUCT_PRICE_INVALID"


def is_sellable_price(amount_minor: int, currency: str) -> bool:
    """A price an order can be recorded and charged at: catalog's own rule for the prices it loads (1 to
    MAX_AMOUNT_MINOR, in a currency code). Orders checks again what catalog answers: a product priced 0 (data
    that reached catalog's database some other way) passed through to the charge, which payments refused
    after the stock was reserved, and the customer was told their card was declined."""
    return not money_violations("price", amount_minor, currency)


def invalid_prices(product_ids: Sequence[str]) -> errors.FailedPrecondition:
    """PlaceOrder's refusal of products catalog priced at no sellable price (`is_sellable_price`), before any
    order is recorded: the shop's data is at fault, and nothing the customer sends can change it."""
    metadata = errors.listed_ids(product_ids, key="product_ids", count_key="invalid_count")
    return errors.FailedPrecondition(
        f"products without a valid price in the catalog cannot be sold now: {metadata['product_ids']}; take them "
        "out of the order",
        reason=PRODUCT_PRICE_INVALID,
        metadata=metadata,
    )


def validate_totals(lines: tuple[OrderLine, ...]) -> tuple[OrderLine, ...]:
    """The priced lines' totals must keep to Money's bound; checked before the order is recorded. A price
    keeps to it, but a quantity the request may ask for can still take a line or the order past it. Payments
    holds every charge to the bound: a larger total could be recorded but never charged (50 lines of it sum
    far below int64's limit)."""
    violations = [
        FieldViolation(
            f"items[{index}].quantity", f"the line's total exceeds {MAX_AMOUNT_MINOR:,} minor units", "OUT_OF_RANGE"
        )
        for index, line in enumerate(lines)
        if line.total_minor > MAX_AMOUNT_MINOR
    ]
    if not violations and lines_total(lines) > MAX_AMOUNT_MINOR:
        violations.append(
            FieldViolation("items", f"the order's total exceeds {MAX_AMOUNT_MINOR:,} minor units", "OUT_OF_RANGE")
        )
    if violations:
        raise errors.InvalidArgument("the order's total is too large", violations, reason="VALIDATION_FAILED")
    return lines


def order_id_violations(order_id: str) -> list[FieldViolation]:
    # Every service's rule for an id it is handed: no order has such an id.
    return id_violations("order_id", order_id)


def validate_order_id(order_id: str) -> str:
    violations = order_id_violations(order_id)
    if violations:
        raise errors.InvalidArgument(f"invalid {violations[0].field}", violations, reason="VALIDATION_FAILED")
    return order_id


def validate_cancel(order_id: str, reason: str) -> None:
    """CancelOrder's fields, every invalid one named at once."""
    violations = order_id_violations(order_id)
    if len(reason) > 500:
        violations.append(too_long("reason", 500))
    if violations:
        fields = ", ".join(v.field for v in violations)
        raise errors.InvalidArgument(f"invalid {fields}", violations, reason="VALIDATION_FAILED")


def validate_cancel_reason(reason: str) -> None:
    """A new cancellation's reason is one line of text (`text_lines`), as a name or an address line: it is
    stored and answered on every read of the order (never mailed: notifications' cancellation e-mail says
    "You cancelled this order." instead), where a line break would let a customer's text pass for lines of
    the shop's own, and a control
    character (a terminal escape, BEL, DEL, a C1 control) or a line or paragraph separator would reach every
    screen and log that shows it. Optional: an empty one is fine. Not part of `validate_cancel`: a retry of a
    cancellation an earlier release accepted is answered with its order, as PlaceOrder's retries are."""
    violation = characters_violation("reason", reason)
    if violation is not None:
        raise errors.InvalidArgument("invalid reason", [violation], reason="VALIDATION_FAILED")


@dataclass(frozen=True, slots=True)
class ListOrdersQuery:
    user_id: str
    limit: int
    # (created_at, id) of the last order of the previous page; pages run newest first.
    after: tuple[datetime, str] | None


def list_filters(user_id: str) -> dict[str, str]:
    # A page token belongs to the RPC and the user it listed: ListNotifications pages by the same key shape,
    # and took this one's tokens for a page of its own.
    return {"rpc": "ListOrders", "user_id": user_id}


def validate_list_orders(user_id: str, page_size: int, page_token: str) -> ListOrdersQuery:
    """Every bad field is named at once; reason INVALID_PAGE_TOKEN whenever the token is one of them, so a
    client that pages learns to start again from the first page."""
    violations = _user_id_violations(user_id)
    limit = pagination.page_limit(page_size, violations)
    after = pagination.instant_page_key(page_token, list_filters(user_id), violations)
    if violations:
        raise pagination.invalid_request(violations)
    return ListOrdersQuery(user_id=user_id, limit=limit, after=after)
