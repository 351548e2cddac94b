"""Process entry points: set up logs and traces, serve until a signal, run shutdown hooks, exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn

import uvloop
from opentelemetry.sdk.trace import TracerProvider

from shopmesh_chassis.config import ConfigError, RuntimeSettings, ServiceSettings, load_settings
from shopmesh_chassis.logs import configure_logging
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("shopmesh.app")

ShutdownHook = Callable[[], Awaitable[None]]


def setup_observability(settings: ServiceSettings) -> TracerProvider:
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    return configure_tracing(
        settings.service_name, settings.otel_exporter_otlp_endpoint, settings.otel_traces_sampler_ratio
    )


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive into the collector's permanent generation; returns
    how many were moved.

    Why: a service starts with ~50,000-100,000 objects (modules, protobuf descriptors, SQLAlchemy
    tables and compiled statements) that live as long as the process. Every full collection walked all
    of them: under load each service paused its event loop for 50-170 ms every 20 s or so, the largest
    part of the checkout's p99 (docs/benchmarks.md). Frozen, they are never walked again. The price:
    a frozen object that later becomes part of an unreachable cycle is never freed, and startup objects
    hardly ever die.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(
    settings: ServiceSettings,
    bindings: Sequence[ServiceBinding],
    *,
    tracer_provider: TracerProvider | None = None,
    on_shutdown: Sequence[ShutdownHook] = (),
    metrics: ServerMetrics | None = None,
) -> None:
    """Serve `bindings` until SIGTERM/SIGINT, drain, then run `on_shutdown` hooks in order. `metrics`: the
    service's own, when its relay or consumers record into it (else the server makes its own)."""
    server = ChassisServer(settings, bindings, tracer_provider=tracer_provider, metrics=metrics)
    # Before the port opens: the one full collection must not pause calls.
    frozen = freeze_startup_heap()
    log.info("startup heap frozen: %d objects", frozen, extra={"frozen_objects": frozen})
    await server.start()
    server.install_signal_handlers()
    try:
        await server.wait_stopped()
    finally:
        for hook in on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        if tracer_provider is not None:
            shutdown_tracing(tracer_provider)


def run_on_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to completion on the configured event loop (EVENT_LOOP, uvloop by default)."""
    try:
        event_loop = load_settings(RuntimeSettings).event_loop
    except ConfigError:
        main.close()  # never awaited: say so quietly rather than with a RuntimeWarning
        raise
    if event_loop == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> NoReturn:
    """Run a service's async main on the configured event loop; bad configuration exits 2 with one line
    on stderr."""
    try:
        run_on_event_loop(main())
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
