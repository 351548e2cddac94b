"""Checkout benchmark (`make bench-checkout`): checkouts per second and latency at fixed arrival rates.

Open loop: requests are sent on a fixed schedule (rate R for D seconds) whether or not earlier ones have
answered, and each latency is measured from the moment its request was *due*, so queueing in an
overloaded system is counted (no coordinated omission). Each checkout is a real PlaceOrder of one unit
of one catalog product, the products taken in turn (`--products N`: the first N of the catalog's seed;
default all, so orders' price cache misses as it would in a shop, once per product and time to live):
priced from catalog (or the prices orders remembers), inventory reserves, payments charges,
inventory commits, the outbox relay publishes OrderConfirmed to a real nats-server. Every service is
its own process, as under `make run`, with SQLite databases, JSON logs at INFO, tracing and metrics on.
`--database postgresql` runs the same with every service on its own database of a throwaway PostgreSQL
server (the Kubernetes configuration) and writes its own section.

The rates are run `--repeats` times (every rate once, then again), and each figure is reported as the
median over the repetitions with the range beside it: this host's speed drifts by up to a factor of two within
minutes, and one run shows the phase it fell in more than the code. Before each repetition a fixed
pure-Python loop is timed (*host speed*), so a reader sees which phase each repetition met.

The *saturation rate* is the highest offered rate that the system still completes in every repetition
(≥ 95 % of the offered rate, no errors) with p99 under one second.

Before the rates, a serial phase places orders one after another and reads each process's CPU time
from /proc: CPU milliseconds per checkout, per service, say where the capacity goes (on 2 cores,
50 checkouts/s at low latency needs well under 40 ms of CPU per checkout in all).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.testing.postgres import postgres_bin, postgres_server
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.mesh.layout import sidecar_name
from shopmesh_platform.stack import Stack, postgres_env

sys.path.insert(0, str(Path(__file__).parent))
from report import host_ticks, machine, process_cpu_seconds, write_section

HEADING = "## Checkout (`make bench-checkout`)"
POSTGRES_HEADING = "## Checkout on PostgreSQL (`bench_checkout.py --database postgresql`)"
AWAKE_HEADING = "## Checkout with the vCPUs kept from halting (`bench_checkout.py --keep-awake`)"
# Each configuration has its own section, so that no run replaces another configuration's.
MESH_HEADING = "## Checkout through the local mesh (`bench_checkout.py --mesh`)"
HEADINGS = {
    ("sqlite", False, False): HEADING,
    ("postgresql", False, False): POSTGRES_HEADING,
    ("sqlite", True, False): AWAKE_HEADING,
    ("postgresql", True, False): "## Checkout on PostgreSQL with the vCPUs kept from halting "
    "(`bench_checkout.py --database postgresql --keep-awake`)",
    ("sqlite", False, True): MESH_HEADING,
}
# One per CPU at SCHED_IDLE: it runs only when nothing else wants the CPU, and is preempted at once.
_SPINNER = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"
SERVICES = ("catalog", "inventory", "payments", "orders")
# Up to 400/s so that a fast host's saturation is found, not capped; a slow host stops early (below).
RATES = (10, 25, 50, 75, 100, 150, 200, 300, 400)
TARGET_RATE = 50
TARGET_P99_MS = 30.0
STOCK = 1_000_000


@dataclass(frozen=True)
class Result:
    rate: float
    offered: int
    completed: int
    seconds: float
    latencies_ms: tuple[float, ...]
    # The host during the window: the share of CPU time the hypervisor stole, and the CPU the services
    # and nats-server spent per completed checkout (the same work costs more in a slow phase).
    steal_percent: float = float("nan")
    cpu_ms_per_checkout: float = float("nan")
    # What the failed checkouts were told: status code and message, with how many got each.
    failures: tuple[tuple[str, int], ...] = ()

    @property
    def errors(self) -> int:
        return sum(count for _, count in self.failures)

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def sustained(self) -> bool:
        return self.errors == 0 and self.throughput >= 0.95 * self.rate and self.percentile(0.99) < 1000


@dataclass(frozen=True)
class Serial:
    """Checkouts placed one at a time: their latency and what each process spent on them."""

    count: int
    latencies_ms: tuple[float, ...]
    cpu_ms_per_checkout: dict[str, float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def host_speed_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop (best of 5): lower is a faster phase of the host."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        sum(i * i for i in range(300_000))
        best = min(best, time.process_time() - started)
    return best * 1000


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def server_cpu_seconds(postmaster: int) -> float:
    """CPU time of a PostgreSQL server: the postmaster and every process it started (the backends)."""
    total = process_cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
                    total += process_cpu_seconds(int(entry.name))
    return total


@contextlib.contextmanager
def vcpus_kept_awake(enabled: bool) -> Iterator[None]:
    """With `enabled`, a SCHED_IDLE busy loop per CPU for the duration, so that no vCPU ever halts.

    On a virtual machine an idle vCPU halts, and waking it (a request arrives for a sleeping service)
    waits for the hypervisor to run it again: that wait is counted as *steal*. A checkout wakes five
    processes several times each, so on a busy host steal stretches every hop. Spinners that yield at
    once to any real work keep the vCPUs running, as on dedicated cores, where waking is cheap: the
    figures then show the code's cost rather than the host's wake-up latency (cf. the kernel's
    `idle=poll`; this machine's haltpoll governor is configured not to poll)."""
    if not enabled:
        yield
        return
    spinners = [subprocess.Popen([sys.executable, "-c", _SPINNER]) for _ in os.sched_getaffinity(0)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The load generator's own garbage collector off while it measures: a full collection of its
    thousands of scheduled requests paused its loop for 50-70 ms, which the latencies then counted as
    the system's (the services run with their startup heap frozen, app.freeze_startup_heap)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def run_serial(
    stub: orders_pb2_grpc.OrdersServiceStub,
    products: Sequence[str],
    stack: Stack,
    count: int,
    postmaster: int | None = None,
) -> Serial:
    pids = processes(stack)
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    postgres_before = server_cpu_seconds(postmaster) if postmaster else 0.0
    own = _own_cpu_seconds()
    latencies = []
    with collector_paused():
        for index in range(count):
            started = time.perf_counter()
            await stub.PlaceOrder(
                request(index, products), metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30
            )
            latencies.append((time.perf_counter() - started) * 1000)
    cpu = {name: (process_cpu_seconds(pids[name]) - spent) * 1000 / count for name, spent in before.items()}
    if postmaster:
        cpu["postgres"] = (server_cpu_seconds(postmaster) - postgres_before) * 1000 / count
    cpu["load generator"] = (_own_cpu_seconds() - own) * 1000 / count
    return Serial(count, tuple(latencies), cpu)


def serial_report(serial: Serial) -> str:
    names = list(serial.cpu_ms_per_checkout)
    header = "| " + " | ".join(names) + " | all |\n|" + "--:|" * (len(names) + 1)
    values = [serial.cpu_ms_per_checkout[n] for n in names]
    row = "| " + " | ".join(f"{v:.1f}" for v in values) + f" | {sum(values):.1f} |"
    return (
        f"Serial: {serial.count} checkouts one after another: p50 {serial.percentile(0.5):.1f} ms, "
        f"p99 {serial.percentile(0.99):.1f} ms, mean {statistics.fmean(serial.latencies_ms):.1f} ms. "
        "CPU milliseconds per checkout, by process:\n\n" + header + "\n" + row
    )


def request(index: int, products: Sequence[str]) -> orders_pb2.PlaceOrderRequest:
    """The index-th checkout: one of 50 users buys one unit of the next product in turn."""
    return orders_pb2.PlaceOrderRequest(
        user_id=f"usr_bench_{index % 50}",
        items=[orders_pb2.CartItem(product_id=products[index % len(products)], quantity=1)],
        currency="USD",
        shipping_address=orders_pb2.ShippingAddress(
            full_name="Bench Mark", street="1 Load Street", city="Berlin", postal_code="10115", country="DE"
        ),
        email="bench@example.com",
        card=payments_pb2.PaymentCard(number="4242424242424242", exp_month=12, exp_year=2031, cvv="123"),
    )


def processes(stack: Stack) -> dict[str, int]:
    """The processes a checkout runs in, besides the load generator: the four services, their sidecars
    when meshed, and nats-server."""
    sidecars = [sidecar_name(name) for name in SERVICES if sidecar_name(name) in stack.sidecars]
    return {name: pid for name in (*SERVICES, *sidecars, "nats") if (pid := stack.pid(name)) is not None}


def system_pids(stack: Stack) -> list[int]:
    return list(processes(stack).values())


def channel_to(stack: Stack, name: str) -> grpc.aio.Channel:
    """A channel to a service; through the mesh, as the gateway with its SVID: the methods it calls of
    catalog and orders (ListProducts, PlaceOrder) are the ones the benchmark calls through it."""
    if not stack.sidecars:
        return grpc.aio.insecure_channel(stack.address(name))
    return channel_as(stack.mesh_dir, "gateway", name, stack.address(name))


async def run_rate(
    stub: orders_pb2_grpc.OrdersServiceStub,
    products: Sequence[str],
    rate: float,
    seconds: float,
    pids: Sequence[int] = (),
) -> Result:
    count = int(rate * seconds)
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    start = 0.0  # set just before the requests are scheduled

    async def one(index: int) -> None:
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            await stub.PlaceOrder(
                request(index, products), metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            failures[f"{error.code().name}: {error.details()}"] += 1
            return
        latencies.append((loop.time() - due) * 1000)

    with collector_paused():
        ticks, cpu = host_ticks(), sum(map(process_cpu_seconds, pids))
        began = time.monotonic()
        start = loop.time() + 0.1
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = max(seconds, time.monotonic() - began - 0.1)
        stolen = host_ticks().steal_percent_since(ticks)
        spent_ms = (sum(map(process_cpu_seconds, pids)) - cpu) * 1000
    per_checkout = spent_ms / len(latencies) if pids and latencies else float("nan")
    return Result(
        rate, count, len(latencies), elapsed, tuple(latencies), stolen, per_checkout, tuple(failures.most_common())
    )


@dataclass(frozen=True)
class Repetition:
    host_speed_ms: float
    results: tuple[Result, ...]


async def stocked_products(stack: Stack, count: int) -> list[str]:
    """The first `count` products of the catalog (0: all), each stocked so that no run sells out."""
    products: list[str] = []
    page_token = ""
    async with channel_to(stack, "catalog") as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        while True:
            page = await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=100, page_token=page_token))
            products.extend(p.id for p in page.products)
            page_token = page.next_page_token
            if not page_token or (count and len(products) >= count):
                break
    products = products[:count] if count else products
    # SetStock is an operator's call that no service makes, so the mesh admits no identity to it: stock is
    # seeded on inventory's own socket (`unix:<path>`), past its sidecar, as an operator's port-forward to a pod
    # would.
    async with grpc.aio.insecure_channel(stack.app_address("inventory")) as channel:
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        for product in products:
            await inventory.SetStock(inventory_pb2.SetStockRequest(product_id=product, on_hand=STOCK))
    return products


