"""gRPC server bootstrap: servicers, health (overall and per service), reflection, metrics, tracing,
error mapping, limits, keepalive, and graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

# typeshed's stubs of grpcio-health-checking predate List (grpc.health.v1's third method).
from grpc_health.v1.health_pb2 import HealthListRequest, HealthListResponse  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from shopmesh_chassis.config import ConfigError, ServiceSettings, StartupFailed, host_port
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server_interceptor import ChassisServerInterceptor

log = logging.getLogger("shopmesh.server")

# The request metadata a server takes (gRPC's defaults: 8 KiB, above which it refuses calls at random, and
# 16 KiB, above which it refuses them all, with RESOURCE_EXHAUSTED). The HTTP/JSON edge forwards a client's
# headers as metadata, up to its own limit (shopmesh_platform.http_api.MAX_REQUEST_HEADERS_KIB, 60 KiB) plus the
# transcoder's copy of the path and query: with gRPC's defaults a long query string was refused as if the
# client were rate limited (429). Above twice the edge's limit, so whatever the edge lets through is served.
MAX_METADATA_BYTES = 256 * 1024

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_LAST_WORDS = frozenset({NOT_SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN})


class _Telling:
    """A Watch call as the library's Watch writes to it, saying whether the last status it wrote is one that a
    draining server never changes: NOT_SERVING, or SERVICE_UNKNOWN for a name it does not serve."""

    def __init__(self, context: Any, told: asyncio.Event) -> None:
        self._context = context
        self._told = told

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        if response.status not in _LAST_WORDS:
            # SERVICE_UNKNOWN for a name registered after the Watch opened was no last word: it is served now.
            # Cleared before the write, whose message the watcher can have before the write returns: cleared
            # after, a drain asking then ended the stream on the old SERVICE_UNKNOWN, NOT_SERVING never sent.
            self._told.clear()
        await self._context.write(response)
        if response.status in _LAST_WORDS:
            self._told.set()


class _HealthServicer(HealthServicer):
    """grpcio-health-checking's servicer, whose Watch streams the drain can end (`end_watches`).

    The library's Watch never returns, not even after `enter_graceful_shutdown`'s NOT_SERVING: an open one (a
    client-side health checker, a mesh's probe) held every drain for the whole grace, server.stop's wait for
    its calls to end. It offers no way to end them, so each runs here as a task of its own, ended when the
    drain asks, once NOT_SERVING (or SERVICE_UNKNOWN) has gone out on it: the stream then ends with OK and the
    watcher, told the server is going, watches another."""

    # The library's own statuses by name, which its Check answers from (typeshed's stubs leave it out).
    _server_status: Mapping[str, int]

    def __init__(self) -> None:
        super().__init__()
        self._ending = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        told = asyncio.Event()
        # The library's Watch only writes to its call: _Telling is all of the context it uses.
        watching = asyncio.ensure_future(super().Watch(request, cast(Any, _Telling(context, told))))
        ending = asyncio.ensure_future(self._until_told_to_end(told))
        try:
            await asyncio.wait((watching, ending), return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # a failed write: the library's own exception, as without this wrapper
        finally:
            for task in (watching, ending):
                task.cancel()
            await asyncio.gather(watching, ending, return_exceptions=True)

    async def List(self, request: HealthListRequest, context: Any) -> HealthListResponse:
        """Every name with a status (the server's own, "", and each service's), as Check would answer it.

        The library implements Check and Watch only: its List was the generated base's, UNIMPLEMENTED and
        NotImplementedError, which the interceptor answered INTERNAL, a server error any caller could cause.
        No RESOURCE_EXHAUSTED cap: a server registers a handful of names, never a client's."""
        return HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )

    async def _until_told_to_end(self, told: asyncio.Event) -> None:
        await self._ending.wait()
        await told.wait()

    def end_watches(self) -> None:
        """End every open Watch stream once it has sent NOT_SERVING (SERVICE_UNKNOWN for a name not served), and
        each one opened later likewise."""
        self._ending.set()


def port_taken(bind: str) -> str:
    """What a server whose TCP port (host:port) another process holds says as it exits: the local launcher
    starts it again when it reads this and finds the port free (shopmesh_platform.stack)."""
    return f"cannot listen on {bind} (GRPC_HOST / GRPC_PORT): is another process using it?"


