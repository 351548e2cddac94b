"""Orders in the database. Every save is an optimistic-concurrency check on `version`.

The statements of the checkout path are built once, with bound parameters: building an UPDATE of a
dozen columns costs SQLAlchemy more than running it (measured ~0.5 ms each; docs/benchmarks.md), and
a statement object that is reused also reuses its compiled form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from shopmesh_chassis import errors
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW
from shopmesh_chassis.db import DbConnection, as_utc, known_values, stored_enum
from shopmesh_chassis.db_errors import duplicates_raised
from shopmesh_chassis.tracing import stored_context_column, stored_context_from_column
from shopmesh_orders.domain.model import Address, CancelCode, Order, OrderLine, OrderState, SagaStep
from shopmesh_orders.store.tables import order_lines, orders


def _row_values(order: Order) -> dict[str, Any]:
    values = {
        "state": order.state.value,
        "step": order.step.value,
        "reservation_id": order.reservation_id,
        "payment_id": order.payment_id,
        "cancel_code": order.cancel_code.value if order.cancel_code else None,
        "cancel_message": order.cancel_message,
        "reserve_attempted": order.reserve_attempted,
        "charge_attempted_at": order.charge_attempted_at,
        "refunded": order.refunded,
        "charge_recheck_at": order.charge_recheck_at,
        "short_product_ids": ",".join(order.short_product_ids) if order.short_count is not None else None,
        "short_count": order.short_count,
        "version": order.version,
        "updated_at": order.updated_at,
    }
    # Read from a value a newer release stored: that value stays (the SET clause leaves out what is absent).
    if order.cancel_code is CancelCode.UNSPECIFIED:
        del values["cancel_code"]
    if order.state is OrderState.UNSPECIFIED:
        del values["state"]
    if order.step is SagaStep.UNSPECIFIED:
        del values["step"]
    return values


# The steps this release can drive: an order at a step a newer release added is left to that release.
# How long after a driver's lease lapsed the recovery loop leaves its order alone while no charge is known
# captured (steps RESERVE and CHARGE), so that a PlaceOrder retried with the card gets it first (`unfinished`).
CARD_HOLDER_GRACE = timedelta(seconds=5)

_DRIVABLE = orders.c.step.in_([step for step in known_values(SagaStep) if step != SagaStep.DONE.value])


def _lease_lapsed(now: datetime, *, for_customer: bool = False, grace: timedelta = timedelta()) -> ColumnElement[bool]:
    """Another driver's lease ran out (`grace` before `now`). Its `lease_until` is by that driver's clock: taken
    as lapsed only MAX_CLOCK_SKEW later, or a replica whose clock is ahead would take over (and, having no card,
    cancel) a checkout still running. A caller `for_customer` takes it on time: a PlaceOrder retried with the card
    goes on with the checkout, charging under the same key; a CancelOrder does what the customer asked."""
    return orders.c.lease_until < now - (timedelta() if for_customer else MAX_CLOCK_SKEW) - grace


def _recheck_held(order_id: str, owner: str) -> tuple[ColumnElement[bool], ...]:
    """A finished order still due a charge recheck, whose lease `owner` holds (`claim_recheck`)."""
    return (
        orders.c.id == order_id,
        orders.c.step == SagaStep.DONE.value,
        orders.c.charge_recheck_at.is_not(None),
        orders.c.lease_owner == owner,
    )


_INSERT_ORDER = insert(orders)
_INSERT_LINES = insert(order_lines)
_BY_ID = select(orders).where(orders.c.id == bindparam("b_id"))
# SQLite renders no FOR UPDATE: there the writer lock the transaction holds serialises it already.
_BY_ID_FOR_UPDATE = _BY_ID.with_for_update()
_BY_ORIGIN = select(orders).where(
    orders.c.idempotency_scope == bindparam("b_scope"), orders.c.idempotency_key == bindparam("b_key")
)
_LINES = select(order_lines).where(order_lines.c.order_id == bindparam("b_id")).order_by(order_lines.c.position)
# A listing's lines in one query, not one per order: a page of 100 was 101 round trips. Ordered by order
# first so that each order's lines come together (`groupby`).
_PAGE_LINES = (
    select(order_lines)
    .where(order_lines.c.order_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(order_lines.c.order_id, order_lines.c.position)
)
# The SET clause comes from the parameters' other keys (the row's columns).
_SAVE = update(orders).where(orders.c.id == bindparam("b_id"), orders.c.version == bindparam("b_version"))
_SAVE_AS_OWNER = _SAVE.where(orders.c.lease_owner == bindparam("b_owner"))


@dataclass(frozen=True, slots=True)
class Lease:
    """The saga driver saving a transition: it must hold the lease, and keeps it `until` (None gives it up)."""

    owner: str
    until: datetime | None


@dataclass(frozen=True, slots=True)
class Due:
    """An order a recovery pass is to work on, with the W3C trace context its PlaceOrder stored (empty for an
    order recorded before orders kept it): the pass works on it in that trace."""

    order_id: str
    trace_context: Mapping[str, str]


def _due(rows: Any) -> list[Due]:
    return [Due(row.id, stored_context_from_column(row.trace_context)) for row in rows]


class UnreadableOrder(Exception):
    """A row this release cannot load: a newer release wrote it (its address without a field this one needs),
    during a rollout or before a rollback. Carries the columns every release reads alike, so that a caller can
    still check whose order it is and which request placed it."""

    def __init__(self, row: Any) -> None:
        super().__init__(f"order {row.id} was stored by a newer release of orders, in a form this one cannot read")
        # `id` and `created_at` as an Order has them: a page of a listing ends at either alike.
        self.id: str = row.id
        self.user_id: str = row.user_id
        self.created_at: datetime = as_utc(row.created_at)
        self.request_hash: str = row.request_hash


_ADDRESS_FIELDS = tuple(field.name for field in fields(Address))


def _address(stored: str) -> Address | None:
    """The stored address, read without the fields a newer release added (a delivery note, say): those stay in
    the row, as no save writes the address column again (`_row_values` leaves it out). None for a JSON object
    without a field this release needs: the one shape a newer release writes that this one cannot read. Any
    other content (not JSON, not an object) no release wrote: a damaged row, whose error reaches the caller
    as it is rather than passing for a newer release's order that some replica could still read."""
    address = json.loads(stored)
    if not isinstance(address, dict):
        raise ValueError(f"stored address is a JSON {type(address).__name__}, not an object")
    if any(name not in address for name in _ADDRESS_FIELDS):
        return None
    return Address(**{name: address[name] for name in _ADDRESS_FIELDS})