async def bench(
    rates: Sequence[float],
    seconds: float,
    warmup: float,
    serial: int,
    repeats: int,
    database: str,
    products: int,
    mesh: bool = False,
) -> tuple[Serial, list[Repetition], int]:
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as resources:
        env: dict[str, dict[str, str]] = {}
        postmaster = None
        if database == "postgresql":
            server = resources.enter_context(postgres_server())
            env = postgres_env(server, SERVICES)
            postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        stack = Stack.for_tests(Path(data), services=list(SERVICES), env=env, mesh=mesh)
        async with stack:
            bought = await stocked_products(stack, products)
            print(f"{len(bought)} product(s), bought in turn", flush=True)
            async with channel_to(stack, "orders") as channel:
                stub = orders_pb2_grpc.OrdersServiceStub(channel)
                await run_rate(stub, bought, 10, warmup)  # connections, caches, SQLite pages
                measured = await run_serial(stub, bought, stack, serial, postmaster)
                print(serial_report(measured), flush=True)
                repetitions = []
                for repetition in range(1, repeats + 1):
                    speed = host_speed_ms()
                    print(f"repetition {repetition}: host speed {speed:.1f} ms", flush=True)
                    results = []
                    for rate in rates:
                        result = await run_rate(stub, bought, rate, seconds, system_pids(stack))
                        results.append(result)
                        print(line(result), flush=True)
                        if result.percentile(0.99) > 5000:
                            break  # far past saturation: higher rates only queue more
                    repetitions.append(Repetition(speed, tuple(results)))
                return measured, repetitions, len(bought)


