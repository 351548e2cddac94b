"""At shutdown, the sagas still running when orders' wait for them ends are named in a warning: their leases
hand them to the recovery loop (after a restart, or another replica's), and no line said so, so a stop that
left orders half-way read the same as a clean one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shopmesh_chassis.testing import eventually
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.domain.model import Order, SagaStep

from .saga_kit import Clocked, command, place


async def test_the_sagas_still_running_when_the_shutdown_wait_ends_are_named_in_a_warning(
    clocked: Clocked, caplog: pytest.LogCaptureFixture
) -> None:
    # Paused with the reservation saved, as the SIGKILL system test pauses it: a saga that outlasts any wait.
    clocked.settings = clocked.settings.model_copy(update={"fault_pause_after_step": "RESERVED"})
    app = clocked.app()
    placing = asyncio.create_task(place(app, command()))
    try:
        order = await _paused(app)
        with caplog.at_level(logging.INFO, logger="shopmesh.orders"):
            await app.wait_running(timeout=0.1)
    finally:
        for task in [placing, *app._running]:
            task.cancel()
        await asyncio.gather(placing, *app._running, return_exceptions=True)
    [warning] = [r for r in caplog.records if r.name == "shopmesh.orders" and r.levelno >= logging.WARNING]
    assert warning.order_ids == [order.id]  # type: ignore[attr-defined]
    assert order.id in warning.getMessage()
    assert "recovery loop" in warning.getMessage()


async def test_a_shutdown_wait_whose_sagas_all_finish_logs_no_warning(
    app: OrdersApplication, caplog: pytest.LogCaptureFixture
) -> None:
    await place(app, command())
    with caplog.at_level(logging.INFO, logger="shopmesh.orders"):
        await app.wait_running(timeout=5)
    assert [r for r in caplog.records if r.name == "shopmesh.orders" and r.levelno >= logging.WARNING] == []


async def _paused(app: OrdersApplication) -> Order:
    async def paused() -> Order | None:
        listed, _ = await app.list_orders("usr_1", 10, "")
        return listed[0] if listed and listed[0].step is SagaStep.CHARGE else None

    return await eventually(paused, "the saga paused with the reservation saved")
