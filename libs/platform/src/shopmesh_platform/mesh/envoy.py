"""Envoy bootstrap configuration for one service's sidecar in the local mesh.

Each sidecar has, like an Istio or Linkerd proxy in a pod:

- an **inbound** listener on the service's published address (what callers and tools dial). It
  terminates mutual TLS: the caller must present an SVID of the local authority, and the RBAC filter
  admits the SPIFFE identity of each service the topology says calls this one to the methods it calls
  (topology.METHODS_CALLED, as the charts' policy on Kubernetes), and any identity to grpc.health.v1;
  anything else is answered by Envoy itself with PERMISSION_DENIED (trailers-only, as every error in shopmesh). The
  edge service (the gateway) takes plaintext from clients instead, as behind an ingress gateway. It
  forwards to the service over plaintext HTTP/2 on the service's Unix socket, in a folder only the user
  can open (the service has no TCP port of its own), telling it who called in `x-forwarded-client-cert`.
  The edge's sidecar has a second inbound listener, for the HTTP edge alone, on a Unix socket in that
  folder: it passes the edge's `x-forwarded-for` on as the edge wrote it (see `edge_socket`).
- one **outbound** listener per service it calls, on loopback (the service finds it in
  `<CALLEE>_ADDRESS`, as it would find a Kubernetes Service's name). It originates mutual TLS to the
  callee's inbound listener, presenting this service's SVID and accepting only the callee's SPIFFE
  identity, and retries what is safe to retry for any method: a connection that failed or a stream
  that was refused or reset before the request went out. The call's own deadline (`grpc-timeout`) is
  its timeout; Envoy adds none. Its gRPC filter counts each callee's calls by gRPC status (a failure
  answered with HTTP 200, as gRPC answers every call, is no 5xx), each track of a canary apart.
- an **admin** interface on a Unix socket (`admin_socket`, mode 0600, in the folder only the user can open):
  over TCP any local user could set its faults, stop it (`/quitquitquit`) or read its configuration.
- a **Prometheus** listener on loopback (`SidecarPorts.prometheus`) that serves `GET /stats/prometheus` from the
  admin interface and nothing else of it, as Istio's proxies serve 15090.

The service's own client keeps its gRPC retries, deadlines and circuit breaker: the mesh adds
transport security and policy, not a second retry budget for what the service already retries.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from shopmesh_chassis.local_stack import make_private_folder, write_private_file
from shopmesh_chassis.server import MAX_METADATA_BYTES

from ..topology import SidecarPorts
from .identity import MeshIdentities, spiffe_id

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECTIONS_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_HEAP_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"
_SCALE_TIMERS = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"
_OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
# The cluster the spans go to.
TRACES_CLUSTER = "traces"
_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
# What the Prometheus listeners (a sidecar's, the HTTP edge's) serve of the admin interface, and only that.
METRICS_PATH = "/stats/prometheus"
# How long a Prometheus listener keeps a connection nobody uses (Envoy's default: an hour): past a scrape
# interval (Prometheus' default is a minute), so that a scraper keeps its connection between scrapes, and no
# longer, so that a gone scraper's do not pile up.
METRICS_IDLE_TIMEOUT = "75s"
# A Prometheus listener's own bound on its connections (Envoy's runtime limit of one listener), in place of the
# cap on the calls' (or the edge's public) connections, which it is outside of: a scraper's connection or two,
# and the edge's kubelet probes, a connection each. Past it they count in its `downstream_cx_overflow`.
METRICS_MAX_CONNECTIONS = 64
_METRICS_LISTENER = "metrics"
# The cluster of a sidecar's own admin interface (its Unix socket), for its Prometheus listener.
ADMIN_CLUSTER = "admin"
# The runtime key prefix of an outbound route's split to a canary: `<prefix>.<cluster>` is that track's weight
# (split_runtime_keys), set at run time through the admin interface as the faults are (`mesh.split`); without
# one, the weight the launcher was started with.
SPLIT_RUNTIME_PREFIX = "split"

# Safe for every method, idempotent or not: the request never reached the callee.
OUTBOUND_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
OUTBOUND_RETRIES = 2
CONNECT_TIMEOUT = "1s"
# The most headers a message may have through a sidecar, each way (Envoy's default is 100: a call of more, which
# the service takes, was reset, INTERNAL to a gRPC client and a 503 retried in vain through the HTTP edge). gRPC
# counts each metadata entry as its name, its value and 32 bytes (RFC 7541's entry size) against
# MAX_METADATA_BYTES, so no call within that can have more entries than this: the size, not the count, is the
# services' limit, and the sidecars keep it.
MAX_HEADERS_COUNT = MAX_METADATA_BYTES // 32
# The calls (HTTP/2 streams) a cluster may have open at once, and waiting for a connection (Envoy's defaults,
# 1024 each, stated): past them Envoy answers 503 (UNAVAILABLE, "upstream_rq_pending_overflow") and makes no
# call, which a caller retries as any unavailable callee. A sidecar carries one service's calls, so this bounds
# what a flood of callers can pile onto it, the inbound app cluster's included; the services bound their own
# concurrency far below.
MAX_REQUESTS = 1024
MAX_PENDING_REQUESTS = 1024
# How many retries a cluster may have under way at once (Envoy's default is 3: with a callee's sidecar gone,
# every call past the third got no retry, upstream_rq_retry_overflow, and failed at once though the route
# promises OUTBOUND_RETRIES of what never reached the callee). A call has at most one retry under way, so as
# many as calls may be open: no call loses its retries to others'. Nothing is amplified by it: the route
# retries only what never reached the callee, and the calls themselves are bounded by MAX_REQUESTS.
MAX_RETRIES = MAX_REQUESTS
# The edge's sidecar's listener for the HTTP edge (Sidecar.edge_socket).
EDGE_LISTENER = "inbound-edge"
# The inbound RBAC's policies: health for any identity, and one per caller (`caller-<service>`).
HEALTH_POLICY = "health"
HEALTH_PATH_PREFIX = "/grpc.health.v1.Health/"
CALLER_POLICY_PREFIX = "caller-"
MAX_DOWNSTREAM_CONNECTIONS = 10000
CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
# Shares of that cap from which the edge shortens its clients' idle connections' timeout, the more the nearer
# the cap, down to IDLE_TIMEOUT_AT_CAP: an idle connection costs its client nothing, so one client held all of
# them for the hour of Envoy's default idle timeout and every other client's connection was refused.
CONNECTIONS_SCALE_FROM = 0.5
CONNECTIONS_SATURATED = 0.8
IDLE_TIMEOUT_AT_CAP = "2s"
# Shares of a heap bound (overload_manager) at which Envoy starts resetting the streams holding the most memory,
# gives freed memory back to the OS, and refuses new requests and closes connections that send more (and has
# reset every stream it tracks); how often it reads the heap.
HEAP_RESET_FROM = 0.85
HEAP_SHRINK_AT = 0.9
HEAP_SATURATED = 0.95
HEAP_REFRESH_INTERVAL = "0.25s"

# One JSON line per call that did not end OK, in the stack's log stream. (A connection refused in the TLS
# handshake is no call: it shows in the listener's ssl.* statistics, not here.)
_ACCESS_LOG_FORMAT = {
    # When the call came in, as the services' JSON logs write their `time` (UTC, ISO 8601, milliseconds): a
    # UF or DR line lines up with the caller's and the callee's own lines.
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "method": "%REQ(:PATH)%",
    "grpc_status": "%GRPC_STATUS%",
    "http_status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
    "upstream": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


@dataclass(frozen=True)
class Sidecar:
    """Everything one sidecar's configuration depends on."""

    service: str
    host: str
    inbound_port: int
    ports: SidecarPorts
    # Callee name → its inbound address (host:port).
    upstreams: Mapping[str, str]
    # Caller → the exact gRPC paths (`/package.Service/Method`) its SPIFFE identity is admitted to inbound; a
    # caller listed with none, or not listed at all, is admitted to nothing but health (deny by default, as
    # the charts' policy: a service outside the topology lists no methods, and so admits no caller to any).
    # None: the edge, which takes plaintext from any client.
    allowed_callers: Mapping[str, Sequence[str]] | None
    # The Unix socket the service listens on (GRPC_UNIX_SOCKET), in a folder only its user can open: the
    # sidecar forwards there (Envoy's `pipe` address), and nothing else on the machine reaches the service
    # past the sidecar, as iptables sends a pod's traffic through its proxy.
    app_socket: Path
    # The sidecar's admin interface (faults, /ready, /stats, /config_dump, /quitquitquit): a Unix socket of mode
    # 0600 in that same folder, so that only the user who runs the stack reaches it.
    admin_socket: Path
    # An OTLP/gRPC receiver for the sidecar's own spans (the local trace sink, or your collector: host:port, or
    # unix:<path>, `traces_cluster`); None: none.
    traces: str | None = None
    # Where the inbound listener is bound; None: `host`, as the sidecar's other listeners.
    # The edge's sidecar takes clients' calls, and `make run HOST=` publishes it alone.
    inbound_host: str | None = None
    # "canary": the sidecar of a canary of `service` (same identity, a name of its own: `<service>-canary-sidecar`).
    track: str = "stable"
    # Callee → (its canary's inbound address, the canary's share of the calls in percent): the outbound
    # route splits by weight between the callee and its canary, as Istio's VirtualService on Kubernetes.
    splits: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    # The edge's sidecar: a Unix socket (beside `app_socket`, in the folder only the user can open) where the
    # HTTP edge calls it; None: no HTTP edge. Through the published listener, which appends its peer to
    # x-forwarded-for, the edge was no client of its own: for a loopback peer Envoy appends the host's own
    # address instead, so every HTTP client was that one address to the gateway, which trusts only its
    # sidecar (`unix`), and all of them shared one rate-limit bucket.
    edge_socket: Path | None = None

    @property
    def name(self) -> str:
        """`<service>-sidecar`, or `<service>-canary-sidecar`: Envoy's node id and its spans' service."""
        return f"{self.service}-sidecar" if self.track == "stable" else f"{self.service}-{self.track}-sidecar"


