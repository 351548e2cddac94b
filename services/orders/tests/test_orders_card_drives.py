"""CardDrives: the count of drives with the card per order, which the recovery pass reads as "leave it alone".
A retry's drive may start while the one it retries is still unwinding, so an order stays counted until the
last of them ends, however each ends."""

from __future__ import annotations

import asyncio

import pytest

from shopmesh_orders.card_drives import CardDrives


async def test_an_order_stays_held_until_its_last_drive_with_the_card_ends() -> None:
    drives = CardDrives()
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    drives.held_while("ord_1", first)
    with drives.held("ord_1"):
        first.set_result(None)
        await asyncio.sleep(0)  # the done callbacks run
        assert "ord_1" in drives
    assert "ord_1" not in drives


async def test_a_drive_that_fails_or_is_cancelled_gives_the_order_back() -> None:
    drives = CardDrives()
    with pytest.raises(RuntimeError), drives.held("ord_1"):
        raise RuntimeError("the poll failed")
    assert "ord_1" not in drives
    task = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    drives.held_while("ord_2", task)
    assert "ord_2" in drives
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "ord_2" not in drives
