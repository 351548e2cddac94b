"""The topology of shopmesh, declared once: services, their local ports, the call graph, the events.

Everything that needs to know who calls whom derives it from here or is tested against it: the local
launcher (`make run`), Kubernetes NetworkPolicies, mesh authorization, the architecture document.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings


@dataclass(frozen=True)
class Service:
    name: str
    # The Python package that runs it (`python -m <module>`).
    module: str
    # gRPC service names it serves (for health checks and docs).
    grpc_services: tuple[str, ...]
    # Local ports for `make run`; on Kubernetes every pod uses the same container ports.
    grpc_port: int
    metrics_port: int
    # Services it calls over gRPC.
    calls: tuple[str, ...] = ()
    # Owns a database (SQLite locally, PostgreSQL on Kubernetes).
    has_database: bool = True
    # Publishes to / consumes from NATS JetStream.
    publishes: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    # Not needed for the shop to work: callers fall back when it fails.
    critical: bool = True
    # Sends e-mail over SMTP (locally: to the stack's SMTP sink).
    sends_email: bool = False
    owns: tuple[str, ...] = field(default=())

    @property
    def uses_nats(self) -> bool:
        return bool(self.publishes or self.consumes)

    @property
    def address_variable(self) -> str:
        """The environment variable through which callers learn this service's address."""
        return f"{self.name.upper()}_ADDRESS"


# Event subjects (NATS JetStream). Streams: ORDERS (orders.v1.>) and PAYMENTS (payments.v1.>).
ORDER_CONFIRMED = "orders.v1.order_confirmed"
ORDER_CANCELLED = "orders.v1.order_cancelled"
PAYMENT_CAPTURED = "payments.v1.payment_captured"
PAYMENT_REFUNDED = "payments.v1.payment_refunded"

STREAMS: dict[str, tuple[str, ...]] = {
    "ORDERS": ("orders.v1.>",),
    "PAYMENTS": ("payments.v1.>",),
}

SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            name="gateway",
            module="shopmesh_gateway",
            grpc_services=("shopmesh.gateway.v1.ShopService",),
            grpc_port=50050,
            metrics_port=9460,
            calls=("users", "catalog", "inventory", "orders", "recommendations", "notifications"),
            has_database=False,
            owns=("nothing (stateless; rate-limit buckets in memory per replica)",),
        ),
        Service(
            name="users",
            module="shopmesh_users",
            grpc_services=("shopmesh.users.v1.UsersService",),
            grpc_port=50051,
            metrics_port=9461,
            owns=("accounts", "password hashes", "signing keys", "login attempts per e-mail"),
        ),
        Service(
            name="catalog",
            module="shopmesh_catalog",
            grpc_services=("shopmesh.catalog.v1.CatalogService",),
            grpc_port=50052,
            metrics_port=9462,
            owns=("products", "categories", "prices"),
        ),
        Service(
            name="inventory",
            module="shopmesh_inventory",
            grpc_services=("shopmesh.inventory.v1.InventoryService",),
            grpc_port=50053,
            metrics_port=9463,
            owns=("stock levels", "reservations"),
        ),
        Service(
            name="orders",
            module="shopmesh_orders",
            grpc_services=("shopmesh.orders.v1.OrdersService",),
            grpc_port=50054,
            metrics_port=9464,
            calls=("catalog", "inventory", "payments"),
            publishes=(ORDER_CONFIRMED, ORDER_CANCELLED),
            owns=("orders", "saga state", "outbox"),
        ),
        Service(
            name="payments",
            module="shopmesh_payments",
            grpc_services=("shopmesh.payments.v1.PaymentsService",),
            grpc_port=50055,
            metrics_port=9465,
            publishes=(PAYMENT_CAPTURED, PAYMENT_REFUNDED),
            owns=("payments", "refunds", "idempotency records", "the fake processor's ledger"),
        ),
        Service(
            name="notifications",
            module="shopmesh_notifications",
            grpc_services=("shopmesh.notifications.v1.NotificationsService",),
            grpc_port=50056,
            metrics_port=9466,
            consumes=(ORDER_CONFIRMED, ORDER_CANCELLED),
            sends_email=True,
            owns=("sent notifications", "processed event ids"),
        ),
        Service(
            name="recommendations",
            module="shopmesh_recommendations",
            grpc_services=("shopmesh.recommendations.v1.RecommendationsService",),
            grpc_port=50057,
            metrics_port=9467,
            calls=("catalog",),
            consumes=(ORDER_CONFIRMED, ORDER_CANCELLED),
            critical=False,
            owns=("co-purchase counts (derived from order events)",),
        ),
    )
}