def _bind_errors(host: str, port: int) -> tuple[int, list[OSError]]:
    """How many addresses `host` resolves to, and why each of those that cannot take `port` now cannot (binding
    there as a server would); raises ConfigError naming GRPC_HOST when it resolves to none."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"invalid configuration: GRPC_HOST={host!r}: no address to listen on ({exc.strerror})"
        ) from None
    failures: list[OSError] = []
    for family, kind, protocol, _, address in addresses:
        try:
            # In the try: a family the kernel has switched off (IPv6 on some nodes) fails at the socket.
            with socket.socket(family, kind, protocol) as probe:
                # As servers bind: a stopped server's connections in TIME_WAIT do not hold the port.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            failures.append(exc)
    return len(addresses), failures


def check_listen_host(host: str) -> None:
    """Raise ConfigError naming GRPC_HOST when no server could ever listen there: a name that does not resolve,
    or one whose every address is not this machine's. grpcio listens when one of a name's addresses binds (a
    `localhost` whose ::1 the node lacks, an IPv6 address still tentative), and falls back to 0.0.0.0 for `::`
    where IPv6 is off, so those pass. Before grpcio binds, which says only "Failed to bind" (and logs its own
    line), the same for a port another process holds, which may be gone next time."""
    addresses, failures = _bind_errors(host, 0)
    if failures and len(failures) == addresses and all(f.errno == errno.EADDRNOTAVAIL for f in failures):
        raise ConfigError(f"invalid configuration: GRPC_HOST={host!r}: not an address of this machine")


def bind_failure(host: str, port: int) -> StartupFailed:
    """Why a server could not listen on host:port, whose host check_listen_host let through: another process
    on the port says port_taken's line, which the local launcher acts on; anything else says what binding there
    found."""
    bind = host_port(host, port)
    _, failures = _bind_errors(host, port)
    if any(failure.errno == errno.EADDRINUSE for failure in failures):
        return StartupFailed(port_taken(bind))
    why = f": {failures[0].strerror}" if failures else ""
    return StartupFailed(f"cannot listen on {bind} (GRPC_HOST / GRPC_PORT){why}")


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer and how to add it: `register` is the generated `add_XServicer_to_server`."""

    descriptor: ServiceDescriptor
    servicer: object
    register: Callable[[Any, grpc.aio.Server], None]


