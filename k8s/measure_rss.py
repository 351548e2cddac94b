"""Measure each service's resident memory idle and under a checkout load, to size Kubernetes requests.

    .venv/bin/python k8s/measure_rss.py [--rate 50] [--seconds 20] [--traces]

Starts every installed service of the topology (SQLite, real nats-server) as `make run` does, reads
VmRSS from /proc after startup (idle), then drives PlaceOrder at a fixed rate (each one prices through
catalog, reserves in inventory, charges in payments, publishes through the outbox) plus catalog reads,
and reports each service's peak RSS (VmHWM), the HTTP/JSON edge's Envoy (`http-api`) included; a service's
figures are its own process' and its children's summed, as its container's memory accounting counts them.
docs/kubernetes.md#sizing turns the figures into requests and limits in helm/shopmesh/values-staging.yaml.
`--traces`: every service records its spans and exports them over OTLP (to the local trace sink), as on
Kubernetes by default.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

import grpc

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_platform.stack import HTTP_API, Stack, existing_services

PRODUCT = "prod_chef_knife"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def children(pid: int) -> list[int]:
    """The processes `pid`'s threads started (each thread lists its own)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            # A thread that ended since the listing; had it spoiled the whole read, a live service counted 0.
            continue
    return found


def tree_kib(pid: int, field: str) -> int:
    """`field` summed over `pid` and every process under it: the container's memory accounting counts them all
    (users' guessability estimate runs in a process of its own). Summed peaks (VmHWM) may not have been reached at
    the same moment: an upper bound. A process that ended meanwhile counts nothing."""
    try:
        own = status_kib(pid, field)
    except FileNotFoundError:
        return 0
    try:
        below = children(pid)
    except (FileNotFoundError, ProcessLookupError):
        return own  # ended since its own figure was read
    return own + sum(tree_kib(child, field) for child in below)


def place_order(index: int) -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        user_id=f"usr_rss_{index % 50}",
        items=[orders_pb2.CartItem(product_id=PRODUCT, quantity=1)],
        currency="USD",
        shipping_address=orders_pb2.ShippingAddress(
            full_name="Rss Probe", street="1 Load Street", city="Berlin", postal_code="10115", country="DE"
        ),
        email="rss@example.com",
        card=payments_pb2.PaymentCard(number="4242424242424242", exp_month=12, exp_year=2031, cvv="123"),
    )


async def load(stack: Stack, rate: float, seconds: float) -> tuple[int, int]:
    ok = errors = 0
    async with (
        grpc.aio.insecure_channel(stack.address("orders")) as orders_channel,
        grpc.aio.insecure_channel(stack.address("catalog")) as catalog_channel,
    ):
        orders = orders_pb2_grpc.OrdersServiceStub(orders_channel)
        catalog = catalog_pb2_grpc.CatalogServiceStub(catalog_channel)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(index: int) -> None:
            nonlocal ok, errors
            await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
            try:
                await orders.PlaceOrder(
                    place_order(index), metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30
                )
                await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=20), timeout=10)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                if not errors:
                    print(f"first error: {exc.code().name}: {exc.details()}")
                errors += 1

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    return ok, errors


async def main(rate: float, seconds: float, services: list[str] | None, traces: bool) -> None:
    names = services or existing_services()
    with tempfile.TemporaryDirectory() as data:
        stack = Stack.for_tests(Path(data), services=names, traces=traces, http="gateway" in names)
        async with stack:
            await asyncio.sleep(5)
            measured = [*stack.services, *([HTTP_API] if "gateway" in names else [])]
            idle = {n: tree_kib(pid, "VmRSS") for n in measured if (pid := stack.pid(n))}
            if {"orders", "inventory", "catalog", "payments"} <= set(stack.services):
                async with grpc.aio.insecure_channel(stack.address("inventory")) as channel:
                    await inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
                        inventory_pb2.SetStockRequest(product_id=PRODUCT, on_hand=1_000_000)
                    )
                ok, errors = await load(stack, rate, seconds)
                print(f"load: {ok} checkouts + catalog reads at {rate:g}/s for {seconds:g}s, {errors} errors")
            peak = {n: tree_kib(pid, "VmHWM") for n in measured if (pid := stack.pid(n))}
    print("| service | idle RSS (MiB) | peak RSS under load (MiB) |")
    print("|---|---|---|")
    for name in idle:
        print(f"| {name} | {idle[name] / 1024:.0f} | {peak[name] / 1024:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="checkouts per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--services", default=None, help="comma-separated subset (default: every installed one)")
    parser.add_argument("--traces", action="store_true", help="record and export every span (OTLP to a local sink)")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.services.split(",") if args.services else None, args.traces))
