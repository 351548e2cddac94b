"""The order events notifications reacts to, as plain data, and the checks that make one sendable.

An event that fails them is poison: no retry can make it valid, so the consumer retries it a few times
(a bug fixed by a redeploy in between would let it through) and then parks it on the dead-letter stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shopmesh_chassis.contract_limits import event_id_problem, is_currency_code
from shopmesh_chassis.email_addresses import is_email_address


class InvalidEvent(ValueError):
    """The event cannot produce a notification (unparsable, or missing what an e-mail needs)."""


class EventKind(Enum):
    ORDER_CONFIRMED = "ORDER_CONFIRMED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    # A stored kind this release does not know (a newer release added it): listed as the contract's 0
    # value, never sent, never written. No event has it.
    UNSPECIFIED = "UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class Line:
    product_name: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int
    # The event's currencies of the two amounts: the e-mail writes every amount in the total's currency.
    unit_price_currency: str
    line_total_currency: str


@dataclass(frozen=True, slots=True)
class OrderEvent:
    kind: EventKind
    event_id: str
    order_id: str
    user_id: str
    email: str
    currency: str
    lines: tuple[Line, ...]
    total_minor: int
    # Cancellations only: the shop's explanation, and whether a captured payment was refunded.
    reason: str = ""
    refunded: bool = False
    # A cancellation the customer asked for (CancelOrder). Its e-mail says so in a fixed text and `reason` is
    # empty: the reason they typed is their own free text, and quoted, it let anyone have the shop mail a
    # text of theirs to the address an order names.
    cancelled_by_customer: bool = False
    # A cancellation that PlaceOrder answered with (OrderCancelled.answered_at_placement): the customer saw it
    # on screen, and no e-mail is sent for it.
    answered_at_placement: bool = False


def validate_event(event: OrderEvent) -> OrderEvent:
    problems: list[str] = []
    for name, value in (("event id", event.event_id), ("order_id", event.order_id), ("user_id", event.user_id)):
        # An id goes into a subject line and mail headers, where a line break would forge headers.
        if (problem := event_id_problem(name, value)) is not None:
            problems.append(problem)
    if not event.email:
        problems.append("email is empty")
    elif not is_email_address(event.email):
        problems.append("email is not an e-mail address")
    if not is_currency_code(event.currency):
        problems.append("total.currency is not three upper-case letters")
    if event.total_minor < 0:
        problems.append("total is negative")
    problems.extend(_line_problems(event))
    if event.total_minor != sum(line.line_total_minor for line in event.lines):
        # Order.total: the sum of the line totals, no taxes nor shipping.
        problems.append("total is not the sum of the line totals")
    if problems:
        raise InvalidEvent(f"{event.kind.value} {event.event_id or '?'}: {'; '.join(problems)}")
    return event


def _line_problems(event: OrderEvent) -> list[str]:
    """An e-mail telling the customer "-3 x Widget -USD 5.00 each", an item's price in a currency it was
    not charged in, or "2 x Widget USD 5.00 each ... USD 1.00": no order is like that, so no such e-mail
    goes out. One figure that does not add up leaves none of the others to trust: which of them was
    charged, the e-mail cannot tell."""
    problems: list[str] = []
    for index, line in enumerate(event.lines):
        item = f"items[{index}]"
        if line.quantity < 1:
            problems.append(f"{item}.quantity is less than 1")
        if line.line_total_minor != line.quantity * line.unit_price_minor:
            # OrderItem.line_total: unit_price.amount_minor * quantity.
            problems.append(f"{item}.line_total is not quantity x unit_price")
        for name, amount, currency in (
            ("unit_price", line.unit_price_minor, line.unit_price_currency),
            ("line_total", line.line_total_minor, line.line_total_currency),
        ):
            if amount < 0:
                problems.append(f"{item}.{name} is negative")
            if currency != event.currency:
                problems.append(f"{item}.{name}.currency is not total.currency")
    return problems