# The gRPC methods each call in the graph uses: caller -> callee -> method names of the callee's gRPC service.
# Under a mesh on Kubernetes a caller may call only these (least privilege per method: the charts'
# `callerMethods`, which k8s/caller_methods.py writes from this); tests/k8s also reads every stub call in each caller's
# package, so a method a caller starts calling fails the tests until it is added here.
METHODS_CALLED: dict[str, dict[str, tuple[str, ...]]] = {
    "gateway": {
        "users": ("Register", "Login", "GetUser", "GetJwks", "SignOut", "GetTokenCutoff"),
        "catalog": ("GetProduct", "ListProducts", "SearchProducts"),
        "inventory": ("GetStock",),
        "orders": ("PlaceOrder", "GetOrder", "ListOrders", "CancelOrder"),
        "recommendations": ("ListRecommendations",),
        "notifications": ("ListNotifications",),
    },
    "orders": {
        "catalog": ("BatchGetProducts",),
        "inventory": ("Reserve", "CommitReservation", "ReleaseReservation"),
        "payments": ("Charge", "ListPayments", "Refund"),
    },
    "recommendations": {
        "catalog": ("GetProduct", "ListProducts", "BatchGetProducts"),
    },
}


def methods_called(caller: str, callee: str) -> tuple[str, ...]:
    """The methods of `callee` that `caller` calls (none when it does not call it)."""
    return METHODS_CALLED.get(caller, {}).get(callee, ())


def paths_called(caller: str, callee: str) -> tuple[str, ...]:
    """The full gRPC paths (`/package.Service/Method`) of the methods of `callee` that `caller` calls: what a
    mesh's policy matches (the charts' callerPaths, the local sidecars' RBAC)."""
    # The method names are within the callee's one gRPC service, as the charts require too.
    [grpc_service] = SERVICES[callee].grpc_services
    return tuple(f"/{grpc_service}/{method}" for method in methods_called(caller, callee))


# In callers_of: callers from outside the service graph (the edge's).
CLIENTS = "clients"


def callers_of(name: str) -> tuple[str, ...]:
    """The services that call `name` (plus CLIENTS for the gateway)."""
    callers = tuple(s.name for s in SERVICES.values() if name in s.calls)
    return (CLIENTS, *callers) if name == "gateway" else callers


def is_edge(name: str) -> bool:
    """Called from outside the service graph (by clients), not only by services."""
    return CLIENTS in callers_of(name)


def settings_class(service: str) -> type[BaseSettings]:
    """The settings class `service` reads its environment with: the one its `settings` module defines. Imported
    when asked, so that the platform depends on no service."""
    from pydantic_settings import BaseSettings

    module = importlib.import_module(f"shopmesh_{service}.settings")
    (found,) = (
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
    )
    return found


def service_callers(name: str) -> tuple[str, ...]:
    """The services (only) that call `name`."""
    return tuple(caller for caller in callers_of(name) if caller != CLIENTS)


# Local defaults for `make run`. The embedded nats-server avoids 4222, where a system NATS may listen.
LOCAL_HOST = "127.0.0.1"
LOCAL_NATS_PORT = 14222
LOCAL_NATS_MONITOR_PORT = 18222
# The local SMTP sink (`shopmesh_platform.smtp_sink`) that stands in for a mail provider.
LOCAL_SMTP_PORT = 8025
# The local trace sink (`shopmesh_platform.trace_sink`, OTLP/gRPC), beside 4317 where a collector may listen.
LOCAL_TRACES_PORT = 14317

