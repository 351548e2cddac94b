"""Process entry points: set up logs and traces, serve until a signal, run shutdown hooks, exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn

import uvloop
from opentelemetry.sdk.trace import TracerProvider

from shopmesh_chassis.config import (
    ConfigError,
    MigratedOnly,
    RuntimeSettings,
    ServiceSettings,
    StartupFailed,
    load_settings,
)
from shopmesh_chassis.interrupts import exit_status
from shopmesh_chassis.logs import configure_logging
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("shopmesh.app")

ShutdownHook = Callable[[], Awaitable[None]]

# Each hook after the first is promised this much of SHUTDOWN_HOOKS_BUDGET_SECONDS, held back from the hooks
# before it: one that hangs (a NATS drain that never ends) still leaves the `database.dispose` after it time
# to close its connections, and together the hooks never outlast the budget, which the Helm chart's
# arithmetic counts on (drain delay + grace + hooks + span export < terminationGracePeriodSeconds). When
# there are more hooks than the budget has seconds, they share it equally instead.
HOOK_RESERVE_SECONDS = 1.0
# How long a hook cut off may take to unwind (a rollback in its `finally`): the last part of its own time,
# for it is cancelled that long before its time is up (half its time when that is shorter), so the hooks
# after it keep their whole reserve however slowly it unwinds. A hook may also swallow the cancellation
# (`suppress(CancelledError)` around awaiting a task of its own; the chassis' `tasks.cancel_and_wait` does
# not) and carry on into another wait: it is left behind at the end of its time.
HOOK_UNWIND_SECONDS = 0.5
# The exit status of a process whose shutdown hooks were cut off (bad configuration: 2). Non-zero so that
# whoever stopped it sees it without reading its logs (a supervisor, docker, systemd, a test);
# Kubernetes records it for a pod it is deleting but neither restarts nor alerts on it.
EXIT_SHUTDOWN_INCOMPLETE = 1


class ShutdownIncomplete(Exception):
    """Raised by `serve`, after the spans' export, when shutdown hooks were cut off at their budget."""


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
    """Serve `bindings` until SIGTERM/SIGINT, drain, run `on_shutdown` hooks in order within
    SHUTDOWN_HOOKS_BUDGET_SECONDS, export the last spans; raises ShutdownIncomplete when a hook was cut off.
    `metrics`: the service's own, when its relay or consumers record into it (else the server makes its own)."""
    if settings.migrate_only:
        # Reached only by a service that never called `migrate`: exiting 0 would pass for a migration done.
        raise ConfigError(
            f"invalid configuration: MIGRATE_ONLY is true but {settings.service_name} owns no database to migrate"
        )
    server = ChassisServer(settings, bindings, tracer_provider=tracer_provider, metrics=metrics)
    # Before the port opens: the one full collection must not pause calls.
    frozen = freeze_startup_heap()
    log.info("startup heap frozen: %d objects", frozen, extra={"frozen_objects": frozen})
    # Before the start, not after it: grpc's start accepts calls before it returns, and a signal there cancelled
    # the start (the handlers of `run`), so the calls it had accepted were cancelled with the event loop and no
    # hook ran. From here a signal drains, whenever it comes.
    server.install_signal_handlers()
    await server.start()
    try:
        await server.wait_stopped()
    finally:
        cut_off = await run_shutdown_hooks(on_shutdown, settings.shutdown_hooks_budget_seconds)
        if tracer_provider is not None:
            shutdown_tracing(tracer_provider)
    if cut_off:
        raise ShutdownIncomplete(f"shutdown hooks cut off at SHUTDOWN_HOOKS_BUDGET_SECONDS: {', '.join(cut_off)}")


def hook_name(hook: ShutdownHook) -> str:
    """`Database.dispose`, `_main.<locals>.stop_background`: enough for a log line to lead to the code."""
    return str(getattr(hook, "__qualname__", None) or repr(hook))