def bootstrap(sidecar: Sidecar, identities: MeshIdentities) -> dict[str, Any]:
    """The sidecar's whole static configuration (Envoy's v3 bootstrap), as JSON-ready data."""
    spans = tracing(sidecar.name) if sidecar.traces is not None else None
    listeners = [_inbound_listener(sidecar, identities, spans)]
    if sidecar.edge_socket is not None:
        listeners.append(_edge_listener(sidecar, spans))
    metrics = prometheus_listener(sidecar.host, sidecar.ports.prometheus)
    listeners.append(metrics.listener)
    clusters = [_app_cluster(sidecar), admin_cluster(sidecar.admin_socket)]
    for callee, port in sidecar.ports.outbound.items():
        listeners.append(_outbound_listener(sidecar, callee, port, spans))
        clusters.append(_outbound_cluster(sidecar, callee, sidecar.upstreams[callee], identities))
        if callee in sidecar.splits:
            canary_address, _ = sidecar.splits[callee]
            clusters.append(_outbound_cluster(sidecar, callee, canary_address, identities, track="canary"))
    if sidecar.traces is not None:
        clusters.append(traces_cluster(sidecar.traces))
    return {
        "node": {"id": sidecar.name, "cluster": sidecar.service},
        "admin": admin_pipe(sidecar.admin_socket),
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # Faults (and a canary's weight) are set at run time through the admin interface (`mesh.faults`): its
        # layer last, so that what it sets wins.
        "layered_runtime": {"layers": [metrics.runtime_layer, {"name": "faults", "admin_layer": {}}]},
        "overload_manager": overload_manager(),
    }


