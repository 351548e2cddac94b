"""Notifications in the database. Claims and outcomes are single conditional UPDATEs, so that replicas
sending side by side never both send one notification, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update

from shopmesh_chassis.db import DbConnection, as_utc, known_values, stored_enum
from shopmesh_chassis.tracing import stored_context_column, stored_context_from_column
from shopmesh_notifications.domain.events import EventKind
from shopmesh_notifications.domain.model import Channel, Notification, State
from shopmesh_notifications.store.tables import notifications

# The advisory locks' namespace (their first key) for per-order locks: notifications' own, apart from the
# chassis' single-key locks (migrations, outbox relay).
_ORDER_LOCKS = 0x4E544659  # "NTFY"

# What the sender may pick up: PENDING, on a channel and of a kind this release knows. A newer release's
# notification (an SMS, say) is left to that release's senders, not e-mailed to its recipient by this one.
_SENDABLE = and_(
    notifications.c.state == State.PENDING.value,
    notifications.c.channel.in_(known_values(Channel)),
    notifications.c.kind.in_(known_values(EventKind)),
)


def _delivery_values(notification: Notification) -> dict[str, Any]:
    return {
        "state": notification.state.value,
        "attempts": notification.attempts,
        "next_attempt_at": notification.next_attempt_at,
        "sent_at": notification.sent_at,
        "last_error": notification.last_error,
        "failure_reason": notification.failure_reason,
    }


def _from_row(row: Any) -> Notification:
    return Notification(
        id=row.id,
        user_id=row.user_id,
        order_id=row.order_id,
        channel=stored_enum(Channel, row.channel),
        recipient=row.recipient,
        subject=row.subject,
        body=row.body,
        message_id=row.message_id,
        kind=stored_enum(EventKind, row.kind),
        event_id=row.event_id,
        created_at=as_utc(row.created_at),
        state=stored_enum(State, row.state),
        attempts=row.attempts,
        next_attempt_at=as_utc(row.next_attempt_at),
        sent_at=as_utc(row.sent_at),
        last_error=row.last_error,
        failure_reason=row.failure_reason,
        trace_context=stored_context_from_column(row.trace_context),
    )


class NotificationRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def add(self, notification: Notification) -> None:
        await self._session.execute(
            insert(notifications).values(
                id=notification.id,
                user_id=notification.user_id,
                order_id=notification.order_id,
                channel=notification.channel.value,
                recipient=notification.recipient,
                subject=notification.subject,
                body=notification.body,
                message_id=notification.message_id,
                kind=notification.kind.value,
                event_id=notification.event_id,
                created_at=notification.created_at,
                trace_context=stored_context_column(notification.trace_context),
                **_delivery_values(notification),
            )
        )

    async def get(self, notification_id: str) -> Notification | None:
        row = (
            await self._session.execute(select(notifications).where(notifications.c.id == notification_id))
        ).one_or_none()
        return None if row is None else _from_row(row)

    async def lock_order(self, order_id: str) -> None:
        """Until this transaction ends, no other one that locks the order records a notification of it.

        Under PostgreSQL's READ COMMITTED a look for the order's cancellation does not see one whose
        transaction is still open, and the confirmation would be recorded beside it. A transaction-level
        advisory lock (released at commit or rollback) makes the second wait for the first's outcome; the
        key is the order id's hash, in a namespace of its own (an unlucky collision only makes two orders
        wait for each other). SQLite needs none: BEGIN IMMEDIATE already runs writers one at a time."""
        if self._session.dialect.name == "postgresql":
            await self._session.execute(
                text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:order_id))"),
                {"namespace": _ORDER_LOCKS, "order_id": order_id},
            )

    async def order_cancelled(self, order_id: str) -> bool:
        """Whether the order's cancellation e-mail is recorded, WITHHELD by the cap included
        (ix_notifications_order)."""
        return await self.order_notified(order_id, EventKind.ORDER_CANCELLED)

    async def order_notified(self, order_id: str, kind: EventKind) -> bool:
        """Whether a notification of the order of this kind, on any channel, is recorded, in any state
        (ix_notifications_order)."""
        query = select(notifications.c.id).where(
            notifications.c.order_id == order_id, notifications.c.kind == kind.value
        )
        return await self._session.scalar(query.limit(1)) is not None

    async def order_notified_of_event(self, order_id: str, kind: EventKind, channel: Channel, event_id: str) -> bool:
        """Whether a notification of the order of this kind on this channel stands for `event_id`'s: one
        the customer has, or will have (any state but FAILED and WITHHELD), or the event's own, in any state
        (its redelivery once the consumer has forgotten its id). A FAILED or WITHHELD one gave the customer
        nothing: a later event of its kind gets a notification of its own, beside it (ix_notifications_order)."""
        query = select(notifications.c.id).where(
            notifications.c.order_id == order_id,
            notifications.c.kind == kind.value,
            notifications.c.channel == channel.value,
            or_(
                notifications.c.state.not_in((State.FAILED.value, State.WITHHELD.value)),
                notifications.c.event_id == event_id,
            ),
        )
        return await self._session.scalar(query.limit(1)) is not None

    async def list_for_user(self, user_id: str, limit: int, after: tuple[datetime, str] | None) -> list[Notification]:
        """Newest first; `after` is the (created_at, id) of the last notification of the previous page. Not the
        WITHHELD ones: nothing was e-mailed."""
        query = select(notifications).where(
            notifications.c.user_id == user_id, notifications.c.state != State.WITHHELD.value
        )
        if after is not None:
            created, notification_id = after
            query = query.where(
                or_(
                    notifications.c.created_at < created,
                    and_(notifications.c.created_at == created, notifications.c.id < notification_id),
                )
            )
        query = query.order_by(notifications.c.created_at.desc(), notifications.c.id.desc()).limit(limit)
        return [_from_row(row) for row in (await self._session.execute(query)).all()]

    async def due(self, now: datetime, limit: int) -> list[str]:
        """PENDING notifications whose next attempt is due, oldest first."""
        rows = await self._session.execute(
            select(notifications.c.id)
            .where(_SENDABLE, notifications.c.next_attempt_at <= now)
            .order_by(notifications.c.next_attempt_at, notifications.c.created_at)
            .limit(limit)
        )
        return [row.id for row in rows]

    async def next_due_at(self) -> datetime | None:
        """When the earliest PENDING notification becomes due (None: nothing is pending)."""
        value = await self._session.scalar(select(func.min(notifications.c.next_attempt_at)).where(_SENDABLE))
        return as_utc(value)

    async def claim(self, notification_id: str, now: datetime, until: datetime) -> Notification | None:
        """Take a due notification for one delivery attempt: until `until` nobody else picks it up. A
        sender that dies meanwhile leaves it to be picked up again once the claim runs out."""
        result = await self._session.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                _SENDABLE,
                notifications.c.next_attempt_at <= now,
            )
            .values(next_attempt_at=until)
        )
        if result.rowcount != 1:
            return None
        return await self.get(notification_id)

    async def record_delivery(self, outcome: Notification, claimed_until: datetime) -> bool:
        """Store the outcome of an attempt made under the claim that ran until `claimed_until`; False when
        nothing was written: it was already (a repeated write whose first COMMIT went through), or the
        notification is no longer PENDING, or (for an outcome other than SENT) no longer this claim's.

        Each claim moves the next attempt to a later `until` than the one before (it takes only a due
        notification, and claims last a positive time), so `next_attempt_at = claimed_until` says nobody has
        claimed it since, and nobody has recorded an outcome since. Another sender's claim, taken once ours
        ran out, stands: a late or repeated write of a retry or of FAILED would move its next attempt back
        (a third sender could take it while the second still sends) and count its attempts from ours.

        SENT is the exception: the mail server accepted the e-mail, which no later attempt can undo. Still
        PENDING, whoever's claim it is under, it becomes SENT, so that nobody sends it again; its attempts
        are counted on from the stored ones, never rewound. The claimant's own outcome then finds it SENT."""
        values = _delivery_values(outcome)
        query = update(notifications).where(
            notifications.c.id == outcome.id, notifications.c.state == State.PENDING.value
        )
        if outcome.state is State.SENT:
            values["attempts"] = notifications.c.attempts + 1
        else:
            query = query.where(notifications.c.next_attempt_at == claimed_until)
        result = await self._session.execute(query.values(**values))
        return bool(result.rowcount == 1)

    async def already_recorded(self, outcome: Notification) -> bool:
        """Whether the stored delivery state is `outcome`'s: a write whose COMMIT went through though its
        reply was lost, found when repeated.

        A retry's next attempt is left out: once it is due, another sender may claim the notification
        between the two tries, which moves it. What stays is the attempts and the error, and no other
        sender's outcome can carry both while ours went unwritten: it would have had to claim the
        notification before our claim ran out, which our tries never outlast."""
        stored = await self.get(outcome.id)
        if stored is None:
            return False
        found, ours = _delivery_values(stored), _delivery_values(outcome)
        if outcome.state is State.PENDING:
            del found["next_attempt_at"], ours["next_attempt_at"]
        return found == ours