async def run_shutdown_hooks(hooks: Sequence[ShutdownHook], budget_seconds: float) -> list[str]:
    """Run `hooks` in order within `budget_seconds` altogether. A hook that overruns its time (what is left of
    the budget, less HOOK_RESERVE_SECONDS for each hook after it) is cancelled and logged, in time to unwind
    within it, and the rest still run. Returns the names of the hooks cut off."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_seconds
    reserve = min(HOOK_RESERVE_SECONDS, budget_seconds / len(hooks)) if hooks else 0.0
    cut_off: list[str] = []
    for index, hook in enumerate(hooks):
        hooks_after = len(hooks) - index - 1
        seconds = max(deadline - loop.time() - hooks_after * reserve, 0.0)
        if not await _run_hook(hook, seconds):
            cut_off.append(hook_name(hook))
    return cut_off


async def _run_hook(hook: ShutdownHook, seconds: float) -> bool:
    """Run `hook` for at most `seconds`: cancel it HOOK_UNWIND_SECONDS before they are up (half of them at
    most), and leave it behind if it has not ended by then. False when it was cut off; a hook that fails is
    logged, and counts as finished."""
    name = hook_name(hook)
    task = asyncio.create_task(_call(hook), name=f"shutdown hook {name}")
    unwind = min(HOOK_UNWIND_SECONDS, seconds / 2)
    await asyncio.wait({task}, timeout=seconds - unwind)
    if task.done():
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("shutdown hook %s failed", name, exc_info=error, extra={"hook": name})
        return True
    log.error(
        "shutdown hook %s did not finish within the %.1f s it had of SHUTDOWN_HOOKS_BUDGET_SECONDS: cancelled, "
        "with %.1f s of them left to unwind",
        name,
        seconds,
        unwind,
        extra={"hook": name, "hook_seconds": round(seconds, 3)},
    )
    task.cancel()
    # Whenever it ends, even after the hooks (a hook left behind ends when the event loop closes): a failure
    # is logged by name rather than as asyncio's "Task exception was never retrieved".
    task.add_done_callback(lambda done: _log_failure_after_cut_off(name, done))
    await asyncio.wait({task}, timeout=unwind)
    if not task.done():
        log.warning("shutdown hook %s ignored its cancellation; the hooks after it go on", name, extra={"hook": name})
    return False


def _log_failure_after_cut_off(name: str, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("shutdown hook %s failed after it was cut off", name, exc_info=error, extra={"hook": name})


async def _call(hook: ShutdownHook) -> None:
    # In the task: a hook that raises before returning its awaitable fails like one that raises inside it.
    await hook()


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
    on stderr, a start that failed for now (StartupFailed) exits 1 with one log line, the end of the migrations
    under MIGRATE_ONLY (MigratedOnly) exits 0 with one log line, shutdown hooks cut off
    at their budget exit 1 (EXIT_SHUTDOWN_INCOMPLETE), SIGTERM or SIGINT before the server took over its
    signals (`serve`, just before it starts the server: drain, exit 0) stops the start and exits 128 + the
    signal's number, as a shell reports it."""
    stopped_by: list[signal.Signals] = []
    coroutine = main()
    try:
        run_on_event_loop(_stopped_by_signal(coroutine, stopped_by))
    except ConfigError as exc:
        coroutine.close()  # never started when the event loop's own setting is bad
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)
    except StartupFailed as exc:
        log.error("%s", exc)
        sys.exit(1)
    except MigratedOnly as exc:
        log.info("%s", exc)
        sys.exit(0)
    except ShutdownIncomplete as exc:
        log.error("exiting with status %d: %s", EXIT_SHUTDOWN_INCOMPLETE, exc)
        sys.exit(EXIT_SHUTDOWN_INCOMPLETE)
    if stopped_by:
        sys.exit(exit_status(stopped_by[0]))
    sys.exit(0)


async def _stopped_by_signal(main: Coroutine[Any, Any, None], stopped_by: list[signal.Signals]) -> None:
    """Run `main`, cancelled by SIGTERM or SIGINT until `serve` installs the server's own handlers (which
    replace these, and drain).

    In a container the interpreter is PID 1 (the images' exec-form entrypoint), and the kernel drops a signal
    PID 1 has no handler for: a pod deleted while it started (a rollout, a scale-in, a node drain), migrating
    or waiting for another replica's migration lock, ignored its SIGTERM and sat out the whole termination
    grace period until SIGKILL. Ctrl-C during `make run`'s start printed a KeyboardInterrupt traceback."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def stop(sig: signal.Signals) -> None:
        if not stopped_by and task is not None:
            stopped_by.append(sig)
            log.info("received %s while starting: stopping", sig.name)
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    # One that came before these handlers replaced early_signals' ended the process there and then.
    try:
        await main
    except asyncio.CancelledError:
        if not stopped_by:
            raise