def overload_manager(
    max_heap_bytes: int | None = None,
    *,
    heap_monitor: bool = True,
    max_connections: int = MAX_DOWNSTREAM_CONNECTIONS,
) -> dict[str, Any]:
    """A bound on downstream connections (Envoy warns without one); a sidecar sees a handful. With
    `max_heap_bytes` (the edge, whose clients are anyone), a bound on Envoy's heap too, under its container's
    memory limit, acted on as Envoy's overload manager documents: as the heap nears it, the streams holding the
    most buffered memory are reset (HTTP/2), freed memory is given back to the OS, and at HEAP_SATURATED new
    requests are refused (503) and a connection that sends more is closed (HTTP/1.1 and HTTP/2 alike), so that
    bodies that never finish (each held up to the edge's 1 MiB until the request timeout) end in refusals, not
    in the container's OOM kill, which would drop every client at once; and as the connections near their cap,
    idle ones are closed sooner (CONNECTIONS_SCALE_FROM). `max_connections`: the cap, MAX_DOWNSTREAM_CONNECTIONS
    unless a test's own. `heap_monitor` False: the heap's monitor
    (which the actions name) is left to whoever starts Envoy, who knows the memory limit (the gateway's chart,
    with --config-yaml: heap_monitor_of())."""
    config: dict[str, Any] = {
        "resource_monitors": [
            {
                "name": CONNECTIONS_MONITOR,
                "typed_config": {
                    "@type": _CONNECTIONS_MONITOR,
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }
    if max_heap_bytes is None:
        return config
    if heap_monitor:
        config["resource_monitors"].append(heap_monitor_of(max_heap_bytes))
    saturated = [{"name": HEAP_MONITOR, "threshold": {"value": HEAP_SATURATED}}]
    config["refresh_interval"] = HEAP_REFRESH_INTERVAL
    config["actions"] = [
        {
            # From HEAP_RESET_FROM of the bound on, the more of the largest streams the fuller the heap.
            "name": "envoy.overload_actions.reset_high_memory_stream",
            "triggers": [
                {
                    "name": HEAP_MONITOR,
                    "scaled": {"scaling_threshold": HEAP_RESET_FROM, "saturation_threshold": HEAP_SATURATED},
                }
            ],
        },
        {
            "name": "envoy.overload_actions.shrink_heap",
            "triggers": [{"name": HEAP_MONITOR, "threshold": {"value": HEAP_SHRINK_AT}}],
        },
        {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": saturated},
        {
            # The idle timeout of every connection, those already idle included, scaled from the connection
            # manager's own down to IDLE_TIMEOUT_AT_CAP (Envoy's documented way to shed idle connections).
            "name": "envoy.overload_actions.reduce_timeouts",
            "triggers": [
                {
                    "name": CONNECTIONS_MONITOR,
                    "scaled": {
                        "scaling_threshold": CONNECTIONS_SCALE_FROM,
                        "saturation_threshold": CONNECTIONS_SATURATED,
                    },
                }
            ],
            "typed_config": {
                "@type": _SCALE_TIMERS,
                "timer_scale_factors": [
                    {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": IDLE_TIMEOUT_AT_CAP}
                ],
            },
        },
    ]
    # Requests already accepted go on reading their bodies: without these, a burst of them (each read into
    # the heap before the next reading of it, HEAP_REFRESH_INTERVAL) took the heap past its bound, and
    # reset_high_memory_stream tracks no HTTP/1.1 stream's memory.
    config["loadshed_points"] = [
        {"name": "envoy.load_shed_points.http1_server_abort_dispatch", "triggers": saturated},
        {"name": "envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch", "triggers": saturated},
    ]
    # reset_high_memory_stream picks among the streams whose buffers Envoy accounts for: every one holding
    # 2^16 bytes (64 KiB) or more, so a body held whole (up to the edge's 1 MiB) is one of them.
    config["buffer_factory_config"] = {"minimum_account_to_track_power_of_two": 16}
    return config


def heap_monitor_of(max_heap_bytes: int) -> dict[str, Any]:
    """The overload manager's monitor of Envoy's heap against this bound (HEAP_MONITOR, which its actions name)."""
    return {"name": HEAP_MONITOR, "typed_config": {"@type": _HEAP_CONFIG, "max_heap_size_bytes": max_heap_bytes}}


def write_bootstrap(config: Mapping[str, Any], path: Path) -> Path:
    """Write an Envoy's bootstrap (a sidecar's, `bootstrap`; the HTTP edge's, `http_api.bootstrap`) to `path`,
    private (it names the admin socket and the SVIDs' files). A folder made for it is private too; one that
    exists keeps its mode: the data directory's is `stack.make_data_dir`'s to decide (one of the user's keeps
    theirs), and the mesh's `identity.issue` made private."""
    if not path.parent.is_dir():
        make_private_folder(path.parent)
    write_private_file(path, (json.dumps(config, indent=2) + "\n").encode())
    return path


def _inbound_listener(sidecar: Sidecar, identities: MeshIdentities, spans: dict[str, Any] | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    transport_socket = None
    if sidecar.allowed_callers is not None:
        transport_socket = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _DOWNSTREAM_TLS,
                "require_client_certificate": True,
                "common_tls_context": _tls_context(sidecar.service, identities),
            },
        }
        # The service learns its caller's identity (By=<itself>;URI=<caller>), never a forged one.
        settings["forward_client_cert_details"] = "SANITIZE_SET"
        settings["set_current_client_cert_details"] = {"uri": True}
        filters.append(_policy(sidecar.allowed_callers))
    else:
        settings["forward_client_cert_details"] = "SANITIZE"
        # The edge's published listener, for clients calling the gateway directly (the HTTP edge has its own,
        # `edge_socket`): the peer's address goes into x-forwarded-for (a loopback peer's as the host's own,
        # Envoy's rule; the gateway believes the header only from TRUSTED_PROXIES), and Envoy's internal
        # headers from outside are dropped.
        settings["use_remote_address"] = True
        # Its clients are anyone `make run HOST=` lets in, who may send no deadline: off (0s), as on the mesh's
        # own listeners, a client could hold its streams open for ever. Whatever the host (loopback too), so
        # that the published listener's configuration is the one the tests run.
        settings["stream_idle_timeout"] = PUBLISHED_STREAM_IDLE_TIMEOUT
    manager = _to_app(sidecar, filters, spans, **settings)
    # The traffic direction is also the kind of the sidecar's spans: server here, client outbound.
    inbound_host = sidecar.inbound_host or sidecar.host
    return listener("inbound", inbound_host, sidecar.inbound_port, "INBOUND", manager, transport_socket)


def _to_app(
    sidecar: Sidecar, filters: list[dict[str, Any]], spans: dict[str, Any] | None, **settings: Any
) -> dict[str, Any]:
    """An inbound connection manager: `filters`, then the faults, then the service (`settings`: its fields)."""
    return _http_manager(
        "inbound",
        virtual_host=sidecar.service,
        route={"cluster": "app", **GRPC_TIMEOUTS},
        http_filters=[*filters, _faults()],
        spans=spans,
        **settings,
    )


def _edge_listener(sidecar: Sidecar, spans: dict[str, Any] | None) -> dict[str, Any]:
    """The HTTP edge's own way into the edge's sidecar, on `edge_socket`: only the user's processes can
    connect to it, and the edge has already appended its client's address to x-forwarded-for, so this hop
    appends nothing (use_remote_address off: Envoy neither appends nor replaces it) and the gateway, walking
    the header past its sidecar, finds the edge's client. Its statistics are the inbound listener's."""
    assert sidecar.edge_socket is not None
    manager = _to_app(sidecar, [], spans, forward_client_cert_details="SANITIZE", use_remote_address=False)
    return listener(EDGE_LISTENER, sidecar.host, 0, "INBOUND", manager, pipe=sidecar.edge_socket)


def _outbound_listener(sidecar: Sidecar, callee: str, port: int, spans: dict[str, Any] | None) -> dict[str, Any]:
    target: dict[str, Any] = {"cluster": _outbound_name(callee)}
    if callee in sidecar.splits:
        _, weight = sidecar.splits[callee]
        clusters = [(_outbound_name(callee), 100 - weight), (_outbound_name(callee, "canary"), weight)]
        target = {
            "weighted_clusters": {
                "clusters": [{"name": n, "weight": w} for n, w in clusters],
                "runtime_key_prefix": SPLIT_RUNTIME_PREFIX,
            }
        }
    route = {
        **target,
        **GRPC_TIMEOUTS,
        "retry_policy": {
            "retry_on": OUTBOUND_RETRY_ON,
            "num_retries": OUTBOUND_RETRIES,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        },
    }
    manager = _http_manager(
        _outbound_name(callee),
        virtual_host=callee,
        route=route,
        operation=f"outbound to {callee}",
        http_filters=[_grpc_stats()],
        spans=spans,
    )
    return listener(_outbound_name(callee), sidecar.host, port, "OUTBOUND", manager)


def _http_manager(
    name: str,
    *,
    virtual_host: str,
    route: dict[str, Any],
    operation: str | None = None,
    http_filters: list[dict[str, Any]] | None = None,
    spans: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """An HTTP/2 connection manager sending every request along one route, logging what did not end OK;
    `operation` names its span (default: the manager's name), `settings` are further fields of it."""
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": name,
        "codec_type": "HTTP2",
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {
                    "name": virtual_host,
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": route,
                            # The sidecar's span name (Envoy's default: "ingress" / "egress <host>"), not
                            # handed on to the next hop.
                            "decorator": {"operation": operation or name, "propagate": False},
                        }
                    ],
                }
            ],
        },
        # The services' gRPC servers take this much metadata, and what the HTTP edge forwards (its headers and
        # its copy of the path) may be more than Envoy's default 60 KiB: a sidecar must not refuse (431, a
        # reset) a call its service would take.
        "max_request_headers_kb": MAX_METADATA_BYTES // 1024,
        # Nor refuse one for its count of headers (Envoy's default 100): the HTTP edge adds some to what it took.
        "common_http_protocol_options": {"max_headers_count": MAX_HEADERS_COUNT},
        "access_log": [access_log(operation or name)],
        # Envoy's default (5 min) cut a call that sent nothing for that long with UNAVAILABLE "stream timeout",
        # which the callers' channels retry for idempotent methods: a long call, a fault's delay (up to
        # mesh.faults' hour). The caller's `grpc-timeout` bounds every call (GRPC_TIMEOUTS), as docs/mesh.md
        # says; a caller without a deadline waits as long as it asked to, as it would without the mesh.
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        # No `server: envoy` of Envoy's own on an answer (the services send none, so none is passed through), and
        # no x-envoy-upstream-service-time: the gateway's sidecar handed both to clients, through the HTTP edge and
        # on its published port, timing users' password hash on Login to the millisecond (docs/http-api.md promises
        # no answer names the proxy or times the gateway). Every sidecar alike: nothing in the mesh reads them, and
        # a service relaying a callee's answer relays no proxy's headers either.
        "server_header_transformation": "PASS_THROUGH",
        "http_filters": [
            *(http_filters or []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER, "suppress_envoy_headers": True}},
        ],
        **settings,
    }
    if spans is not None:
        manager["tracing"] = spans
    return manager