def line(r: Result) -> str:
    return (
        f"| {r.rate:g} | {r.throughput:.1f} | {r.completed}/{r.offered} | {r.errors} | "
        f"{r.percentile(0.5):.1f} | {r.percentile(0.99):.1f} | {max(r.latencies_ms, default=float('nan')):.1f} | "
        f"{'yes' if r.sustained else 'no'} | steal {r.steal_percent:.1f} %, "
        f"{r.cpu_ms_per_checkout:.1f} CPU ms per checkout"
        + "".join(f"\n    {count} of them: {failure}" for failure, count in r.failures)
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def summary_line(rate: float, runs: Sequence[Result]) -> str:
    p99s = [r.percentile(0.99) for r in runs]
    return (
        f"| {rate:g} | {_median([r.throughput for r in runs]):.1f} | "
        f"{sum(r.completed for r in runs)}/{sum(r.offered for r in runs)} | {sum(r.errors for r in runs)} | "
        f"{_median([r.percentile(0.5) for r in runs]):.1f} | {_median(p99s):.1f} | {_span(p99s)} | "
        f"{max((max(r.latencies_ms, default=float('nan')) for r in runs), default=float('nan')):.1f} | "
        f"{sum(r.sustained for r in runs)}/{len(runs)} |"
    )


def failures_told(runs: dict[float, list[Result]]) -> str:
    """What failed checkouts were told, per rate, over all repetitions."""
    parts = []
    for rate, results in runs.items():
        told: collections.Counter[str] = collections.Counter()
        for result in results:
            told.update(dict(result.failures))
        parts.extend(f"at {rate:g}/s {count} calls `{failure}`" for failure, count in told.most_common())
    return "Failed checkouts were told: " + "; ".join(parts) + "."


def phases(repetitions: Sequence[Repetition]) -> str:
    """Per repetition, gauges of the host beside the figure the target is about: the probe before it, the
    p50 at the lowest rate (requests hardly overlap there, so queueing adds little), and the steal and
    CPU per checkout in the window at the target rate."""
    lowest = min((r.rate for rep in repetitions for r in rep.results), default=float("nan"))

    def cell(rep: Repetition, rate: float, figure: Callable[[Result], float]) -> str:
        found = [r for r in rep.results if r.rate == rate]
        return f"{figure(found[0]):.1f}" if found else "-"

    figures: list[tuple[float, Callable[[Result], float]]] = [
        (lowest, lambda r: r.percentile(0.5)),
        (TARGET_RATE, lambda r: r.steal_percent),
        (TARGET_RATE, lambda r: r.cpu_ms_per_checkout),
        (TARGET_RATE, lambda r: r.percentile(0.99)),
    ]
    rows = [
        f"| {i} | {rep.host_speed_ms:.1f} | " + " | ".join(cell(rep, rate, figure) for rate, figure in figures) + " |"
        for i, rep in enumerate(repetitions, 1)
    ]
    return (
        "The host's phase in each repetition: the probe before it (CPU ms of a fixed pure-Python loop; lower "
        "is faster); the p50 at the lowest rate, where requests hardly overlap; and, during the window at "
        f"{TARGET_RATE}/s, the share of CPU time the hypervisor stole from this virtual machine "
        "(`/proc/stat`) and the CPU milliseconds the services and nats-server spent per checkout (the same "
        "work, so more means a slower host).\n\n"
        f"| repetition | host speed ms | p50 ms at {lowest:g}/s | steal % at {TARGET_RATE}/s "
        f"| CPU ms per checkout at {TARGET_RATE}/s | p99 ms at {TARGET_RATE}/s |\n|--:|--:|--:|--:|--:|--:|\n"
        + "\n".join(rows)
    )


def report(
    serial: Serial,
    repetitions: Sequence[Repetition],
    seconds: float,
    command: str,
    products: int,
    database: str = "sqlite",
    keep_awake: bool = False,
    mesh: bool = False,
) -> str:
    header = (
        "| offered rate (checkouts/s) | completed/s (median) | completed/offered (all runs) | errors "
        "| p50 ms (median) | p99 ms (median) | p99 ms (runs min-max) | max ms | runs sustained |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rates = sorted({r.rate for rep in repetitions for r in rep.results})
    runs = {rate: [r for rep in repetitions for r in rep.results if r.rate == rate] for rate in rates}
    # A rate counts as sustained only if every repetition sustained it (a rate cut short counts as not).
    sustained = [rate for rate in rates if len(runs[rate]) == len(repetitions) and all(r.sustained for r in runs[rate])]
    if not sustained:
        saturation = "below the lowest rate measured"
    elif max(sustained) == max(rates):
        # Nothing failed, so the real saturation lies higher: say so rather than report the cap as the limit.
        saturation = f"at least {max(sustained):g} checkouts/s (the highest rate run; offer higher --rates to find it)"
    else:
        saturation = f"{max(sustained):g} checkouts/s"
    at_target = runs.get(TARGET_RATE, [])
    if not at_target:
        verdict = f"not measured at {TARGET_RATE}/s"
    else:
        p99s = [r.percentile(0.99) for r in at_target]
        met = "met" if _median(p99s) <= TARGET_P99_MS else "NOT met"
        within = sum(p99 <= TARGET_P99_MS for p99 in p99s)
        verdict = (
            f"p99 at {TARGET_RATE}/s = {_median(p99s):.1f} ms, median of {len(p99s)} runs "
            f"({_span(p99s)}; {within} of {len(p99s)} within {TARGET_P99_MS:g} ms). "
            f"Target ≤ {TARGET_P99_MS:g} ms: {met}"
        )
    return (
        "\n\n".join(
            [
                HEADINGS[database, keep_awake, mesh],
                f"Command: `{command}` ({seconds:g} s per rate and repetition).",
                *(
                    [
                        "A SCHED_IDLE busy loop ran on every CPU throughout, so that no vCPU halted: the "
                        "hypervisor's wake-up latency (steal) is kept out, as on dedicated cores."
                    ]
                    if keep_awake
                    else []
                ),
                *(
                    [
                        "Each service has its own database on one throwaway PostgreSQL server started by the "
                        f"benchmark (PostgreSQL {postgres_bin().parent.name}, "
                        "`fsync=off`: it is thrown away), on the same cores as everything else."
                    ]
                    if database == "postgresql"
                    else []
                ),
                *(
                    [
                        "Every service behind its own Envoy sidecar (`make run MESH=envoy`, docs/mesh.md): the load "
                        "generator calls orders' sidecar over mutual TLS as the gateway, and each of orders' calls "
                        "goes through orders' sidecar and the callee's, two TLS hops more per call; the sidecars' "
                        "CPU is in the table beside their services'. It lists the products through catalog's "
                        "sidecar as the gateway too, and stocks them on inventory's own socket, past its sidecar: "
                        "the mesh admits no caller to SetStock, which no service calls."
                    ]
                    if mesh
                    else []
                ),
                f"Each checkout buys one unit of one of {products} catalog product(s), taken in turn, "
                "so orders' price cache misses once per product and time to live, as in a shop.",
                f"Machine: {machine()}.",
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
                serial_report(serial),
                phases(repetitions),
                header + "\n" + "\n".join(summary_line(rate, runs[rate]) for rate in rates),
                "Saturation (highest rate sustained in every repetition: ≥ 95 % completed, no errors, p99 < 1 s): "
                f"**{saturation}**. {verdict}.",
                *([failures_told(runs)] if any(r.failures for rs in runs.values() for r in rs) else []),
                "Latency is measured from each request's scheduled send time (open loop), so it includes queueing "
                "once the system falls behind. The load generator, the four services"
                + (", their sidecars" if mesh else "")
                + " and nats-server share the machine's cores.",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="offered rates, checkouts/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--serial", type=int, default=200, help="checkouts placed one at a time, for CPU per checkout")
    parser.add_argument("--repeats", type=int, default=3, help="times every rate is run (figures: medians)")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="SQLite files (as `make run`) or a throwaway PostgreSQL server from the installed binaries, "
        "with its own section in the document",
    )
    parser.add_argument(
        "--products",
        type=int,
        default=0,
        help="buy the first N catalog products in turn (0: all of them; 1: every checkout the same product)",
    )
    parser.add_argument(
        "--keep-awake",
        action="store_true",
        help="run a SCHED_IDLE busy loop per CPU so that no vCPU halts (measures the code without the "
        "hypervisor's wake-up latency; its own section in the document)",
    )
    parser.add_argument(
        "--mesh",
        action="store_true",
        help="every service behind its Envoy sidecar (`make run MESH=envoy`; its own section in the document)",
    )
    parser.add_argument("--write", type=Path, default=None, help="update this benchmarks document")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates {args.rates}: give the rates as numbers, comma-separated (10,25,50)")
    key = (args.database, args.keep_awake, args.mesh)
    if key not in HEADINGS:
        parser.error("--mesh is measured on SQLite without --keep-awake only")
    print("| offered | completed/s | completed/offered | errors | p50 ms | p99 ms | max ms | sustained |")
    with vcpus_kept_awake(args.keep_awake):
        serial, repetitions, products = asyncio.run(
            bench(rates, args.seconds, args.warmup, args.serial, args.repeats, args.database, args.products, args.mesh)
        )
    command = (
        (
            f".venv/bin/python tests/bench/bench_checkout.py --rates {args.rates} --seconds {args.seconds:g} "
            f"--serial {args.serial} --repeats {args.repeats}"
        )
        + (" --database postgresql" if args.database == "postgresql" else "")
        + (f" --products {args.products}" if args.products else "")
        + (" --keep-awake" if args.keep_awake else "")
        + (" --mesh" if args.mesh else "")
    )
    text = report(serial, repetitions, args.seconds, command, products, args.database, args.keep_awake, args.mesh)
    print(text)
    if args.write:
        write_section(args.write, HEADINGS[key], text)


if __name__ == "__main__":
    main()
