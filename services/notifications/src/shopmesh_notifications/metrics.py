"""Notifications' own metrics, beside the chassis' gRPC and event ones on the same endpoint: what became
of each delivery attempt, and the e-mails not sent at all. `failed` (given up) is the one to alert on: a
customer got no e-mail.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shopmesh_notifications.domain.model import Notification, State
from shopmesh_notifications.intake import ANSWERED_AT_PLACEMENT, RECIPIENT_CAP

# The state a notification is left in after an attempt, as the metric's label (and the attempt's span's
# `shopmesh.outcome`).
_OUTCOMES = {State.SENT: "sent", State.PENDING: "retrying", State.FAILED: "failed"}


def outcome_of(notification: Notification) -> str:
    """What an attempt left the notification in: sent, retrying or failed."""
    return _OUTCOMES[notification.state]


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._attempts = Counter(
            "shopmesh_notifications_delivery_attempts",
            "E-mail delivery attempts, by outcome: sent; retrying (failed, another attempt is due later); "
            "failed (given up: attempts failed for SEND_GIVE_UP_AFTER_SECONDS, or a permanent refusal).",
            ("outcome",),
            registry=registry,
        )
        # Each outcome's series from the start, at 0: created by its first attempt, a series starts at 1, and
        # increase() over it reads 0, so the first e-mail given up in a pod would never raise the alert.
        for outcome in _OUTCOMES.values():
            self._attempts.labels(outcome)
        self._suppressed = Counter(
            "shopmesh_notifications_suppressed",
            "Order events applied without an e-mail, by reason: answered_at_placement (a cancellation PlaceOrder "
            "answered with: the customer saw it); recipient_cap (a cancellation beyond "
            "RECIPIENT_MAIL_BURST / RECIPIENT_MAILS_PER_HOUR to one address).",
            ("reason",),
            registry=registry,
        )
        for reason in (ANSWERED_AT_PLACEMENT, RECIPIENT_CAP):
            self._suppressed.labels(reason)

    def attempted(self, notification: Notification) -> None:
        self._attempts.labels(outcome_of(notification)).inc()

    def suppressed(self, reason: str) -> None:
        self._suppressed.labels(reason).inc()