def listener(
    name: str,
    host: str,
    port: int,
    direction: str,
    manager: dict[str, Any],
    transport_socket: dict[str, Any] | None = None,
    *,
    reuse_port: bool = False,
    pipe: Path | None = None,
) -> dict[str, Any]:
    """A listener of one HTTP connection manager. Not `reuse_port` (Envoy's default is to bind with
    SO_REUSEPORT): a process that took the planned port first, with SO_REUSEPORT too, would share it silently
    and take part of the calls; without it, Envoy refuses to start, the port in use. `reuse_port`: where nothing
    else can bind the port (a pod's own network namespace), each of Envoy's workers gets its own socket, the
    kernel spreading connections among them. `pipe`: on that Unix socket, not host:port."""
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    address = endpoint_address(host, port, pipe)
    return {
        "name": name,
        "address": address,
        "traffic_direction": direction,
        "filter_chains": [chain],
        "enable_reuse_port": reuse_port,
    }


def _policy(callers: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """RBAC admitting each caller's SPIFFE identity to its paths alone, and any identity to health. A caller
    with no paths gets no policy: under ALLOW, what no policy matches is refused, so nothing listed means
    nothing admitted (it once meant every method, a bypass of the policy for any service outside the
    topology)."""
    policies: dict[str, Any] = {
        # As the charts keep it open to any source: a health check needs no place in the call graph. (The
        # listener's TLS still admits only identities of the mesh's authority.)
        HEALTH_POLICY: {
            "permissions": [{"url_path": {"path": {"prefix": HEALTH_PATH_PREFIX}}}],
            "principals": [{"any": True}],
        }
    }
    for caller, paths in callers.items():
        if not paths:
            # RBAC takes no empty list of permissions; leaving the caller out refuses it the same.
            continue
        # A path, not the whole :path header: a query string (none in gRPC) cannot make a method unknown.
        policies[f"{CALLER_POLICY_PREFIX}{caller}"] = {
            "permissions": [{"url_path": {"path": {"exact": p}}} for p in paths],
            "principals": [{"authenticated": {"principal_name": {"exact": spiffe_id(caller)}}}],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": _RBAC, "rules": {"action": "ALLOW", "policies": policies}},
    }


def _app_cluster(sidecar: Sidecar) -> dict[str, Any]:
    return cluster("app", sidecar.host, 0, pipe=sidecar.app_socket)


def _outbound_cluster(
    sidecar: Sidecar, callee: str, address: str, identities: MeshIdentities, *, track: str = "stable"
) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    outbound = cluster(_outbound_name(callee, track), host, int(port))
    context = _tls_context(sidecar.service, identities)
    # Only the callee's own identity is accepted: a process on its port without its SVID gets nothing.
    context["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": spiffe_id(callee)}}
    ]
    outbound["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": _UPSTREAM_TLS, "common_tls_context": context},
    }
    return outbound


