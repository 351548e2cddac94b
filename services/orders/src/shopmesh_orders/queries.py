"""The orders reads: GetOrder and ListOrders, and the loading of an order every use case shares, with who may
see it (another user's order is answered as missing) and what an order this release cannot read answers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.db import Database
from shopmesh_chassis.pagination import encode_page_token
from shopmesh_orders.domain.model import Order
from shopmesh_orders.domain.validation import list_filters, validate_list_orders, validate_order_id
from shopmesh_orders.store.repository import OrderRepository, UnreadableOrder

log = logging.getLogger("shopmesh.orders")

# The ErrorInfo reason of the UNAVAILABLE answered for an order this release cannot read.
ORDER_FROM_NEWER_RELEASE = "ORDER_FROM_NEWER_RELEASE"


def from_newer_release(order_id: str, message: str) -> errors.Unavailable:
    """The answer about an order a newer release stored in a form or state this release cannot read: its row
    (UnreadableOrder), or a state it finished the order in (`_outcome`). Such an order exists while a newer
    release runs beside this one (a rolling update, a canary), or after a rollback from it. UNAVAILABLE, not
    FAILED_PRECONDITION: nothing the client can change about its request would help, and during a rollout a
    mesh balances each call over the replicas (docs/mesh.md), so a retry may reach one of the newer release
    that reads it (1 s); once the rollout is done every replica does. Not final: the retry is a read, nothing
    was changed for this call. One reason for both, so that a client tells this wait from a dependency's."""
    return errors.Unavailable(
        message, reason=ORDER_FROM_NEWER_RELEASE, retry_after_seconds=1.0, metadata={"order_id": order_id}
    )


class OrderQueries:
    """GetOrder, ListOrders and the loading of one order, for the use cases `OrdersApplication` combines."""

    _db: Database
    # Called for each order a call met that this release cannot read (UnreadableOrder).
    _on_unreadable: Callable[[], None]

    async def get_order(self, order_id: str) -> Order:
        return await self._load(validate_order_id(order_id), owner_check=True)

    async def list_orders(self, user_id: str, page_size: int, page_token: str) -> tuple[list[Order], str]:
        query = validate_list_orders(user_id, page_size, page_token)
        call_context.check_acting_for(user_id)
        async with self._db.read() as session:
            rows = await OrderRepository(session).list_for_user(user_id, query.limit + 1, query.after)
        token = ""
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            # From the last row, read or not: the next page starts after it either way.
            last = rows[-1]
            token = encode_page_token([last.created_at.isoformat(), last.id], list_filters(user_id))
        page: list[Order] = []
        for row in rows:
            if isinstance(row, UnreadableOrder):
                # Left out, not failing the page: the user's other orders stay listed. A release that reads
                # it lists it again; GetOrder of it answers UNAVAILABLE (orders.proto, ListOrders).
                log.warning("%s: left out of a ListOrders page", row, extra={"order_id": row.id})
                self._on_unreadable()
            else:
                page.append(row)
        return page, token

    async def _load(self, order_id: str, owner_check: bool = False) -> Order:
        async with self._db.read() as session:
            order = await self._get(OrderRepository(session), order_id, owner_check=owner_check)
        return self._visible(order, order_id) if owner_check else _require(order, order_id)

    async def _get(
        self, repository: OrderRepository, order_id: str, *, for_update: bool = False, owner_check: bool = True
    ) -> Order | None:
        """`repository.get`, an order this release cannot read answered UNAVAILABLE (`from_newer_release`); to its
        owner only, with `owner_check`: to anyone else it is reported as missing, as any order is."""
        try:
            return await repository.get(order_id, for_update=for_update)
        except UnreadableOrder as unreadable:
            if owner_check:
                _check_visible(unreadable.user_id, order_id)
            raise self._unreadable(unreadable) from unreadable

    def _unreadable(self, unreadable: UnreadableOrder) -> errors.Unavailable:
        log.warning("%s: answered UNAVAILABLE", unreadable, extra={"order_id": unreadable.id})
        self._on_unreadable()
        return from_newer_release(
            unreadable.id,
            f"order {unreadable.id} was stored by a newer release of orders, in a form this one cannot read; retry",
        )

    def _visible(self, order: Order | None, order_id: str) -> Order:
        """Another user's order is reported exactly like a missing one."""
        order = _require(order, order_id)
        _check_visible(order.user_id, order_id)
        return order


def _not_found(order_id: str) -> errors.NotFound:
    return errors.NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND", metadata={"order_id": order_id})


def _check_visible(user_id: str, order_id: str) -> None:
    # Another user's order is answered as no order at all: its existence is not theirs to learn.
    caller = call_context.acting_for()
    if caller is not None and user_id != caller:
        raise _not_found(order_id)


def _require(order: Order | None, order_id: str) -> Order:
    if order is None:
        raise _not_found(order_id)
    return order
