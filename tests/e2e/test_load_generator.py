"""The load generator (libs/loadgen: Locust's shoppers) against the real stack behind the real edge, as `make load`
runs it against `make run`: Locust as its own process, checked from the shop's side (orders' and the gateway's
metrics), not from Locust's word alone."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from shopmesh_chassis.testing import free_ports
from shopmesh_platform.stack import Stack

from .shop import CHEAP_PASSWORD_HASHING, NO_RATE_LIMITS, scraped

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Every Locust user reaches the gateway from the edge's one address: the per-address buckets would have the few
# seconds' run spend most of its time waiting out RESOURCE_EXHAUSTED (which it does, as asked) instead of shopping.
ENV = {
    "gateway": {
        **NO_RATE_LIMITS,
        "PASSWORD_SITE_RATE_LIMIT_PER_SECOND": "100000",
        "PASSWORD_SITE_RATE_LIMIT_BURST": "100000",
    },
    "users": CHEAP_PASSWORD_HASHING,
}
USERS = 4
RUN_SECONDS = 8
# A short think time, so that a few seconds hold enough checkouts (3 in 36 steps, one card in ten declined) for at
# least one to be confirmed; `make load` keeps the shop-like default of 1 to 5 s.
THINK = "0,0.1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, env=ENV, http=True) as running:
        yield running


async def load(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    """`python -m shopmesh_loadgen ARGS` (the module `make load` runs): its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shopmesh_loadgen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def metric(stack: Stack, service: str, name: str, **labels: str) -> float:
    return scraped(stack, service, name, labels)


@pytest.mark.timeout(300)
async def test_locust_shoppers_browse_sign_up_and_confirm_orders_without_a_failure(stack: Stack) -> None:
    assert stack.http_url is not None
    confirmed = await asyncio.to_thread(
        metric, stack, "orders", "shopmesh_orders_finished_total", state="CONFIRMED", reason=""
    )
    cancelled = await asyncio.to_thread(metric, stack, "orders", "shopmesh_orders_cancelled_after_confirmation_total")
    code, out, err = await load(
        "--host",
        stack.http_url,
        "--headless",
        "--users",
        str(USERS),
        "--spawn-rate",
        str(USERS),
        "--run-time",
        f"{RUN_SECONDS}s",
        # Each user finishes the step it is in (a checkout's saga) before Locust stops.
        "--stop-timeout",
        "30",
        "--think",
        THINK,
        # Every confirmed order cancelled at the shopper's next look at its orders, so that a few seconds hold one.
        "--cancel-share",
        "1",
        "--json",
    )
    assert code == 0, err[-3000:]
    stats: list[dict[str, Any]] = json.loads(out)
    requests = {(entry["method"], entry["name"]): entry for entry in stats}
    assert {entry["name"]: entry["num_failures"] for entry in stats if entry["num_failures"]} == {}
    # Named by route, not by each product's or order's own path: Locust's stats group them.
    assert all("prod_" not in name and "ord_" not in name for _, name in requests), sorted(requests)
    for route in (
        ("POST", "/v1/users"),
        ("POST", "/v1/login"),
        ("GET", "/v1/products"),
        ("GET", "/v1/products/{product_id}"),
        ("POST", "/v1/orders"),
        ("POST", "/v1/orders/{order_id}:cancel"),
    ):
        assert requests.get(route, {}).get("num_requests", 0) > 0, (route, sorted(requests))

    # The shop's side: orders confirmed checkouts, and the gateway composed product pages.
    assert (
        await asyncio.to_thread(metric, stack, "orders", "shopmesh_orders_finished_total", state="CONFIRMED", reason="")
        > confirmed
    )
    # Cancelled after their confirmation, which restocks them: the load keeps the seeded stock.
    assert (
        await asyncio.to_thread(metric, stack, "orders", "shopmesh_orders_cancelled_after_confirmation_total")
        > cancelled
    )
    pages = await asyncio.to_thread(
        metric, stack, "gateway", "grpc_server_handled_total", grpc_method="GetProductPage", grpc_code="OK"
    )
    assert pages >= requests["GET", "/v1/products/{product_id}"]["num_requests"] > 0


async def test_load_against_an_address_nothing_listens_on_exits_1_saying_so() -> None:
    (port,) = free_ports(1)
    code, out, err = await load("--host", f"http://127.0.0.1:{port}", "--headless", "--run-time", "1s", timeout=30)
    assert code == 1
    assert f"error: nothing answers at http://127.0.0.1:{port}" in err
    assert "make run" in err
    assert out == ""
