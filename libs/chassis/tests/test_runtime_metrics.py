"""Every server's /metrics carries its process' and runtime's series (prometheus-client's own collectors, and the
chassis' garbage-collection pauses) and the number of its event loop's tasks, counted by the loop and read by the
scrape's thread."""

from __future__ import annotations

import asyncio
import gc
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shopmesh_chassis.metrics import GC_PAUSES, ServerMetrics, add_runtime_collectors
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import binding

from .conftest import sample_settings

RUNTIME_SERIES = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_collections_total",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "shopmesh_python_gc_pause_seconds_bucket",
    "shopmesh_python_gc_pause_seconds_count",
    "shopmesh_python_gc_pause_seconds_sum",
}


def scraped(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each series name on the endpoint with its samples' labels and values."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value_of(series: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    [(_labels, value)] = series[name]
    return value


def names_in(registry: CollectorRegistry) -> set[str]:
    return {sample.name for family in registry.collect() for sample in family.samples}


async def test_a_servers_metrics_show_its_memory_cpu_descriptors_garbage_collector_and_tasks() -> None:
    async with serve_in_process(sample_settings(metrics_port=0), [binding()]) as server:
        assert server.metrics_port
        series = await asyncio.to_thread(scraped, server.metrics_port)

    assert series.keys() >= RUNTIME_SERIES
    assert value_of(series, "process_resident_memory_bytes") > 0
    assert 0 < value_of(series, "process_open_fds") < value_of(series, "process_max_fds")
    assert {labels["generation"] for labels, _value in series["python_gc_collections_total"]} == {"0", "1", "2"}
    # Counted as the server starts, before any scrape: at least the counting task itself.
    assert value_of(series, "shopmesh_asyncio_tasks") >= 1


def test_a_registry_the_caller_passes_gets_the_chassis_series_and_the_runtime_ones_only_when_added() -> None:
    passed = ServerMetrics(CollectorRegistry()).registry
    assert "shopmesh_asyncio_tasks" in names_in(passed)
    assert not RUNTIME_SERIES & names_in(passed)
    add_runtime_collectors(passed)
    assert names_in(passed) >= RUNTIME_SERIES


async def test_the_asyncio_task_count_rises_with_the_loops_tasks_and_falls_back_when_they_end() -> None:
    metrics = ServerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    metrics.count_tasks(interval_seconds=0.01)
    go = asyncio.Event()
    try:

        async def tasks_now() -> float:
            return value_of(await asyncio.to_thread(scraped, port), "shopmesh_asyncio_tasks")

        before = await tasks_now()
        waiting = [asyncio.create_task(go.wait()) for _ in range(50)]

        async def counted_the_50() -> float | None:
            count = await tasks_now()
            return count if count >= before + 50 else None

        await eventually(counted_the_50, "the 50 waiting tasks counted")
        go.set()
        await asyncio.gather(*waiting)

        async def back_down() -> float | None:
            count = await tasks_now()
            return count if count <= before else None

        await eventually(back_down, "the count back to what it was once the 50 ended")
    finally:
        go.set()
        metrics.close()


def of_generation_2(series: dict[str, list[tuple[dict[str, str], float]]], suffix: str) -> float:
    [value] = [value for labels, value in series[f"{GC_PAUSES.name}_{suffix}"] if labels["generation"] == "2"]
    return value


async def test_a_full_garbage_collection_is_counted_in_the_scraped_pause_histogram_of_generation_2() -> None:
    async with serve_in_process(sample_settings(metrics_port=0), [binding()]) as server:
        assert server.metrics_port
        before = await asyncio.to_thread(scraped, server.metrics_port)
        gc.collect(2)
        after = await asyncio.to_thread(scraped, server.metrics_port)

    # At least one: the scrape's own allocations may set off a full collection of their own.
    assert of_generation_2(after, "count") >= of_generation_2(before, "count") + 1
    assert of_generation_2(after, "sum") > of_generation_2(before, "sum")
