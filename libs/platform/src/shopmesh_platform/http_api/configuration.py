"""HttpApi (what the edge's configuration depends on) and bootstrap(): the whole configuration, assembled from
the routes, filters and local replies of the modules beside this one, and the metrics listener, which answers
the kubelet's probes too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mesh.envoy import (
    MAX_DOWNSTREAM_CONNECTIONS,
    access_log,
    admin_cluster,
    admin_pipe,
    cluster,
    listener,
    overload_manager,
    prometheus_listener,
    socket_address,
    traces_cluster,
    tracing,
)
from .challenges import bearer_challenge
from .contract import PUBLIC_SERVICE, api_methods, single_request_methods
from .cors import CORS, cors_policy
from .deadlines import grpc_deadline_exceeded, grpc_malformed_timeout, malformed_grpc_timeout_refused
from .filters import GRPC_WEB, ROUTER, compressor, health_check, health_routes, transcoder
from .get_body import body_on_get_check, body_on_get_refusal
from .grpc_attempts import grpc_malformed_previous_attempts, malformed_previous_attempts_refused
from .grpc_encodings import grpc_encoding_refused, grpc_encoding_replies
from .grpc_messages import grpc_web_text_not_base64, one_message_check, one_message_required
from .head import head_as_get
from .headers import header_hygiene, health_check_hygiene
from .local_replies import (
    EXPLAINED_LOCAL_REPLIES,
    GRPC_HTTP_STATUS_CODES,
    LOCAL_REPLY_CODES,
    explained,
    grpc_gateway_unavailable,
    local_reply,
    query_without_content_type,
    request_timed_out,
    status_as_it_is,
    unlisted_local_reply,
    unreadable_body,
    unreadable_query,
)
from .log_fields import HTTP_LOG_FIELDS, SPAN_URL, gateway_status
from .matching import NOT_GRPC
from .request_limits import (
    BUFFER,
    IDLE_TIMEOUT,
    INITIAL_CONNECTION_WINDOW_BYTES,
    INITIAL_STREAM_WINDOW_BYTES,
    MAX_CONCURRENT_STREAMS,
    MAX_HEAP_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_HEADERS_COUNT,
    MAX_REQUEST_HEADERS_KIB,
    PER_CONNECTION_BUFFER_BYTES,
    REQUEST_HEADERS_TIMEOUT,
    declared_too_large,
    grpc_too_large,
    http_too_large,
)
from .routes import (
    MALFORMED_QUERY_PARAMETER_ROUTE,
    MAX_REGEX_PROGRAM_SIZE,
    PATH_VARIABLE_IN_QUERY_ROUTE,
    QUERY_WITH_BODY_ROUTE,
    REPEATED_QUERY_PARAMETER_ROUTE,
    ROUTE_BOUND,
    ROUTE_TIMEOUT,
    http_json_route,
    method_routes,
    other_grpc_refused,
    unknown_method_forwarded,
)
from .served_files import MAX_DOCUMENT_BYTES, openapi_routes, storefront_routes

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass(frozen=True, kw_only=True)
class HttpApi:
    """Everything the edge's configuration depends on, besides the API itself: its paths come from the
    OpenAPI document in the contracts package (`api_paths()`), wherever Envoy finds its files."""

    # Where it listens for HTTP clients.
    host: str
    port: int
    # Envoy's admin interface (readiness: /ready, /stats; also /quitquitquit, /config_dump): never on a public
    # address. On admin_host:admin_port (Kubernetes: loopback in the pod, which only the pod's own containers
    # share), or on `admin_socket`, a Unix socket only its owner may connect to (`make run`: on a loopback port
    # any user of the machine could stop the edge or read its configuration); exactly one of the two.
    admin_host: str | None = None
    admin_port: int | None = None
    admin_socket: Path | None = None
    # host:port of the gateway's gRPC server (plaintext HTTP/2).
    gateway: str
    # The API's descriptor set, as Envoy will find it on its file system.
    descriptor: Path
    # An OTLP/gRPC receiver for the edge's spans (host:port, or unix:<path>: `traces_cluster`); None: none.
    traces: str | None = None
    # Spans, sent to a TRACES_CLUSTER this configuration leaves out: whoever starts Envoy adds it (on
    # Kubernetes the chart, with --config-yaml, where global.otel says). With `traces` None only.
    traces_cluster_at_start: bool = False
    # A listener (on `host`) serving only Envoy's Prometheus metrics from the admin interface, for a scraper
    # that cannot reach loopback, and HEALTH_PATH, for the kubelet's probes (Kubernetes), outside the cap on
    # connections (`max_connections`); None: none.
    metrics_port: int | None = None
    # Where the metrics listener is bound; None: `host`. (`make run`: loopback, as its admin port was, whatever
    # `host` publishes the edge on.)
    metrics_host: str | None = None
    # The OpenAPI document, as Envoy will find it on its file system, served at OPENAPI_PATH; None: not.
    openapi: Path | None = None
    # The folder holding STOREFRONT_FILES, as Envoy will find it on its file system; None: no storefront.
    storefront: Path | None = None
    # Envoy's node id and its spans' service name.
    name: str = "http-api"
    # The IP address the edge connects to the gateway from, so that the gateway can trust this one peer
    # as its proxy and no other client on the machine (`make run`: a loopback address of its own); None:
    # the one the OS picks.
    gateway_source: str | None = None
    # The Unix socket the edge calls the gateway on instead of `gateway` (`make run MESH=envoy`: the gateway's
    # sidecar's listener for the edge alone, which passes on its x-forwarded-for as written); None: `gateway`.
    gateway_socket: Path | None = None
    # The bound on Envoy's heap, under its container's memory limit (request_limits.max_heap_bytes), which the
    # overload manager acts on; a test's own may be smaller.
    max_heap_bytes: int = MAX_HEAP_BYTES
    # The heap's monitor, with the bound, left to Envoy's start: on Kubernetes the chart adds it (--config-yaml),
    # from the container's memory limit. `max_heap_bytes` is then unused.
    heap_bound_at_start: bool = False
    # The most connections Envoy holds at once, all its listeners' but the metrics listener's (new ones past it
    # are closed as they are accepted); a test's own may be smaller.
    max_connections: int = MAX_DOWNSTREAM_CONNECTIONS
    # The listeners bind with SO_REUSEPORT (envoy.listener): only where nothing else can bind their ports, a
    # pod's network namespace. Locally, a process on a planned port must make the start fail, not share it.
    reuse_port: bool = False


def bootstrap(api: HttpApi) -> dict[str, Any]:
    """The edge's whole static configuration (Envoy's v3 bootstrap), as JSON-ready data."""
    if api.traces is not None and api.traces_cluster_at_start:
        raise ValueError("traces names the spans' receiver here; traces_cluster_at_start leaves it to Envoy's start")
    admin, admin_upstream = _admin(api)
    gateway_host, gateway_port = api.gateway.rsplit(":", 1)
    if api.gateway_socket is not None and api.gateway_source is not None:
        raise ValueError("gateway_source is an IP address to connect from; gateway_socket is no IP connection")
    clusters = [cluster("gateway", gateway_host, int(gateway_port), source=api.gateway_source, pipe=api.gateway_socket)]
    span_config = None
    if api.traces is not None:
        clusters.append(traces_cluster(api.traces))
    if api.traces is not None or api.traces_cluster_at_start:
        # The sampling ratio decides alone: a client's x-client-trace-id would force a trace past it.
        span_config = {
            **tracing(api.name),
            "client_sampling": {"value": 0},
            "custom_tags": [{"tag": "http.url", "value": SPAN_URL}],
        }
    single_request = set(single_request_methods())
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "http_api",
        # HTTP/1.1 from curl and browsers, HTTP/2 (gRPC, gRPC-Web over h2c) alike.
        "codec_type": "AUTO",
        # The peer, not x-forwarded-for, decides whether a request is internal (a client's own header never
        # makes it so, nor keeps the x-envoy-* headers Envoy strips from external requests).
        "use_remote_address": True,
        # No `server: envoy` of Envoy's own on any answer: the gateway sends none, so none is passed through.
        "server_header_transformation": "PASS_THROUGH",
        # Envoy's own append writes the host's non-loopback address in place of a loopback peer: behind a
        # sidecar, every client would be the pod to the gateway. The route configuration appends the peer.
        "skip_xff_append": True,
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KIB,
        # IDLE_TIMEOUT: a connection with no request under way is closed then (Envoy's default is an hour), and
        # sooner as the edge nears its cap on connections (the overload manager's reduce_timeouts).
        "common_http_protocol_options": {"max_headers_count": MAX_REQUEST_HEADERS_COUNT, "idle_timeout": IDLE_TIMEOUT},
        "request_headers_timeout": REQUEST_HEADERS_TIMEOUT,
        # The whole request, body and all, within the bound of the call it makes (ROUTE_TIMEOUT, above
        # checkout's 25 s), or 408 (request_timed_out) and no call: without it, a body that stops short of its
        # content-length held its buffer (up to MAX_REQUEST_BYTES) until the 5 min stream idle timeout, which
        # each byte it trickles restarts.
        "request_timeout": ROUTE_TIMEOUT,
        "http2_protocol_options": {
            "max_concurrent_streams": MAX_CONCURRENT_STREAMS,
            "initial_stream_window_size": INITIAL_STREAM_WINDOW_BYTES,
            "initial_connection_window_size": INITIAL_CONNECTION_WINDOW_BYTES,
        },
        "route_config": {
            "name": "public-api",
            "max_direct_response_body_size_bytes": MAX_DOCUMENT_BYTES,
            # The peer's address after whatever the client's x-forwarded-for held, as any proxy appends it: the
            # gateway walks it from the right past its TRUSTED_PROXIES (under a mesh, the sidecar on loopback,
            # then the ingress's entry) to the client.
            "request_headers_to_add": [
                {
                    "header": {"key": "x-forwarded-for", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                    "append_action": "APPEND_IF_EXISTS_OR_ADD",
                }
            ],
            "virtual_hosts": [
                {
                    "name": "shop",
                    "domains": ["*"],
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy()},
                    "routes": [
                        *health_routes(),
                        *openapi_routes(api.openapi),
                        *storefront_routes(api.storefront),
                        *method_routes(),
                        # Before any route that forwards gRPC: what the gateway's gRPC server must never read.
                        malformed_grpc_timeout_refused(),
                        *grpc_encoding_refused(),
                        malformed_previous_attempts_refused(),
                        # The transcoder has rewritten an HTTP/JSON request's path to the gRPC method's by the
                        # time the route is chosen: ShopService's methods are all there is. Each by its exact path
                        # (a regex of them all is past the size Envoy allows an RE2 program), through the buffer
                        # filter; any other method's gRPC goes on to the gateway unbuffered.
                        *(
                            {
                                "match": {"path": f"/{PUBLIC_SERVICE}/{method}"},
                                "route": {"cluster": "gateway", **ROUTE_BOUND},
                                "decorator": {"operation": "public API", "propagate": False},
                                **(
                                    {"typed_per_filter_config": one_message_required()}
                                    if method in single_request
                                    else {}
                                ),
                            }
                            for method in api_methods()
                        ),
                        *declared_too_large(),
                        unknown_method_forwarded(),
                        other_grpc_refused(),
                        {
                            # The CORS filter looks the request up before the transcoder rewrites its path: a
                            # browser's preflight (OPTIONS /v1/orders) needs a route here to find the virtual
                            # host's policy (not a direct response, which CORS skips). Nothing is forwarded
                            # by it: the transcoder refuses a path the API does not have. gRPC itself is
                            # left out, so health and reflection stay unroutable (UNIMPLEMENTED).
                            **http_json_route({"prefix": "/", "headers": [NOT_GRPC]}),
                        },
                    ],
                }
            ],
        },
        # What Envoy answers itself to an HTTP client (a path or parameter the API does not have, a body too
        # large, the gateway unreachable) is a google.rpc.Status in JSON too, as the gateway's answers are.
        "local_reply_config": {
            "mappers": [
                status_as_it_is(PATH_VARIABLE_IN_QUERY_ROUTE),
                status_as_it_is(QUERY_WITH_BODY_ROUTE),
                status_as_it_is(REPEATED_QUERY_PARAMETER_ROUTE),
                status_as_it_is(MALFORMED_QUERY_PARAMETER_ROUTE),
                body_on_get_refusal(),
                query_without_content_type(),
                http_too_large(),
                request_timed_out(),
                unreadable_body(),
                unreadable_query(),
                *(
                    explained(details, status, message)
                    for details, (status, message) in EXPLAINED_LOCAL_REPLIES.items()
                ),
                *(mapper for status, code in LOCAL_REPLY_CODES.items() for mapper in local_reply(status, code)),
                *(
                    mapper
                    for status, code in GRPC_HTTP_STATUS_CODES.items()
                    if status not in LOCAL_REPLY_CODES
                    for mapper in local_reply(status, code)
                ),
                # After them: a transcoded HTTP/JSON request's content type is gRPC's by then, and its 408,
                # 413, 503 and 504 are theirs.
                grpc_too_large(),
                grpc_gateway_unavailable(),
                grpc_malformed_timeout(),
                *grpc_encoding_replies(),
                grpc_malformed_previous_attempts(),
                grpc_web_text_not_base64(),
                *grpc_deadline_exceeded(),
                # Last: whatever error Envoy answers an HTTP/JSON client with that none of the above names.
                unlisted_local_reply(),
            ]
        },
        # Every request: the HTTP one as the client sent it, and the gRPC method it became.
        "access_log": [access_log("http-api", only_failures=False, extra=HTTP_LOG_FIELDS)],
        "http_filters": [
            # Before the health check, so after it on the way out: its answer's header naming Envoy's cluster, which
            # it adds as the answer leaves it, is dropped.
            header_hygiene(),
            health_check(),
            # Before the compressor, so after it on the way out: the body it drops is never gzipped.
            head_as_get(),
            # Early in the chain, so late on the way out: it sees the JSON the transcoder made.
            compressor(),
            # After the compressor, so before it on the way out: it reads a 401's JSON as the transcoder made it.
            bearer_challenge(),
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
            {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB}},
            # After gRPC-Web, whose request it then sees as gRPC: its 413 reaches a gRPC-Web client as a
            # grpc-status (before it, a text/plain 413 the client's library could not read).
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": BUFFER, "max_request_bytes": MAX_REQUEST_BYTES},
            },
            # After the buffer filter, which has the body whole by then; before the transcoder, whose HTTP/JSON
            # request takes no route that enables it.
            one_message_check(),
            # After the buffer filter too: a GET's body, whole (or the buffer's 413), refused before the
            # transcoder reads it into the call.
            body_on_get_check(),
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder(api.descriptor)},
            # After the transcoder, so before it on the way out: the gateway's answer as it came.
            gateway_status(),
            # No x-envoy-upstream-service-time on the gateway's answers (nor x-envoy-* on its calls): Envoy's timing of
            # the gateway tells a client nothing it needs, and a prober which proxy it faces.
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER, "suppress_envoy_headers": True}},
        ],
    }
    if span_config is not None:
        manager["tracing"] = span_config
    public = listener("http-api", api.host, api.port, "INBOUND", manager, reuse_port=api.reuse_port)
    public["per_connection_buffer_limit_bytes"] = PER_CONNECTION_BUFFER_BYTES
    listeners = [public]
    runtime = [{"name": "regex", "static_layer": {"re2.max_program_size.error_level": MAX_REGEX_PROGRAM_SIZE}}]
    if api.metrics_port is not None:
        metrics = prometheus_listener(
            api.host if api.metrics_host is None else api.metrics_host,
            api.metrics_port,
            reuse_port=api.reuse_port,
            # HEALTH_PATH too, as the public listener answers it: the kubelet's probes ask it here.
            routes=health_routes(),
            # Before the health check, so after it on the way out, as on the public listener.
            filters=[health_check_hygiene(), health_check()],
            # Its own bound on connections is small: one left idle is let go as the public listener's are.
            idle_timeout=IDLE_TIMEOUT,
        )
        # prometheus_listener's is outside the cap on connections, with its own bound: a client that reopens the
        # public port's connections as fast as they are shed takes the freed ones, so the kubelet's liveness
        # probe, competing with it there, failed and restarted a healthy edge (every client dropped) exactly
        # under the flood.
        runtime.append(metrics.runtime_layer)
        listeners.append(metrics.listener)
        clusters.append(admin_upstream)
    return {
        "node": {"id": api.name, "cluster": api.name},
        "admin": admin,
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": overload_manager(
            api.max_heap_bytes, heap_monitor=not api.heap_bound_at_start, max_connections=api.max_connections
        ),
        "layered_runtime": {"layers": runtime},
    }


def _admin(api: HttpApi) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bootstrap's `admin`, on its Unix socket or its loopback port, and the cluster the metrics listener
    reaches it by (ADMIN_CLUSTER: the admin interface speaks HTTP/1.1)."""
    if api.admin_socket is not None:
        if api.admin_host is not None or api.admin_port is not None:
            raise ValueError("admin_socket is the admin interface's address; admin_host and admin_port are another")
        return admin_pipe(api.admin_socket), admin_cluster(api.admin_socket)
    if api.admin_host is None or api.admin_port is None:
        raise ValueError("the admin interface needs an address: admin_socket, or admin_host and admin_port")
    admin = {"address": socket_address(api.admin_host, api.admin_port)}
    return admin, admin_cluster(None, api.admin_host, api.admin_port)