class IdempotentOrigin:
    """How an order was asked for: lets a retried PlaceOrder find its order and check the request."""

    def __init__(self, scope: str, key: str, request_hash: str) -> None:
        self.scope = scope
        self.key = key
        self.request_hash = request_hash


class OrderRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def add(
        self,
        order: Order,
        origin: IdempotentOrigin,
        lease_owner: str,
        lease_until: datetime,
        trace_context: Mapping[str, str],
    ) -> None:
        """Insert a new order, its saga lease already held by the driver that will run it, with the trace context
        of the call that placed it (`tracing.stored_trace_context`; what `unfinished` and `charges_to_recheck`
        hand the recovery loop). Raises Duplicate when an order with the same id or idempotency key exists (a
        concurrent checkout with the same key recorded its order first)."""
        with duplicates_raised():
            await self._session.execute(
                _INSERT_ORDER,
                {
                    "lease_owner": lease_owner,
                    "lease_until": lease_until,
                    "trace_context": stored_context_column(trace_context),
                    "id": order.id,
                    "user_id": order.user_id,
                    "email": order.email,
                    "currency": order.currency,
                    "address": json.dumps(asdict(order.address)),
                    "created_at": order.created_at,
                    "idempotency_scope": origin.scope,
                    "idempotency_key": origin.key,
                    "request_hash": origin.request_hash,
                    **_row_values(order),
                },
            )
            await self._session.execute(
                _INSERT_LINES,
                [
                    {
                        "order_id": order.id,
                        "position": position,
                        "product_id": line.product_id,
                        "product_name": line.product_name,
                        "quantity": line.quantity,
                        "unit_price_minor": line.unit_price_minor,
                    }
                    for position, line in enumerate(order.lines)
                ],
            )

    async def save(self, order: Order, lease: Lease | None = None) -> Order:
        """Persist a transition of the order as loaded at `order.version`; ABORTED when someone else changed
        it meanwhile (or, with `lease`, when its owner no longer holds the lease). Returns the order at its
        new version."""
        saved = replace(order, version=order.version + 1)
        values = {"b_id": order.id, "b_version": order.version, **_row_values(saved)}
        statement = _SAVE
        if lease is not None:
            statement = _SAVE_AS_OWNER
            values.update(b_owner=lease.owner, lease_until=lease.until)
            if lease.until is None:
                values["lease_owner"] = None
        result = await self._session.execute(statement, values)
        if result.rowcount != 1:
            raise errors.Aborted(f"order {order.id} changed concurrently", reason="CONCURRENT_MODIFICATION")
        return saved

    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        """The order; `for_update` locks it until the transaction ends, for a read-then-save that must not
        race another (which would fail the save's version check with CONCURRENT_MODIFICATION)."""
        statement = _BY_ID_FOR_UPDATE if for_update else _BY_ID
        row = (await self._session.execute(statement, {"b_id": order_id})).one_or_none()
        return None if row is None else await self._load(row)

    async def get_by_origin(self, scope: str, key: str) -> tuple[Order, str] | None:
        row = (await self._session.execute(_BY_ORIGIN, {"b_scope": scope, "b_key": key})).one_or_none()
        return None if row is None else (await self._load(row), row.request_hash)

    async def cancel_origin(self, order_id: str) -> tuple[str | None, str | None]:
        row = (
            await self._session.execute(
                select(orders.c.cancel_key, orders.c.cancel_request_hash).where(orders.c.id == order_id)
            )
        ).one()
        return row.cancel_key, row.cancel_request_hash

    async def cancel_key_used_elsewhere(self, user_id: str, key: str, order_id: str) -> bool:
        """Whether the user cancelled another order under this idempotency key. On PostgreSQL the transaction
        first takes a lock of the (user, key) pair, held to its end: two cancellations of two orders under one
        key at once would each lock only its own order row, and neither see the other's key (READ COMMITTED).
        SQLite's writers never overlap."""
        if self._session.dialect.name == "postgresql":
            await self._session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:pair, 0))"), {"pair": f"{user_id}|{key}"}
            )
        query = select(orders.c.id).where(
            orders.c.user_id == user_id, orders.c.cancel_key == key, orders.c.id != order_id
        )
        return (await self._session.execute(query.limit(1))).first() is not None

    async def set_cancel_origin(self, order_id: str, key: str, request_hash: str) -> None:
        await self._session.execute(
            update(orders).where(orders.c.id == order_id).values(cancel_key=key, cancel_request_hash=request_hash)
        )

    async def list_for_user(
        self, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[Order | UnreadableOrder]:
        """The user's orders, newest first; one this release cannot load in its place, as an UnreadableOrder,
        so that one row does not fail the list."""
        query = select(orders).where(orders.c.user_id == user_id)
        if after is not None:
            created, order_id = after
            query = query.where(
                or_(orders.c.created_at < created, and_(orders.c.created_at == created, orders.c.id < order_id))
            )
        rows = (
            await self._session.execute(query.order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit))
        ).all()
        # An unreadable order's lines are not loaded, as `_load` would not (nor is a damaged address let by).
        addresses = {row.id: _address(row.address) for row in rows}
        readable = [order_id for order_id, address in addresses.items() if address is not None]
        lines_of: dict[str, list[Any]] = {}
        if readable:
            page_lines = await self._session.execute(_PAGE_LINES, {"b_ids": readable})
            lines_of = {order: list(lines) for order, lines in groupby(page_lines, key=lambda line: line.order_id)}
        return [
            UnreadableOrder(row)
            if (address := addresses[row.id]) is None
            else self._order(row, lines_of.get(row.id, ()), address)
            for row in rows
        ]

    async def claim(self, order_id: str, owner: str, now: datetime, until: datetime, *, for_customer: bool) -> bool:
        """Take the saga lease of an unfinished order unless another live driver holds it (`_lease_lapsed`:
        `for_customer`: a PlaceOrder with the card or a CancelOrder, not the recovery loop)."""
        result = await self._session.execute(
            update(orders)
            .where(
                orders.c.id == order_id,
                _DRIVABLE,
                or_(
                    orders.c.lease_owner.is_(None),
                    orders.c.lease_owner == owner,
                    _lease_lapsed(now, for_customer=for_customer),
                ),
            )
            .values(lease_owner=owner, lease_until=until)
        )
        return bool(result.rowcount == 1)

    async def renew(self, order_id: str, owner: str, until: datetime) -> bool:
        """Extend the saga lease `owner` holds; False when it no longer holds it (another driver took over)."""
        result = await self._session.execute(
            update(orders)
            .where(orders.c.id == order_id, _DRIVABLE, orders.c.lease_owner == owner)
            .values(lease_until=until)
        )
        return bool(result.rowcount == 1)

    async def renew_recheck(self, order_id: str, owner: str, until: datetime) -> bool:
        """Extend the lease `owner` took with `claim_recheck` (a finished order's: `renew` matches unfinished
        ones only); False when it no longer holds it or the order is no longer due a recheck."""
        result = await self._session.execute(
            update(orders).where(*_recheck_held(order_id, owner)).values(lease_until=until)
        )
        return bool(result.rowcount == 1)

    async def release(
        self, order_id: str, owner: str, not_before: datetime | None = None, *, waiting: bool | None = None
    ) -> None:
        """Give the lease up. `not_before`: the order must wait, and the recovery loop leaves it alone until
        then (kept in `lease_until` with no owner: `claim` takes it at once all the same, so a PlaceOrder
        retried with the card does not wait; a release that ignores it merely resumes the order sooner).
        `waiting`: whether the driver gave up on a dependency (`waiting_for_dependency` counts the order until
        its next save), or did not (an error of the order's own); None leaves the mark as it was (a drive cut
        off, which knows nothing new)."""
        values: dict[str, Any] = {"lease_owner": None, "lease_until": not_before}
        if waiting is not None:
            values["waiting_version"] = orders.c.version if waiting else None
        await self._session.execute(
            update(orders).where(orders.c.id == order_id, orders.c.lease_owner == owner).values(**values)
        )

    async def waiting_for_dependency(self) -> dict[SagaStep, int]:
        """How many unfinished orders wait for a dependency, by the step they wait at: their last driver gave up
        on inventory or payments (`release(waiting=True)`) and nothing was saved since, whoever holds them now
        (a recovery pass retrying one holds it for the whole of its step's retries). Reads the unfinished
        orders alone, through `ix_orders_step`: a few rows, however many orders are done."""
        rows = await self._session.execute(
            select(orders.c.step, func.count())
            .where(_DRIVABLE, orders.c.waiting_version == orders.c.version)
            .group_by(orders.c.step)
        )
        return {SagaStep(step): count for step, count in rows.all()}

    async def unfinished(self, now: datetime, limit: int) -> list[Due]:
        """Orders whose saga is not done, that no live driver holds and that are due: the `limit` due
        longest. An order released to wait (`release(not_before=)`) is due when that time comes; one whose
        driver died, when its lease ran out (CARD_HOLDER_GRACE later before the pivot); any other free one since
        it last changed. (Oldest-created first, orders that wait for good would take every pass's batch and
        starve the newer ones.)"""
        due = func.coalesce(orders.c.lease_until, orders.c.updated_at)
        # A lease that lapsed while held (its owner still set: the driver died, or lost it mid-step) on an order
        # with no charge known captured is left to a PlaceOrder retried with the card for CARD_HOLDER_GRACE:
        # the loop has no card, and finding no capture it cancels the order (CHECKOUT_INTERRUPTED).
        before_the_pivot = orders.c.step.in_([SagaStep.RESERVE.value, SagaStep.CHARGE.value])
        held = orders.c.lease_owner.is_not(None)
        # A wait an order was released with (no owner) is no one's lease to lose: due on time.
        rows = await self._session.execute(
            select(orders.c.id, orders.c.trace_context)
            .where(
                _DRIVABLE,
                # A lease is never held without `lease_until`: a null one is a free order with no wait.
                or_(
                    orders.c.lease_until.is_(None),
                    and_(~held, orders.c.lease_until < now),
                    and_(held, ~before_the_pivot, _lease_lapsed(now)),
                    _lease_lapsed(now, grace=CARD_HOLDER_GRACE),
                ),
            )
            .order_by(due, orders.c.created_at, orders.c.id)
            .limit(limit)
        )
        return _due(rows)

    async def charges_to_recheck(self, now: datetime, limit: int) -> list[Due]:
        """Cancelled orders whose charge is due to be checked again, and that no live driver holds."""
        rows = await self._session.execute(
            select(orders.c.id, orders.c.trace_context)
            .where(
                orders.c.charge_recheck_at <= now,
                orders.c.step == SagaStep.DONE.value,
                or_(orders.c.lease_owner.is_(None), _lease_lapsed(now)),
            )
            .order_by(orders.c.charge_recheck_at)
            .limit(limit)
        )
        return _due(rows)

    async def claim_recheck(self, order_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the lease of a finished order whose charge is due to be checked again, unless another live
        driver holds it (the saga's lease: a finished order's is free, `claim` takes unfinished ones only)."""
        result = await self._session.execute(
            update(orders)
            .where(
                orders.c.id == order_id,
                orders.c.step == SagaStep.DONE.value,
                orders.c.charge_recheck_at <= now,
                or_(
                    orders.c.lease_owner.is_(None),
                    orders.c.lease_owner == owner,
                    _lease_lapsed(now),
                ),
            )
            .values(lease_owner=owner, lease_until=until)
        )
        return bool(result.rowcount == 1)

    async def postpone_recheck(self, order_id: str, owner: str, until: datetime) -> bool:
        """Put off the charge recheck of an order `owner` holds with `claim_recheck`, giving the lease up, by id:
        for an order this release cannot load (a row a newer release wrote), which `save` needs. Bumps `version`
        as a save does, so a driver that loaded the order before fails its save. False when `owner` no longer
        holds it."""
        result = await self._session.execute(
            update(orders)
            .where(*_recheck_held(order_id, owner))
            .values(charge_recheck_at=until, lease_owner=None, lease_until=None, version=orders.c.version + 1)
        )
        return bool(result.rowcount == 1)

    async def _load(self, row: Any) -> Order:
        """The order of `row`; UnreadableOrder when a newer release wrote it in a shape this one cannot read.
        Nothing else is taken for that: a damaged row or a bug of this release fails the call (INTERNAL), where
        UnreadableOrder would have it retried for ever and left out of every listing unseen."""
        address = _address(row.address)
        if address is None:
            raise UnreadableOrder(row)
        lines = (await self._session.execute(_LINES, {"b_id": row.id})).all()
        return self._order(row, lines, address)

    @staticmethod
    def _order(row: Any, lines: Any, address: Address) -> Order:
        return Order(
            id=row.id,
            user_id=row.user_id,
            email=row.email,
            currency=row.currency,
            lines=tuple(
                OrderLine(line.product_id, line.product_name, line.quantity, line.unit_price_minor) for line in lines
            ),
            address=address,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            state=stored_enum(OrderState, row.state),
            step=stored_enum(SagaStep, row.step),
            reservation_id=row.reservation_id,
            payment_id=row.payment_id,
            cancel_code=stored_enum(CancelCode, row.cancel_code) if row.cancel_code else None,
            cancel_message=row.cancel_message,
            reserve_attempted=row.reserve_attempted,
            charge_attempted_at=as_utc(row.charge_attempted_at),
            refunded=row.refunded,
            charge_recheck_at=as_utc(row.charge_recheck_at),
            short_product_ids=tuple(p for p in (row.short_product_ids or "").split(",") if p),
            short_count=row.short_count,
            version=row.version,
        )
