"""The orders this process drives with the customer's card, which its recovery passes leave alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any


class CardDrives:
    """The orders this process drives with the customer's card (PlaceOrder), or has a retry with the card waiting
    for (`_wait_for_other_driver`), as a count per order: a retry's drive may start while the one it retries is
    still unwinding. The recovery pass leaves them alone even when their lease looks lapsed or they were released
    with no owner: the process was paused (a GC pause, CPU throttling, a VM freeze) longer than lease and grace,
    its drive is still in the charge call, or a retry is between two polls; the pass, which has no card, would
    find no capture and cancel the order CHECKOUT_INTERRUPTED under the customer's PlaceOrder.

    Counted only through `held` and `held_while`, which both give the count back whatever way they end."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._counts

    @contextlib.contextmanager
    def held(self, order_id: str) -> Iterator[None]:
        """`order_id` counted while the block runs."""
        self._counts[order_id] += 1
        try:
            yield
        finally:
            self._release(order_id)

    def held_while(self, order_id: str, task: asyncio.Future[Any]) -> None:
        """`order_id` counted from now until `task` is done, however long its caller waits for it: the drive
        outlives a caller gone."""
        self._counts[order_id] += 1
        task.add_done_callback(lambda _: self._release(order_id))

    def _release(self, order_id: str) -> None:
        self._counts[order_id] -= 1
        # Removed at zero: `in` asks for orders driven now, and the count would otherwise keep every order ever.
        if not self._counts[order_id]:
            del self._counts[order_id]
