"""Where the stack's processes listen: the `PortPlan` (`make run`'s fixed ports, or free ones for tests),
a service's ports in it, a canary's place in the local mesh, and the check that a port is free to bind."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shopmesh_chassis.testing import free_ports

from .processes import StackError
from .topology import (
    LOCAL_HOST,
    LOCAL_HTTP_METRICS_PORT,
    LOCAL_HTTP_PORT,
    LOCAL_NATS_MONITOR_PORT,
    LOCAL_NATS_PORT,
    LOCAL_SMTP_PORT,
    LOCAL_TRACES_PORT,
    SERVICES,
    SidecarPorts,
    canary_name,
    is_edge,
    local_canary_ports,
    local_sidecar_ports,
)


class PortInUse(StackError):
    """A port the stack needs is taken (often by a stack that is still running)."""


@dataclass(frozen=True)
class Canary:
    """A second instance of a service in the local mesh, as a canary Deployment on Kubernetes
    (docs/mesh.md, "Canaries"): its own process `<service>-canary` and sidecar, on the service's database,
    with the service's identity; the sidecars of the service's callers send it `weight` percent of their
    calls (Envoy's weighted clusters, as Istio's VirtualService weights)."""

    service: str
    weight: int = 10

    def __post_init__(self) -> None:
        """What no local mesh can honour, refused here once for every way a canary is asked for (`--canary`, the
        launcher, `mesh.split`); ValueError, which argparse turns into a usage error."""
        if is_edge(self.service):
            raise ValueError(
                f"not of {self.service}: its callers are clients outside the mesh, whose calls no sidecar splits"
            )
        if not 0 <= self.weight <= 100:
            raise ValueError(f"the weight is a percentage (0-100), not {self.weight}")


@dataclass(frozen=True)
class ServicePorts:
    grpc: int
    # -1: no Prometheus endpoint.
    metrics: int = -1


@dataclass(frozen=True)
class PortPlan:
    """Where everything listens. Every service the stack starts needs an entry; every entry is published
    to every service as `<NAME>_ADDRESS`, so a caller finds a callee even if it is started later (under the
    mesh, each service gets its callees' alone: its sidecar's outbound listeners for them)."""

    nats: int
    nats_monitor: int | None
    services: Mapping[str, ServicePorts]
    host: str = LOCAL_HOST
    # The SMTP sink, started only for services that send e-mail; None: no sink.
    smtp: int | None = None
    # The trace sink (OTLP/gRPC); None: none, and the services export spans only where their
    # environment says (OTEL_EXPORTER_OTLP_ENDPOINT), as everywhere else.
    traces: int | None = None
    # The local mesh (`make run MESH=envoy`): each service's sidecar, whose inbound listener takes the
    # service's gRPC port while the service itself listens on a Unix socket (`Stack.app_socket`). None: no mesh.
    mesh: Mapping[str, SidecarPorts] | None = None
    # The HTTP/JSON and gRPC-Web edge in front of the gateway (`http_api`): its listener and its metrics listener
    # (`/stats/prometheus` and `/healthz`; its admin interface is a Unix socket); None: none (started only with
    # the gateway).
    http: int | None = None
    http_metrics: int | None = None
    # The IP address the edge connects to the gateway from (`make run`: LOCAL_EDGE_SOURCE, which the gateway
    # trusts as its proxy); None: the one the OS picks, the plan's host, as any local client's.
    edge_source: str | None = None
    # Where the public entry points listen (`make run HOST=`, for a browser or client outside a VM or container):
    # the HTTP edge and the gateway's gRPC, under the mesh the gateway's sidecar's inbound listener (it takes
    # plaintext from clients, as an ingress). None: on `host`. Everything else (the other services, NATS, the
    # sinks, metrics, admin interfaces) stays on `host`: only the edge is meant for clients.
    public_host: str | None = None

    @classmethod
    def local(cls, *, mesh: bool = False, canary: str | None = None) -> PortPlan:
        """The fixed local ports of the topology (`make run`); `mesh`: with the sidecars' (MESH=envoy);
        `canary`: with those of a canary of that service and of its sidecar (`<service>-canary`)."""
        services = {name: ServicePorts(s.grpc_port, s.metrics_port) for name, s in SERVICES.items()}
        sidecars = {name: local_sidecar_ports(name) for name in SERVICES} if mesh else None
        if canary is not None and canary not in SERVICES:
            raise StackError(f"a canary of {canary!r}: not a topology service ({', '.join(SERVICES)})")
        if canary is not None and sidecars is not None:
            ports = local_canary_ports(canary)
            services[canary_name(canary)] = ServicePorts(ports.inbound, ports.metrics)
            sidecars[canary_name(canary)] = ports.sidecar
        return cls(
            nats=LOCAL_NATS_PORT,
            nats_monitor=LOCAL_NATS_MONITOR_PORT,
            services=services,
            smtp=LOCAL_SMTP_PORT,
            traces=LOCAL_TRACES_PORT,
            mesh=sidecars,
            http=LOCAL_HTTP_PORT,
            http_metrics=LOCAL_HTTP_METRICS_PORT,
        )

    @classmethod
    def free(
        cls,
        names: Iterable[str] | None = None,
        *,
        metrics: bool = True,
        traces: bool = False,
        mesh: bool = False,
        canary: str | None = None,
        http: bool = False,
        host: str = LOCAL_HOST,
    ) -> PortPlan:
        """Ports the OS picks, for the topology's services (default) or the given names: tests run beside
        each other and beside a developer's `make run`. `traces`: run the trace sink too. `mesh`: a
        sidecar for each, with an outbound listener for each topology service among `names` it calls.
        `canary` (with `mesh`): ports for a canary of that service too (`<service>-canary`). `http`: the HTTP/JSON
        edge in front of the gateway too."""
        wanted = list(SERVICES) if names is None else list(dict.fromkeys(names))
        if canary is not None and mesh:
            wanted.append(canary_name(canary))
        # A canary calls what its service calls.
        calls = {name: service.calls for name, service in SERVICES.items()}
        if canary is not None:
            calls[canary_name(canary)] = SERVICES[canary].calls
        callees = {name: [c for c in calls.get(name, ()) if c in wanted] for name in wanted}
        sidecar_count = sum(1 + len(callees[name]) for name in wanted) if mesh else 0
        # Never one of `make run`'s fixed ports: a stack on free ports runs beside one on those.
        ports = iter(free_ports(6 + len(wanted) * (2 if metrics else 1) + sidecar_count, host))
        nats, monitor, smtp, otlp, http_port, http_metrics = (next(ports) for _ in range(6))
        services = {name: ServicePorts(next(ports), next(ports) if metrics else -1) for name in wanted}
        sidecars = (
            {
                name: SidecarPorts(prometheus=next(ports), outbound={c: next(ports) for c in callees[name]})
                for name in wanted
            }
            if mesh
            else None
        )
        return cls(
            nats=nats,
            nats_monitor=monitor,
            services=services,
            host=host,
            smtp=smtp,
            traces=otlp if traces else None,
            mesh=sidecars,
            http=http_port if http else None,
            http_metrics=http_metrics if http else None,
        )

    def ports_of(self, name: str) -> ServicePorts:
        try:
            return self.services[name]
        except KeyError:
            raise StackError(f"the port plan has no ports for {name!r}") from None

    def address(self, name: str) -> str:
        """Where callers reach `name`: its gRPC server, or in the mesh its sidecar's inbound listener."""
        return f"{self.reachable(self.bind_host(name))}:{self.ports_of(name).grpc}"

    def bind_host(self, name: str) -> str:
        """Where `name`'s gRPC port (in the mesh its sidecar's inbound listener) is bound: the public host for
        the edge service, the plan's host for the rest."""
        return self.public_bind if name in SERVICES and is_edge(name) else self.host

    @property
    def public_bind(self) -> str:
        """Where the public entry points are bound (`public_host`, else the plan's host)."""
        return self.public_host or self.host

    @property
    def public_reach(self) -> str:
        """Where a local client reaches the public entry points."""
        return self.reachable(self.public_bind)

    def reachable(self, bound: str) -> str:
        """The address a local client connects to for a listener bound on `bound`: the plan's host for the
        wildcard (0.0.0.0 is no destination, and the edge's own source address reaches loopback only)."""
        return self.host if ipaddress.ip_address(bound).is_unspecified else bound

    def sidecar_of(self, name: str) -> SidecarPorts:
        if self.mesh is None:
            raise StackError("the port plan has no mesh")
        try:
            return self.mesh[name]
        except KeyError:
            raise StackError(f"the port plan has no sidecar ports for {name!r}") from None

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.nats}"


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not bind host:port now (None: it could)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as servers bind: TIME_WAIT leftovers of a stopped stack's own servers do not count;
        # a listening socket, or a client connection's local end (open or in TIME_WAIT), still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
        return None
