"""A consumer (notifications, recommendations) stopped with SIGTERM while the shop takes orders, as a
rollout or a node drain does: it drains and exits 0 within its shutdown budget, instead of consuming on
until SHUTDOWN_HOOKS_BUDGET_SECONDS cuts its hook off (exit 1, ERROR logged; once in a while a process
that hangs until SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest

from shopmesh_platform.stack import Stack

from .shop import CHECKOUT_SERVICES, FAST_RECOVERY, place_request, shop_client, user

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.parametrize("victim", ["notifications", "recommendations"])
async def test_a_consumer_sigtermed_while_orders_flow_exits_0(tmp_path: Path, victim: str) -> None:
    async with (
        Stack.for_tests(tmp_path, services=[*CHECKOUT_SERVICES, victim], env={"orders": FAST_RECOVERY}) as stack,
        shop_client(stack) as shop,
    ):
        await shop.set_stock("prod_e_reader", 100_000)
        flowing = True

        async def orders() -> None:
            while flowing:
                with contextlib.suppress(Exception):
                    await shop.place(place_request(user(), "prod_e_reader"))
                await asyncio.sleep(0.02)

        traffic = asyncio.create_task(orders())
        codes = []
        try:
            for _ in range(2):
                await asyncio.sleep(2)
                codes.append(await stack.stop_service(victim, signal.SIGTERM, timeout=20))
                await stack.start_service(victim)
        finally:
            flowing = False
            await traffic
        assert codes == [0, 0], f"{victim}'s exit statuses after SIGTERM while events flowed: {codes}"