class ChassisServer:
    def __init__(
        self,
        settings: ServiceSettings,
        bindings: Sequence[ServiceBinding],
        *,
        tracer_provider: TracerProvider | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.bindings = tuple(bindings)
        # A service's own metrics object when it has event metrics to serve too (see metrics.py).
        self.metrics = metrics or ServerMetrics()
        self.health = _HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None
        self.interceptor = ChassisServerInterceptor(
            self.metrics,
            settings.resolved_error_domain,
            tracer_provider,
            max_in_flight=settings.handler_limit,
            follows_trace_decision_of=settings.trace_decision_callback(),
        )
        interceptors: list[grpc.aio.ServerInterceptor] = [self.interceptor]
        ms = 1000
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time_seconds * ms)),
                ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout_seconds * ms)),
                ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_seconds * ms)),
                ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_seconds * ms)),
                # What one connection may hold open (config.py); a call past it waits in its client, unserved.
                ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
                # gRPC core's server counts by default the streams still allocated (ended on the wire, not yet
                # freed) against that limit and refuses new ones past it (RST_STREAM REFUSED_STREAM), while its
                # clients count only open streams and send them: a burst on one connection failed UNAVAILABLE
                # (150 x 3 concurrent calls: 28 refused). Off, a stream past the limit of open ones is still
                # refused, which a client keeping to the limit never sends: gRPC core's own test of queueing
                # past MAX_CONCURRENT_STREAMS sets it so. Handlers still ending after their client reset their
                # calls (HTTP/2 rapid reset) no longer count here: GRPC_MAX_CONCURRENT_RPCS bounds those (bounded
                # by default for this: config.py).
                ("grpc.http.overload_protection", 0),
                (
                    "grpc.max_connection_age_grace_ms",
                    int(settings.grpc_max_connection_age_grace_seconds * ms),
                ),
                # Accept client keepalive pings as often as our own clients send them.
                ("grpc.http2.min_ping_interval_without_data_ms", 10 * ms),
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.grpc_max_receive_message_bytes),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ],
        )
        for binding in self.bindings:
            binding.register(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *(b.descriptor.full_name for b in self.bindings),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )

    @property
    def address(self) -> str:
        """Where clients reach the server: `unix:<path>` on a Unix socket (GRPC_UNIX_SOCKET), else host:port."""
        if self.settings.grpc_unix_socket:
            return self.settings.grpc_listen_address
        return host_port(self.settings.grpc_host, self.port)

    async def start(self) -> None:
        """Bind, start serving, and report SERVING for the server and each service."""
        bind = self.settings.grpc_listen_address
        # A host no server could listen on is a configuration error, found before grpcio tries it. Another
        # process on the port (a replica left running, a host port taken): this start cannot go on, the next
        # may. grpcio raises RuntimeError itself ("Failed to bind"), or returns port 0. On a Unix socket it
        # fails only when the folder is missing or not writable: it replaces a socket file that is there (a
        # leftover of a killed process, or a running copy's: the launcher checks for that first).
        if not self.settings.grpc_unix_socket:
            check_listen_host(self.settings.grpc_host)
        try:
            bound = self.server.add_insecure_port(bind)
        except RuntimeError:
            bound = 0
        if bound == 0:
            if self.settings.grpc_unix_socket:
                raise StartupFailed(
                    f"cannot listen on {bind} (GRPC_UNIX_SOCKET): does its folder exist, writable by this user?"
                )
            raise bind_failure(self.settings.grpc_host, self.settings.grpc_port)
        # No TCP port on a Unix socket (grpcio answers 1 there).
        self.port = 0 if self.settings.grpc_unix_socket else bound
        if self.settings.metrics_port >= 0:
            address = host_port(self.settings.metrics_host, self.settings.metrics_port)
            try:
                self.metrics_port = self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            except OSError as exc:
                raise StartupFailed(
                    f"cannot serve metrics on {address} (METRICS_HOST / METRICS_PORT): {exc.strerror or exc}"
                ) from None
            self.metrics.count_tasks()
        await self.server.start()
        # A signal during grpc's start (serve installs the drain before it) or between these awaits: the drain
        # has set NOT_SERVING and may have stopped the server already, so SERVING and "serving" would be untrue.
        for service in [*(b.descriptor.full_name for b in self.bindings), ""]:
            if self._draining is not None:
                break
            await self.health.set(service, SERVING)
        if self._draining is not None:
            log.info("started after the drain began: not serving")
            return
        log.info(
            "serving %s on %s",
            ", ".join(b.descriptor.full_name for b in self.bindings),
            self.address,
            extra={
                "grpc_port": self.port,
                "metrics_port": self.metrics_port,
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_drain, sig)

    def request_drain(self, sig: signal.Signals | None = None) -> None:
        """Start draining once; later signals are ignored (the grace period bounds the wait)."""
        if self._draining is None:
            if sig is not None:
                log.info("received %s, draining", sig.name)
            self._draining = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """NOT_SERVING for drain_delay, then refuse new calls and let in-flight ones finish (grace)."""
        await self.health.enter_graceful_shutdown()
        if self.settings.drain_delay_seconds:
            await asyncio.sleep(self.settings.drain_delay_seconds)
        # Past the delay the watchers have heard NOT_SERVING; open, their streams would hold the stop for the
        # whole grace, as a call in flight does.
        self.health.end_watches()
        grace = self.settings.shutdown_grace_seconds
        stopping = asyncio.ensure_future(self.server.stop(grace))
        # grpc cancels what is still running when the grace ends ("Cancelling all calls": the callers get
        # UNAVAILABLE) and says so only at debug level, and the cancelled handlers see their caller's
        # cancellation: without this line "stopped" reads the same whether the stop was clean or cut calls off.
        # Read as the grace ends, before the cancelled calls unwind and leave the gauge.
        try:
            done, _ = await asyncio.wait({stopping}, timeout=grace)
            if not done:
                self._log_cut_off(grace)
            await stopping
        except asyncio.CancelledError:
            stopping.cancel()  # as the plain `await` of the stop was: a drain cancelled does not stop on alone
            raise
        self.metrics.close()
        log.info("stopped")
        self._stopped.set()

    def _log_cut_off(self, grace: float) -> None:
        calls = self.metrics.in_flight()
        if not calls:
            return  # only open streams held the stop (nothing of shopmesh's own API)
        count = sum(calls.values())
        methods = ", ".join(f"{method} ({n})" for method, n in sorted(calls.items()))
        log.warning(
            "the shutdown grace (%gs) ended with %d calls in flight: cancelled, their callers get UNAVAILABLE: %s",
            grace,
            count,
            methods,
            extra={"calls_cut_off": count, "grpc_methods": sorted(calls)},
        )

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