# The public API over HTTP/JSON and gRPC-Web (`http_api`: an Envoy in front of the gateway), at 8080 as the
# OpenTelemetry demo's frontend proxy; its Prometheus metrics (`/stats/prometheus` and `/healthz` alone: its
# admin interface is on a Unix socket, as the sidecars') at 15500, beside the sidecars'.
LOCAL_HTTP_PORT = 8080
LOCAL_HTTP_METRICS_PORT = 15500
# Where that edge connects to the gateway from, without the mesh: a loopback address no other local client
# comes from (they come from LOCAL_HOST; Linux routes all of 127.0.0.0/8 to loopback), so that the gateway
# trusts the edge's X-Forwarded-For and trace decisions, and not a client calling it directly.
LOCAL_EDGE_SOURCE = "127.0.0.2"

# The local mesh (`make run MESH=envoy`). A service keeps its gRPC port, now its sidecar's inbound
# listener. By the service's place in SERVICES (gateway 0 ... recommendations 7): the sidecar's Prometheus
# metrics (`/stats/prometheus` alone, as Istio's 15090: its admin interface is on a Unix socket) are at
# 15000 + place, and the sidecar's outbound listener for a callee at 15100 + 10 * place + the callee's place
# (the service itself listens on a Unix socket, no port): orders (4) reaches inventory (3) through 15143. All
# below the kernel's ephemeral range (32768-60999): a client connection there can hold a port for a minute
# after it closes (TIME_WAIT), and a dozen ports are more likely to meet one than a few.
LOCAL_SIDECAR_PROMETHEUS_BASE = 15000
LOCAL_OUTBOUND_PORT_BASE = 15100
# A canary (`make run MESH=envoy RUN_ARGS="--postgres --canary catalog:20"`), by its service's place: its
# sidecar's inbound listener at 15300 + place, its metrics at 15310 + place, its sidecar's Prometheus
# metrics at 15330 + place and outbound listeners at 15400 + 10 * place + the callee's place.
LOCAL_CANARY_PORT_BASE = 15300
LOCAL_CANARY_OUTBOUND_PORT_BASE = 15400
# A canary's process name: `<service>-canary` (its sidecar: `<service>-canary-sidecar`).
CANARY_SUFFIX = "-canary"


def canary_name(service: str) -> str:
    return f"{service}{CANARY_SUFFIX}"


@dataclass(frozen=True)
class SidecarPorts:
    """The ports of one service's sidecar in the local mesh; its inbound port is the service's gRPC port. (The
    service itself listens on a Unix socket, where only its sidecar calls it: no port.)"""

    # Envoy's `/stats/prometheus` and nothing else of its admin interface (which is on a Unix socket: it can stop
    # Envoy, set its faults, dump its keys' paths), for a scraper.
    prometheus: int
    # Callee name → this sidecar's outbound listener for it.
    outbound: Mapping[str, int]


def local_sidecar_ports(name: str) -> SidecarPorts:
    """The fixed local ports of `name`'s sidecar (`make run MESH=envoy`)."""
    places = _places()
    place = places[name]
    return SidecarPorts(
        prometheus=LOCAL_SIDECAR_PROMETHEUS_BASE + place,
        outbound={callee: LOCAL_OUTBOUND_PORT_BASE + 10 * place + places[callee] for callee in SERVICES[name].calls},
    )


@dataclass(frozen=True)
class CanaryPorts:
    """The fixed local ports of a canary of a service and of its sidecar."""

    # Its sidecar's inbound listener: where the callers' sidecars send the canary's share of the calls.
    inbound: int
    metrics: int
    sidecar: SidecarPorts


def local_canary_ports(name: str) -> CanaryPorts:
    places = _places()
    place = places[name]
    base = LOCAL_CANARY_PORT_BASE + place
    return CanaryPorts(
        inbound=base,
        metrics=base + 10,
        sidecar=SidecarPorts(
            prometheus=base + 30,
            outbound={
                callee: LOCAL_CANARY_OUTBOUND_PORT_BASE + 10 * place + places[callee] for callee in SERVICES[name].calls
            },
        ),
    )


def _places() -> dict[str, int]:
    return {name: place for place, name in enumerate(SERVICES)}
