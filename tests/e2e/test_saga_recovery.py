"""orders killed with SIGKILL in the middle of a saga: after a restart every order reaches a terminal
state and the invariants hold — one capture for a confirmed order, none net for a cancelled one, stock
conserved, one event per order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest

from shopmesh.orders.v1 import orders_pb2
from shopmesh_platform.stack import Stack

from .shop import CHECKOUT_SERVICES, FAST_RECOVERY, Shop, eventually, place_request, shop_client


async def paused_order(shop: Shop, user_id: str, field: str) -> orders_pb2.Order:
    async def probe() -> orders_pb2.Order | None:
        listed = await shop.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id))
        return next((o for o in listed.orders if getattr(o, field)), None)

    return await eventually(probe, f"an order of {user_id} with {field}")


async def terminal(shop: Shop, order_id: str) -> orders_pb2.Order:
    async def probe() -> orders_pb2.Order | None:
        order = await shop.order(order_id)
        return None if order.state == orders_pb2.ORDER_STATE_PENDING else order

    return await eventually(probe, f"{order_id} terminal")


@pytest.mark.parametrize(
    ("pause_after", "visible_field", "expected", "reason"),
    [
        # Killed after the capture, before the commit: the resumed saga commits → CONFIRMED.
        ("CHARGED", "payment_id", orders_pb2.ORDER_STATE_CONFIRMED, orders_pb2.CANCEL_REASON_CODE_UNSPECIFIED),
        # Killed after the reservation, before the charge: the card is gone with the process, payments
        # saw no charge → the resumed saga releases the stock → CANCELLED, for the interruption (payments
        # failed nothing: PAYMENT_UNAVAILABLE would blame it).
        (
            "RESERVED",
            "reservation_id",
            orders_pb2.ORDER_STATE_CANCELLED,
            orders_pb2.CANCEL_REASON_CODE_CHECKOUT_INTERRUPTED,
        ),
    ],
)
async def test_sigkill_mid_saga_then_restart_reaches_a_terminal_state_with_invariants(
    tmp_path: Path, pause_after: str, visible_field: str, expected: int, reason: int
) -> None:
    env = {"orders": {**FAST_RECOVERY, "FAULT_PAUSE_AFTER_STEP": pause_after}}
    async with Stack.for_tests(tmp_path, services=CHECKOUT_SERVICES, env=env) as stack, shop_client(stack) as shop:
        await shop.set_stock("prod_e_reader", 5)
        user_id = f"usr_{uuid.uuid4().hex[:10]}"
        placing = asyncio.create_task(shop.place(place_request(user_id, "prod_e_reader", 2)))
        order = await paused_order(shop, user_id, visible_field)
        # The client gives up (no retry will carry the card to the restarted service), then orders dies.
        placing.cancel()
        with contextlib.suppress(BaseException):
            await placing
        await stack.kill_service("orders")
        await stack.start_service("orders", env={"FAULT_PAUSE_AFTER_STEP": ""})

        final = await terminal(shop, order.id)
        assert (final.state, final.cancel_reason.code) == (expected, reason)
        stock = await shop.stock("prod_e_reader")
        assert stock.reserved == 0
        if expected == orders_pb2.ORDER_STATE_CONFIRMED:
            assert await shop.captured(order.id) == 1
            assert stock.on_hand == 3
        else:
            assert await shop.captured(order.id) == 0
            assert stock.on_hand == 5

        subject = (
            "orders.v1.order_confirmed" if expected == orders_pb2.ORDER_STATE_CONFIRMED else "orders.v1.order_cancelled"
        )

        async def published() -> list[tuple[str, str]] | None:
            mine = [e for e in await shop.order_events() if e[1] == order.id]
            return mine or None

        assert await eventually(published, "the order's event") == [(subject, order.id)]