def cluster(
    name: str,
    host: str,
    port: int,
    *,
    http2: bool = True,
    dns: bool = False,
    pipe: Path | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """A cluster of one static endpoint, spoken to over HTTP/2 (gRPC), or with `http2=False` HTTP/1.1;
    `dns`: `host` is a name, resolved now and again (every address it has is an endpoint: a headless
    Service's pods too), not an IP address; `pipe`: the endpoint is that Unix socket, not host:port;
    `source`: the IP address Envoy connects from (any port), not the one the OS picks."""
    result: dict[str, Any] = {"name": name, "type": "STATIC", "connect_timeout": CONNECT_TIMEOUT}
    if source is not None:
        # A SocketAddress, not an Address as an endpoint's: port 0, any the OS picks.
        result["upstream_bind_config"] = {"source_address": {"address": source, "port_value": 0}}
    if dns:
        # IPv4 where the name has both (Envoy would try IPv6 first): a dual-stack cluster's collector may
        # listen on IPv4 only; an IPv6-only cluster still gets its IPv6 addresses.
        result.update(type="STRICT_DNS", dns_lookup_family="V4_PREFERRED")
    if http2:
        result["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                # An answer's headers (and trailers) are counted too: as many as a call's, both ways.
                "common_http_protocol_options": {"max_headers_count": MAX_HEADERS_COUNT},
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    # Stated, not Envoy's defaults (3 retries at once per cluster): see MAX_RETRIES.
    result["circuit_breakers"] = {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_pending_requests": MAX_PENDING_REQUESTS,
                "max_requests": MAX_REQUESTS,
                "max_retries": MAX_RETRIES,
            }
        ]
    }
    address = endpoint_address(host, port, pipe)
    result["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }
    return result


def _tls_context(service: str, identities: MeshIdentities) -> dict[str, Any]:
    svid = identities.svid(service)
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(svid.certificate)}, "private_key": {"filename": str(svid.key)}}
        ],
        "validation_context": {"trusted_ca": {"filename": str(identities.bundle)}},
        "alpn_protocols": ["h2"],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
    }


