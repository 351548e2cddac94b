"""What the customer reads: subject and plain-text body of an order e-mail, and its Message-ID."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wcwidth import wcswidth, wcwidth

from shopmesh_notifications.domain.events import EventKind, OrderEvent
from shopmesh_notifications.domain.money import format_money

MESSAGE_ID_DOMAIN = "shopmesh.notifications"
# A customer's own cancellation says this, not the reason they gave CancelOrder.
CANCELLED_BY_CUSTOMER = "You cancelled this order."
# The reason said for a cancel code this release does not know as one whose message the shop wrote (codec).
CANCELLED_FOR_ANOTHER_REASON = "We could not complete this order."
# RFC 5322 dot-atom text: what may stand left of the @ of a Message-ID without quoting.
_NOT_ATOM = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")
# A name is written between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE: an Arabic or Hebrew name still
# reads right to left, but neither it nor a right-to-left override in it reorders the amounts beside it.
_ISOLATE, _END_ISOLATE = "\u2068", "\u2069"
# The explicit bidi controls that open a level (embeddings and overrides, which POP DIRECTIONAL FORMATTING
# closes; isolates, which POP DIRECTIONAL ISOLATE closes).
_OPENS_EMBEDDING = frozenset("\u202a\u202b\u202d\u202e")
_OPENS_ISOLATE = frozenset("\u2066\u2067\u2068")
_POP_EMBEDDING, _POP_ISOLATE = "\u202c", "\u2069"


@dataclass(frozen=True, slots=True)
class Email:
    subject: str
    body: str


def message_id_for(event_id: str) -> str:
    """One Message-ID per event: every copy of an event's e-mail (a resend after a crash) carries it, so
    the mail server, the mailbox and our SMTP sink see one message, not two."""
    local = _NOT_ATOM.sub("_", event_id).strip(".") or "event"
    return f"<{local}@{MESSAGE_ID_DOMAIN}>"


def subject_for(event: OrderEvent) -> str:
    if event.kind is EventKind.ORDER_CONFIRMED:
        return f"Your shopmesh order {event.order_id} is confirmed"
    return f"Your shopmesh order {event.order_id} was cancelled"


def isolated_name(name: str) -> str:
    """`name` as an e-mail writes it beside other text: inside an isolate, without the bidi controls in it
    that are not paired. Catalog keeps them (a right-to-left name may open an isolate and close it): a lone
    override would reverse the rest of the line, prices included, and a lone PDI would close our isolate."""
    kept = list(name)
    open_at: list[int] = []
    for index, char in enumerate(name):
        if char in _OPENS_EMBEDDING or char in _OPENS_ISOLATE:
            open_at.append(index)
        elif char == _POP_EMBEDDING:
            # The bidi algorithm ignores a PDF while an isolate is the innermost level open.
            if open_at and name[open_at[-1]] in _OPENS_EMBEDDING:
                open_at.pop()
            else:
                kept[index] = ""
        elif char == _POP_ISOLATE:
            # A PDI closes its isolate and every embedding opened inside it: all of them are paired.
            isolates = [depth for depth, at in enumerate(open_at) if name[at] in _OPENS_ISOLATE]
            if isolates:
                del open_at[isolates[-1] :]
            else:
                kept[index] = ""
    for index in open_at:
        kept[index] = ""
    return f"{_ISOLATE}{''.join(kept)}{_END_ISOLATE}"


def _lines(event: OrderEvent) -> list[str]:
    rows = [
        (
            f"{line.quantity} x {isolated_name(line.product_name)}",
            f"{format_money(line.unit_price_minor, event.currency)} each",
            format_money(line.line_total_minor, event.currency),
        )
        for line in event.lines
    ]
    if not rows:
        return []
    widths = [max(_columns(row[i]) for row in rows) for i in range(3)]
    return [
        f"  {_padded(item, widths[0])}  {_padded(each, widths[1], right=True)}  {_padded(total, widths[2], right=True)}"
        for item, each, total in rows
    ]


def _columns(text: str) -> int:
    """The columns `text` takes in a fixed-width font: two for a CJK or full-width character or an emoji, none
    for a combining mark or a joiner (`len` shifted the amounts after such names). A character a terminal
    does not print (a control character: wcswidth is -1 for the whole text) is counted as taking none."""
    width = wcswidth(text)
    if width < 0:
        return wcswidth("".join(char for char in text if wcwidth(char) >= 0))
    return width


def _padded(text: str, width: int, *, right: bool = False) -> str:
    fill = " " * (width - _columns(text))
    return fill + text if right else text + fill


def render(event: OrderEvent) -> Email:
    total = format_money(event.total_minor, event.currency)
    if event.kind is EventKind.ORDER_CONFIRMED:
        opening = [f"Thank you for your order. Order {event.order_id} is confirmed and is being prepared.", ""]
        closing = [f"Total charged: {total}"]
    else:
        opening = [f"Your order {event.order_id} was cancelled."]
        # Never the customer's own words (`OrderEvent.cancelled_by_customer`): only the shop's text goes out.
        if event.cancelled_by_customer:
            opening.append(CANCELLED_BY_CUSTOMER)
        elif event.reason:
            opening.append(f"Reason: {event.reason}")
        opening.append("")
        closing = [f"Order total: {total}"]
        if event.refunded:
            closing.append(f"Your payment of {total} was refunded to your card.")
        else:
            closing.append("Nothing was charged to your card.")
    body = [
        "Hello,",
        "",
        *opening,
        "Items:",
        *_lines(event),
        "",
        *closing,
        "",
        "The shopmesh team",
    ]
    return Email(subject_for(event), "\n".join(body) + "\n")
