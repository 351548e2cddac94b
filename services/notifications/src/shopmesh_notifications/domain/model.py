"""A notification and its delivery state machine: PENDING → SENT, or PENDING → FAILED once an attempt
fails past the retry policy's window (or at once when the mail server refuses it for good), or PENDING →
SUPERSEDED for an order confirmation not sent before its order's cancellation was recorded. SENT, FAILED
and SUPERSEDED are final. An order cancellation beyond the cap on cancellation e-mails to its address is recorded
WITHHELD, final from the start: never sent nor listed, it is there so that the order's confirmation, applied
or due later, is not sent for a cancelled order."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum

from shopmesh_chassis import errors
from shopmesh_chassis.backoff import backoff_delay
from shopmesh_notifications.domain.events import EventKind

MAX_FAILURE_REASON = 500


def storable_reason(text: str) -> str:
    """A failure's text as every database takes it, at most MAX_FAILURE_REASON characters. A mail
    server's reply is not ours to trust: aiosmtplib keeps bytes that are not UTF-8 (a refusal worded in
    Latin-1) as lone surrogates, which neither SQLite nor PostgreSQL stores, and PostgreSQL refuses NUL.
    An outcome that cannot be stored is never recorded, and the e-mail is sent again and again, never
    FAILED. Escaped bytes are shown as \\xNN, other surrogates as \\uNNNN, control characters as spaces."""
    shown = []
    for char in text[:MAX_FAILURE_REASON]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            shown.append(f"\\u{code:04x}")
        elif unicodedata.category(char) == "Cc":
            shown.append(" ")
        else:
            shown.append(char)
    return "".join(shown)[:MAX_FAILURE_REASON]


# UNSPECIFIED, in both: a stored value this release does not know (a newer release added it, and an older
# release runs on the same database during a rollout or after a rollback). Only ever read, never decided:
# the notification stays listable (as the contract's 0 value), the sender never picks it up, and nothing
# writes it back over the stored value.
class Channel(Enum):
    EMAIL = "EMAIL"
    UNSPECIFIED = "UNSPECIFIED"


class State(Enum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"
    # Internal, never listed (ListNotifications lists what the shop e-mails), so not in the contract's enum.
    WITHHELD = "WITHHELD"
    UNSPECIFIED = "UNSPECIFIED"


class Refusal(Enum):
    """How the mail server refused an e-mail for good, as the customer reads it (failure_reason, in
    ListNotifications): one fixed text per kind. Never the server's own reply, which names its hosts and
    networks: that is kept in last_error and the logs, for operators."""

    RECIPIENT = "not delivered: the recipient's mail server refused the address"
    MESSAGE = "not delivered: the mail server refused the message"
    NOT_AN_ADDRESS = "not delivered: the recipient is not an e-mail address"


# The customer's failure_reason when the attempts failed until the retry policy's window ran out: what
# failed was on our side (the relay's address in a connection error, its replies about our credentials).
GAVE_UP = "not delivered: the mail service could not send it"

# Shown for a stored failure_reason that is none of this release's texts: the release before stored the
# mail server's own reply for a refusal (its hosts and networks), and its pods still do during a rollout.
REFUSED = "not delivered: the mail server refused it"

_PUBLIC_REASONS = frozenset({GAVE_UP, REFUSED, *(refusal.value for refusal in Refusal)})
# The release before's give-up text, which named its count of attempts: the same failure as GAVE_UP.
_OLD_GAVE_UP = re.compile(r"not delivered: the mail service failed \d+ attempts?")
# The release before's text for an address it stored under a looser check: the same as NOT_AN_ADDRESS.
_OLD_NOT_AN_ADDRESS = "recipient is not an e-mail address"


def customer_failure_reason(stored: str) -> str:
    """The failure_reason the customer reads (ListNotifications) for the one stored: always a fixed text of
    this release, whoever wrote the row. The column is kept as stored: operators find the rows an older
    release wrote by it (docs/operations.md, ShopmeshEmailsFailed), and its replies stay in last_error."""
    if not stored or stored in _PUBLIC_REASONS:
        return stored
    if _OLD_GAVE_UP.fullmatch(stored):
        return GAVE_UP
    if stored == _OLD_NOT_AN_ADDRESS:
        return Refusal.NOT_AN_ADDRESS.value
    return REFUSED


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Delivery attempts: the first at once, then after base, 2 * base, 4 * base, ... at most `max_delay`,
    until one fails `give_up_after` past the notification's recording. A window, not a count: a relay
    down (or its credentials wrong) for longer than a few doubled waits must not lose the e-mails that
    wait meanwhile; they go out once it is fixed, unless that takes longer than the window."""

    base_delay_seconds: float
    max_delay_seconds: float
    give_up_after_seconds: float

    def delay_after(self, attempts: int) -> timedelta:
        return timedelta(seconds=backoff_delay(self.base_delay_seconds, attempts - 1, cap=self.max_delay_seconds))


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    user_id: str
    order_id: str
    channel: Channel
    recipient: str
    subject: str
    body: str
    # The e-mail's Message-ID, derived from the event id: a re-sent copy is recognisably the same e-mail.
    message_id: str
    kind: EventKind
    event_id: str
    created_at: datetime
    state: State = State.PENDING
    # Delivery attempts that ended (an attempt cut short by a crash is not counted).
    attempts: int = 0
    # When a PENDING notification is due for its next attempt (or its sender's claim runs out).
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    # Why the latest attempt failed (for operators, while it is retried); failure_reason once FAILED.
    last_error: str = ""
    failure_reason: str = ""
    # The W3C trace context (`traceparent`, `tracestate`) of the consumer span that recorded it: each
    # delivery attempt is a span of that trace. Empty for notifications recorded before it was stored.
    trace_context: Mapping[str, str] = field(default_factory=dict)

    def _require_pending(self) -> None:
        if self.state is not State.PENDING:
            raise errors.FailedPrecondition(
                f"notification {self.id} is {self.state.value}, not PENDING",
                reason="NOTIFICATION_NOT_PENDING",
                metadata={"notification_id": self.id},
            )

    def sent(self, at: datetime) -> Notification:
        self._require_pending()
        return replace(self, state=State.SENT, attempts=self.attempts + 1, sent_at=at, next_attempt_at=None)

    def superseded(self) -> Notification:
        """Never to be sent: told of the cancellation, the customer must not be told next that the order is
        confirmed. Not a failed delivery: no attempt is counted and no failure reason given."""
        self._require_pending()
        if self.kind is not EventKind.ORDER_CONFIRMED:
            raise errors.FailedPrecondition(
                f"notification {self.id} is about {self.kind.value}: only a confirmation is superseded",
                reason="NOTIFICATION_NOT_SUPERSEDABLE",
                metadata={"notification_id": self.id},
            )
        return replace(self, state=State.SUPERSEDED, next_attempt_at=None)

    def delivery_failed(
        self, reason: str, at: datetime, policy: RetryPolicy, *, refusal: Refusal | None = None
    ) -> Notification:
        """One attempt failed, `reason` saying how (for operators): try again after the policy's delay, or
        give up for good, at once when the mail server refused this e-mail for good (`refusal`)."""
        self._require_pending()
        attempts = self.attempts + 1
        error = storable_reason(reason) or "delivery failed"
        given_up = at >= self.created_at + timedelta(seconds=policy.give_up_after_seconds)
        if refusal is not None or given_up:
            # failure_reason goes to the customer (ListNotifications): a fixed text, never a server's reply
            # (a relay's names its hosts and networks) nor what failed on our side; those stay in last_error.
            public = refusal.value if refusal is not None else GAVE_UP
            return replace(
                self,
                state=State.FAILED,
                attempts=attempts,
                next_attempt_at=None,
                last_error=error,
                failure_reason=public,
            )
        return replace(self, attempts=attempts, next_attempt_at=at + policy.delay_after(attempts), last_error=error)