def access_log(direction: str, *, only_failures: bool = True, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One JSON line per call on stdout; `only_failures`: only calls that did not end OK; `extra`: more
    fields (Envoy command operators)."""
    log_format = {**_ACCESS_LOG_FORMAT, **(extra or {}), "direction": direction}
    logger: dict[str, Any] = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {"@type": _STDOUT_LOG, "log_format": {"json_format": log_format}},
    }
    if only_failures:
        # Successful calls are the services' own business (their metrics and spans); the mesh logs
        # what it refused or what failed on its way.
        logger["filter"] = {"grpc_status_filter": {"statuses": ["OK"], "exclude": True}}
    return logger


def _grpc_stats() -> dict[str, Any]:
    """Calls counted by gRPC status per cluster (`cluster.outbound-<callee>[-canary].grpc.<status>`, `.success`,
    `.failure`): a gRPC failure is HTTP 200, so the cluster's `upstream_rq_2xx` counted a canary's UNAVAILABLE
    as a success. Not per method (`stats_for_all_methods` off, no allowlist): a handful of series per cluster,
    whatever a caller sends."""
    return {
        "name": "envoy.filters.http.grpc_stats",
        "typed_config": {"@type": _GRPC_STATS, "stats_for_all_methods": False, "emit_filter_state": False},
    }


class PrometheusListener(NamedTuple):
    """A Prometheus listener and the runtime layer with its bound on connections: the bootstrap needs both."""

    listener: dict[str, Any]
    runtime_layer: dict[str, Any]


def prometheus_listener(
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    routes: Sequence[dict[str, Any]] = (),
    filters: Sequence[dict[str, Any]] = (),
    idle_timeout: str = METRICS_IDLE_TIMEOUT,
) -> PrometheusListener:
    """A listener on host:port serving `GET /stats/prometheus` from the admin interface (ADMIN_CLUSTER) and
    nothing else of it, as Istio's proxies serve 15090: the admin interface can also stop Envoy, change its
    runtime or dump its configuration. `routes` and `filters` go before the metrics route and the router (the
    HTTP edge answers its kubelet probes there too); `idle_timeout` lets an idle connection go. Outside the cap
    on downstream connections (overload_manager): a scraper's connections took places of the calls', and a flood
    of calls at the cap left the scraper (and the edge's kubelet probes) refused exactly when wanted. So with
    its own bound (METRICS_MAX_CONNECTIONS), in the runtime layer that goes with it: exempt and unbounded, a
    sidecar's loopback port let any local user open connections without end."""
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": _METRICS_LISTENER,
        "codec_type": "AUTO",
        "route_config": {
            "name": _METRICS_LISTENER,
            "virtual_hosts": [
                {
                    "name": _METRICS_LISTENER,
                    "domains": ["*"],
                    "routes": [
                        *routes,
                        {
                            "match": {
                                "path": METRICS_PATH,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": ADMIN_CLUSTER},
                        },
                    ],
                }
            ],
        },
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    manager["common_http_protocol_options"] = {"idle_timeout": idle_timeout}
    metrics = listener(_METRICS_LISTENER, host, port, "INBOUND", manager, reuse_port=reuse_port)
    metrics["ignore_global_conn_limit"] = True
    limit = f"envoy.resource_limits.listener.{_METRICS_LISTENER}.connection_limit"
    return PrometheusListener(metrics, {"name": "metrics-listener", "static_layer": {limit: METRICS_MAX_CONNECTIONS}})


def _faults() -> dict[str, Any]:
    """Fault injection, on every inbound listener after the policy (a refused caller is refused, not
    delayed), off until `mesh.faults` sets the filter's runtime keys on the sidecar's admin interface:
    a delay or a gRPC status for a share of the calls the service would get, as Istio's VirtualService
    faults."""
    return {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": "0.001s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
            "abort": {"grpc_status": 14, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
        },
    }


# No route timeout of Envoy's own (15 s by default): the caller's gRPC deadline, sent as `grpc-timeout`,
# bounds the call at every hop.
GRPC_TIMEOUTS: dict[str, Any] = {"timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}}
# Off (0s) on every sidecar's connection manager but the edge's published one: see _http_manager.
STREAM_IDLE_TIMEOUT = "0s"
# The longest delay a fault may hold a call (`mesh.faults --delay`): longer than any caller waits (a call's
# deadline ends it first), short enough that a typo (`--delay 3000s` for 3000ms) is refused rather than set.
MAX_FAULT_DELAY_MS = 60 * 60 * 1000
# The edge's published inbound listener (outside clients'): finite, yet past the longest fault delay, so that
# a delay set on the gateway's sidecar holds the call as long as it says rather than ending in "stream timeout".
PUBLISHED_STREAM_IDLE_TIMEOUT = f"{MAX_FAULT_DELAY_MS // 1000 + 60}s"
# The admin interface's Unix socket: its owner alone may connect (the folder is 0700 besides).
ADMIN_SOCKET_MODE = 0o600


def tracing(name: str) -> dict[str, Any]:
    """A span per call through the sidecar, in the caller's trace (W3C traceparent in and out), exported
    to the trace sink: a trace shows each hop through the mesh, as Istio's proxies' spans do."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _OTEL_TRACER,
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACES_CLUSTER}, "timeout": "1s"},
                "service_name": name,
            },
        }
    }


def traces_cluster(receiver: str) -> dict[str, Any]:
    """TRACES_CLUSTER, to the OTLP/gRPC receiver at `receiver` (`otlp_receiver`): `host:port`, a name resolved
    by DNS (a collector's usually is: `localhost`, a container's) or an IP address; or `unix:<path>`."""
    if receiver.startswith(_UNIX):
        return cluster(TRACES_CLUSTER, "", 0, pipe=Path(receiver.removeprefix(_UNIX)))
    host, port = receiver.rsplit(":", 1)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return cluster(TRACES_CLUSTER, host, int(port), dns=True)
    return cluster(TRACES_CLUSTER, host, int(port))


_UNIX = "unix:"


def otlp_receiver(endpoint: str) -> str:
    """Where an Envoy sends its spans so that they go where the services' do, given their
    OTEL_EXPORTER_OTLP_ENDPOINT: `host:port`, or `unix:<path>`, for `traces_cluster`. The services' OTLP/gRPC
    exporter (shopmesh_chassis.tracing) connects to the endpoint's host and port, ignoring a path as gRPC has
    none; in plaintext for `http://host:port` and a bare `host:port`, over TLS for `https://`; and a `unix:`
    endpoint is gRPC's Unix socket. ValueError, saying why, for what Envoy would not send to as they do:
    `https://` (Envoy's tracer would need the trust store, and the headers such a collector usually wants,
    OTEL_EXPORTER_OTLP_HEADERS: its spans would be lost without a word), and an endpoint without a port
    (gRPC's default, 443, is no collector's; OTLP/gRPC's is 4317)."""
    if endpoint.startswith(_UNIX):
        path = urlsplit(endpoint).path
        if not path:
            raise ValueError("a unix: endpoint names its socket's path (unix:///run/otel.sock)")
        return f"{_UNIX}{path}"
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parts.scheme == "https":
        raise ValueError(
            "the local Envoys (the HTTP edge, the mesh's sidecars) export in plaintext only; point it at a "
            "collector of yours over http:// (one that forwards over TLS)"
        )
    if parts.scheme not in ("", "http"):
        raise ValueError("not an OTLP/gRPC endpoint: http://host:port, host:port or unix:<path>")
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = None
    if not parts.hostname or port is None:
        raise ValueError("name the collector's host and port (OTLP/gRPC's is 4317): http://localhost:4317")
    return f"{parts.hostname}:{port}"


def split_runtime_keys(callee: str) -> tuple[str, str]:
    """The runtime keys of the weights of `callee` and of its canary in its callers' outbound routes (Envoy sums
    the two for each call: a share of 100 in all keeps them percentages)."""
    stable, canary = _outbound_name(callee), _outbound_name(callee, "canary")
    return f"{SPLIT_RUNTIME_PREFIX}.{stable}", f"{SPLIT_RUNTIME_PREFIX}.{canary}"


def _outbound_name(callee: str, track: str = "stable") -> str:
    return f"outbound-{callee}" if track == "stable" else f"outbound-{callee}-{track}"


def admin_socket_file(process: str) -> str:
    """The file name of the admin socket of the Envoy process named `process` (a sidecar, `catalog-sidecar`,
    `catalog-canary-sidecar`; the HTTP edge, `http-api`), in the stack's sockets' folder."""
    return f"{process}-admin.sock"


def admin_pipe(path: Path) -> dict[str, Any]:
    """Envoy's admin interface on the Unix socket `path`, which only its owner may connect to
    (ADMIN_SOCKET_MODE): on a loopback port any local user could stop Envoy (`/quitquitquit`), change its
    runtime or read its configuration."""
    return {"address": {"pipe": {"path": str(path), "mode": ADMIN_SOCKET_MODE}}}


def admin_cluster(pipe: Path | None, host: str = "", port: int = 0) -> dict[str, Any]:
    """The cluster (ADMIN_CLUSTER) by which a Prometheus listener reaches the admin interface, which speaks
    HTTP/1.1: on the Unix socket `pipe` (`admin_pipe`), or at `host`:`port` (the edge's in a pod)."""
    return cluster(ADMIN_CLUSTER, host, port, http2=False, pipe=pipe)


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def endpoint_address(host: str, port: int, pipe: Path | None = None) -> dict[str, Any]:
    """host:port as Envoy's Address, or with `pipe` that Unix socket (Envoy's `pipe`) instead."""
    return socket_address(host, port) if pipe is None else {"pipe": {"path": str(pipe)}}
