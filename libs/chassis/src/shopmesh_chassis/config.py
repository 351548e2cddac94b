"""Typed configuration from the environment (pydantic-settings).

Every service extends `ServiceSettings` with its own fields. Variable names are the field names in
upper case (`GRPC_PORT`, `DATABASE_URL`, ...). Invalid configuration stops startup with one line that
names each bad variable: `load_settings` raises `ConfigError`, and `shopmesh_chassis.run` prints it
and exits with status 2. Secrets may come as files instead (SECRETS_DIR, see `load_settings`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shopmesh_chassis.db import POSTGRES_MAX_OVERFLOW, POSTGRES_POOL_SIZE, normalize_url
from shopmesh_chassis.nats_urls import InvalidNatsUrl, parse_nats_url, shown_nats_url


class ConfigError(Exception):
    """Configuration that cannot start a service; the message is one line naming the variables."""


class StartupFailed(Exception):
    """A start that cannot go on now but may next time (the orchestrator restarts the pod); the message is
    one line saying why."""


class MigratedOnly(Exception):
    """Raised by `migrations.migrate` under MIGRATE_ONLY once the database is at its heads, so that every service
    stops there, before it builds anything more or opens a port: `app.run` exits 0. One exception rather than a
    branch in each service's wiring, which calls `migrate` first thing and goes on to serve."""


# SHUTDOWN_HOOKS_BUDGET_SECONDS must be at least SHUTDOWN_GRACE_SECONDS and this much more. The first hook
# (notifications' `sender.stop`, orders' `stop_background`) waits up to the grace for work in flight, but
# gets only the budget less a reserve for each hook after it (app.HOOK_RESERVE_SECONDS, 1 s: the
# `database.dispose` after it) and, if cut off, is cancelled half a second before its time is up
# (app.HOOK_UNWIND_SECONDS). A budget just above the grace (grace 10, budget 10.5) would cut it off inside
# the grace, as if it had hung. 3 s: 1 s of reserve, 0.5 s to unwind, and 1.5 s after the grace to stop
# relays (the outbox stops its purge within 0.5 s, then makes a last pass of up to 1 s) and close NATS and
# client channels. The Helm chart enforces the same number (_config.tpl; tests/k8s hold the two equal).
SHUTDOWN_HOOKS_MARGIN_SECONDS = 3.0
# The longest duration gRPC's channel arguments take: milliseconds in a C int.
GRPC_DURATION_MAX_SECONDS = (2**31 - 1) // 1000
# No wait or timeout of the chassis needs more; larger ones are typing mistakes (or inf). An `Interval`'s bound,
# which services' own limits build on.
DAY_SECONDS = 86400.0
# Nor does any retention; it also keeps JetStream's max_age (nanoseconds in an int64) in range.
RETENTION_MAX_SECONDS = 3650 * DAY_SECONDS

# A period, lease or backoff of a service: positive and finite, at most a day (inf overflows a timedelta,
# and asyncio would wait for ever).
Interval = Annotated[float, Field(gt=0, le=DAY_SECONDS, allow_inf_nan=False)]
# The `timeout=` of an outbound gRPC call (CLIENT_DEFAULT_TIMEOUT_SECONDS, each service's per-dependency and
# step timeouts): gRPC's deadline arithmetic overflows on a huge one (inf, 1e10), and every call then fails
# at once with DEADLINE_EXCEEDED. Bounded as an Interval, named for what it guards.
OutboundTimeout = Interval
# The fields every service sets its own default for. A subclass that redeclared `grpc_port: int = 50054`
# would drop the bounds (pydantic takes the new annotation whole), and GRPC_PORT=70000 would then serve on
# 4464; so services declare them with these types, and ServiceSettings refuses a subclass that does not.
ServiceName = Annotated[str, Field(min_length=1, pattern=r"^[a-z][a-z0-9-]*$")]
GrpcPort = Annotated[int, Field(ge=0, le=65535)]
# -1 disables the metrics endpoint; 0 picks a free port.
MetricsPort = Annotated[int, Field(ge=-1, le=65535)]
# sockaddr_un's sun_path is 108 bytes on Linux, the last one the terminating NUL.
UNIX_SOCKET_PATH_MAX_BYTES = 107
# GRPC_MAX_CONCURRENT_RPCS when unset (see ServiceSettings).
DEFAULT_MAX_CONCURRENT_RPCS = 1000
# A gRPC message size limit: gRPC takes it as a C int.
MessageBytes = Annotated[int, Field(ge=64 * 1024, le=2**31 - 1)]

# The name-resolver schemes gRPC's core takes in a target besides a bare host:port (dns:///catalog:50052,
# unix:/run/catalog.sock, ipv4:10.0.0.1:50052, ...). Any other scheme (http://) gRPC reads as part of a host
# name, and every call fails at its first resolution, Login INTERNAL.
GRPC_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:")
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.%\w]+\]|[^\s:/\[\]@]+):(?P<port>[0-9]{1,5})$")


def _a_grpc_target(value: str) -> str:
    # Checked here, the mistake is one line naming the variable (exit 2); the service otherwise started, said
    # SERVING, and failed every call that needed this dependency.
    if value.startswith(GRPC_TARGET_SCHEMES):
        if not value.partition(":")[2].strip("/"):
            raise ValueError("names no address after its scheme (e.g. dns:///catalog:50052)")
        return value
    found = _HOST_PORT.match(value)
    if found is None or not 0 < int(found["port"]) <= 65535:
        raise ValueError(
            "must be host:port (e.g. catalog:50052, [::1]:50052) or a target with one of the schemes gRPC "
            f"takes ({', '.join(GRPC_TARGET_SCHEMES)})"
        )
    return value


# Where a service's client channel calls another service (USERS_ADDRESS, CATALOG_ADDRESS, ...): a gRPC target.
GrpcTarget = Annotated[str, AfterValidator(_a_grpc_target)]


class RuntimeSettings(BaseSettings):
    """What the process needs before its event loop runs (read by `shopmesh_chassis.app.run`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    # uvloop runs grpc.aio's callbacks, tasks and timers in C: ~70 µs less CPU per RPC and ~8 % less per
    # checkout (docs/benchmarks.md). `asyncio` is the standard library's loop, for debugging a suspected
    # loop problem.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class ServiceSettings(RuntimeSettings):
    """Settings every shopmesh service has."""

    service_name: ServiceName
    # The ErrorInfo.domain of this service's errors; defaults to `shopmesh.<service_name>`.
    error_domain: str = ""
    # true: migrate the database to its heads and exit 0, serving nothing. The Helm chart's `migrate` init container
    # runs the image so, before the app container: no probe bounds an init container, so a long migration (an
    # index built concurrently on millions of rows) runs to its end, where the app container's startup probe
    # killed it and every retry started over (docs/operations.md, "Migrations and locks").
    # `Database.from_settings` hands it to `migrations.migrate`; `app.serve` refuses it in a service that has no
    # database, which never migrates.
    migrate_only: bool = False

    # Empty would be taken by grpcio as every address; a name that does not resolve stops the start (exit 2).
    grpc_host: str = Field(default="127.0.0.1", min_length=1)
    # 0 picks a free port (tests); the bound port is logged and exposed by the server.
    grpc_port: GrpcPort = 50051
    # An absolute path: serve on this Unix domain socket instead of GRPC_HOST:GRPC_PORT (no TCP port at all).
    # The local mesh (`make run MESH=envoy`) puts each service behind its sidecar on one, in a folder only its
    # user can open, so that nothing else on the machine reaches the service past its sidecar's mutual TLS
    # and policy, as iptables sends a pod's traffic through its proxy. Empty: TCP.
    grpc_unix_socket: str = ""
    # Calls admitted into handlers at once; more are shed with RESOURCE_EXHAUSTED (health checks never are).
    # Bounded by default: with gRPC core's overload protection off (server.py) it is the only bound on handlers
    # still ending after their clients reset their calls (HTTP/2 rapid reset, CVE-2023-44487). 1,000 is 2.5
    # times the 400 concurrent checkouts one gateway takes in the audit's burst and fits a pod's 256 MiB limit
    # (a held call costs the sample service 22 KiB); 0 = unbounded, for a caller that bounds them otherwise.
    grpc_max_concurrent_rpcs: int = Field(default=DEFAULT_MAX_CONCURRENT_RPCS, ge=0)
    # Calls (HTTP/2 streams) one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    # GRPC_MAX_CONCURRENT_RPCS counts calls in handlers only: a call whose request never comes is held below
    # them, 10-18 KB apiece until the connection's max age, so without this bound one connection could take the
    # server to its memory limit. Callers are not starved by it: gRPC clients queue their calls past it on the
    # connection (in order, within their deadlines) and Envoy opens another connection. 100, as the HTTP edge
    # offers (docs/http-api.md), is far above what one caller has in flight to one replica in this system (a
    # service's handlers wait on a pool of 6 database connections).
    grpc_max_concurrent_streams: int = Field(default=100, ge=1, le=2**31 - 1)
    # gRPC takes these in milliseconds as a C int: at most about 24.8 days (GRPC_DURATION_MAX_SECONDS).
    grpc_keepalive_time_seconds: float = Field(default=30.0, gt=0, le=GRPC_DURATION_MAX_SECONDS, allow_inf_nan=False)
    grpc_keepalive_timeout_seconds: float = Field(default=10.0, gt=0, le=GRPC_DURATION_MAX_SECONDS, allow_inf_nan=False)
    # Connections are recycled so that clients re-resolve and rebalance over new replicas.
    grpc_max_connection_age_seconds: float = Field(
        default=300.0, gt=0, le=GRPC_DURATION_MAX_SECONDS, allow_inf_nan=False
    )
    grpc_max_connection_age_grace_seconds: float = Field(
        default=30.0, ge=0, le=GRPC_DURATION_MAX_SECONDS, allow_inf_nan=False
    )
    # A connection with no call for this long is closed (GOAWAY): no keepalive ping goes out on a connection
    # without calls, so a vanished client's idle connection (~17 KB) stayed until its max age. A client that
    # still wants it connects again on its next call, as after a max-age GOAWAY.
    grpc_max_connection_idle_seconds: float = Field(
        default=60.0, gt=0, le=GRPC_DURATION_MAX_SECONDS, allow_inf_nan=False
    )

    # The largest request message the server reads (gRPC's default, 4 MiB); a larger one is refused with
    # RESOURCE_EXHAUSTED before any handler runs. A service that forwards requests (the gateway) takes less
    # than the services it calls, so that what it adds on the way still fits theirs.
    grpc_max_receive_message_bytes: MessageBytes = 4 * 1024 * 1024

    metrics_port: MetricsPort = 9464
    metrics_host: str = "127.0.0.1"

    # Drain: health turns NOT_SERVING for `drain_delay_seconds` (load balancers notice and stop
    # sending), then the server refuses new calls and gives in-flight ones `shutdown_grace_seconds`.
    drain_delay_seconds: float = Field(default=0.0, ge=0, le=DAY_SECONDS, allow_inf_nan=False)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=DAY_SECONDS, allow_inf_nan=False)
    # Then the service's shutdown hooks run, in order, within `shutdown_hooks_budget_seconds` altogether
    # (app.run_shutdown_hooks cancels the one that overruns). Some hooks wait for their own work in flight
    # up to `shutdown_grace_seconds` (notifications' e-mail being sent, orders' sagas), so the budget must
    # be at least the grace and SHUTDOWN_HOOKS_MARGIN_SECONDS more; the default leaves 5 s beyond it for
    # stopping relays and consumers and closing NATS, channels and the database.
    shutdown_hooks_budget_seconds: float = Field(default=15.0, gt=0, le=DAY_SECONDS, allow_inf_nan=False)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    # OpenTelemetry: spans are always made (trace ids in logs, W3C propagation); they are exported
    # over OTLP/gRPC only when an endpoint is set.
    otel_exporter_otlp_endpoint: str | None = None
    otel_traces_sampler_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    # Default deadline of outbound calls made through the chassis' client channels.
    client_default_timeout_seconds: OutboundTimeout = 5.0

    @field_validator("grpc_unix_socket")
    @classmethod
    def _a_socket_path_the_kernel_takes(cls, value: str) -> str:
        # Found here, one line naming the variable (exit 2); found by grpcio at bind time, a relative path was
        # taken from wherever the process happened to start, and a long one failed as "Failed to bind".
        if value:
            if not os.path.isabs(value):
                raise ValueError("must be an absolute path (e.g. /run/shopmesh/catalog.sock)")
            try:
                # grpcio encodes the address as strict UTF-8: bytes the locale did not decode, which os.environ
                # keeps as surrogate escapes, could never be bound (refused as a codec's error before).
                value.encode()
            except UnicodeEncodeError:
                raise ValueError("holds bytes that are not UTF-8, which grpcio needs in a path") from None
            # The kernel counts bytes: os.fsencode gives back those the environment held (it undoes os.environ's
            # decoding), as shopmesh_platform measures the paths it plans.
            size = len(os.fsencode(value))
            if size > UNIX_SOCKET_PATH_MAX_BYTES:
                raise ValueError(
                    f"is {size} bytes long; a Unix socket's path takes at most {UNIX_SOCKET_PATH_MAX_BYTES} "
                    "(choose a shorter folder)"
                )
        return value

    @property
    def handler_limit(self) -> int | None:
        """The calls admitted into handlers at once (GRPC_MAX_CONCURRENT_RPCS), streams included and at most a
        tenth of them (server_interceptor.STREAMS_SHARE), None for unbounded (0)."""
        return self.grpc_max_concurrent_rpcs or None

    @property
    def grpc_listen_address(self) -> str:
        """Where the server binds, as gRPC writes it: `unix:<path>`, or host:port."""
        if self.grpc_unix_socket:
            return f"unix:{self.grpc_unix_socket}"
        return host_port(self.grpc_host, self.grpc_port)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # A redeclared field keeps the bounds it inherits (see ServiceName): checked once, at import.
        for base in cls.__mro__[1:]:
            if not (isinstance(base, type) and issubclass(base, ServiceSettings)):
                continue
            for name, inherited in base.model_fields.items():
                if inherited.metadata and _bounds(cls.model_fields[name].metadata) != _bounds(inherited.metadata):
                    raise TypeError(
                        f"{cls.__name__}.{name} drops the bounds {base.__name__} gives it: declare it with the "
                        "same type (shopmesh_chassis.config.GrpcPort, MetricsPort, ServiceName, Interval, ...)"
                    )

    def follows_trace_decision_of(self, peer: str) -> bool:
        """Whether a caller at `peer` (a gRPC peer string) decides whether its calls are recorded: its
        traceparent's "sampled" is followed, else drawn again at the ratio (tracing.UNVOUCHED_PARENT). Every
        caller of an internal service is a service, or a proxy that decided; an edge service overrides this
        for its outside clients."""
        return True

    def trace_decision_callback(self) -> Callable[[str], bool] | None:
        """follows_trace_decision_of for the server, or None where the class keeps the default: asking
        would cost a context.peer() on every traced call to learn what is always True."""
        if type(self).follows_trace_decision_of is ServiceSettings.follows_trace_decision_of:
            return None
        return self.follows_trace_decision_of

    @property
    def resolved_error_domain(self) -> str:
        return self.error_domain or f"shopmesh.{self.service_name}"

    @model_validator(mode="after")
    def _hooks_budget_outlasts_the_grace(self) -> ServiceSettings:
        # Just above the grace would be too short: a hook that waits the whole grace would be cut off by the
        # budget, as if it had hung (see SHUTDOWN_HOOKS_MARGIN_SECONDS).
        if self.shutdown_hooks_budget_seconds < self.shutdown_grace_seconds + SHUTDOWN_HOOKS_MARGIN_SECONDS:
            raise ValueError(
                f"SHUTDOWN_HOOKS_BUDGET_SECONDS ({self.shutdown_hooks_budget_seconds:g}) must be at least "
                f"SHUTDOWN_GRACE_SECONDS ({self.shutdown_grace_seconds:g}) + {SHUTDOWN_HOOKS_MARGIN_SECONDS:g}: "
                "shutdown hooks wait up to the grace for their own work in flight, and need time after it to "
                "close connections"
            )
        return self


def host_port(host: str, port: int) -> str:
    """`host:port` as gRPC targets write it: an IPv6 literal in brackets (`[::]:50051`, `[::1]:50051`)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _bounds(metadata: list[Any]) -> list[Any]:
    """A field's constraints in a form that compares by value: pydantic's general metadata (`pattern`, ...)
    has no __eq__ and compares by identity, so the very same pattern written out again would look dropped.
    annotated_types' (MinLen, Ge, ...) are dataclasses, compared as they are; the order is not theirs."""
    keyed = [
        (type(m).__module__, type(m).__qualname__, sorted(vars(m).items())) if hasattr(m, "__dict__") else m
        for m in metadata
    ]
    return sorted(keyed, key=repr)


class DatabaseSettings(ServiceSettings):
    """For services that own a database: SQLite under DATA_DIR unless DATABASE_URL says otherwise."""

    data_dir: str = ".data"
    # e.g. postgresql://catalog:secret@db:5432/catalog ; empty = sqlite file <DATA_DIR>/<SERVICE_NAME>.db
    database_url: str = ""
    # PostgreSQL only (SQLite's pool never waits): the connections a replica keeps open, and how many more it
    # opens under load. Its calls, the outbox relay's lock connection and the migrations' all take from this
    # pool, so a replica holds at most their sum, until its last shutdown hook: times the pods of every service
    # (their replicas, a rolling update's surge pod and the old pods still draining), it must fit the server's
    # max_connections (docs/kubernetes.md, "PostgreSQL connections"), or pods fail to start ("too many clients").
    database_pool_size: int = Field(default=POSTGRES_POOL_SIZE, ge=1, le=1000)
    database_max_overflow: int = Field(default=POSTGRES_MAX_OVERFLOW, ge=0, le=1000)

    @model_validator(mode="after")
    def _a_connection_beside_the_relays(self) -> DatabaseSettings:
        # The outbox relay keeps one connection for as long as it leads: with a single one in all, every call
        # would wait for the pool's timeout and fail.
        if self.database_pool_size + self.database_max_overflow < 2:
            raise ValueError(
                f"DATABASE_POOL_SIZE ({self.database_pool_size}) + DATABASE_MAX_OVERFLOW "
                f"({self.database_max_overflow}) must be at least 2: the outbox relay holds one connection while "
                "it leads, and calls need another"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _a_database_can_be_opened_from_it(cls, value: str) -> str:
        # Found here, the mistake is one line naming the variable (exit 2); found by SQLAlchemy when the
        # engine is made, it was a traceback (exit 1).
        if value:
            normalize_url(value)
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir}/{self.service_name}.db"


class IdempotencySettings(DatabaseSettings):
    """For services that keep idempotency records (shopmesh_chassis.idempotency)."""

    # A request's fingerprint is stored beside its idempotency key to tell a retry from another request.
    # Requests carry card numbers, so the fingerprint is an HMAC under this key, never a plain hash that a
    # database dump could be brute-forced against. Required with DATABASE_URL (give it from a Secret); on
    # the local SQLite default a key is generated once into DATA_DIR.
    idempotency_fingerprint_key: SecretStr | None = Field(default=None, min_length=32)

    @model_validator(mode="after")
    def _key_given_with_a_database_url(self) -> IdempotencySettings:
        if self.database_url and self.idempotency_fingerprint_key is None:
            raise ValueError(
                "IDEMPOTENCY_FINGERPRINT_KEY is required when DATABASE_URL is set (32+ characters, from a Secret)"
            )
        return self


class EventSettings(ServiceSettings):
    """For services that publish to or consume from NATS JetStream."""

    # A token or user and password percent-encoded (`nats://to%2Fken@nats:4222`): see nats_urls.
    nats_url: str = "nats://127.0.0.1:14222"

    @field_validator("nats_url")
    @classmethod
    def _credentials_read_as_meant(cls, value: str) -> str:
        # Found here, a raw '/' in a token is one line saying to percent-encode it (exit 2); found by nats-py,
        # it was the token taken for a host, a DNS failure retried for ever.
        try:
            parse_nats_url(value)
        except InvalidNatsUrl as exc:
            raise ValueError(exc.problem) from None
        return value

    # How long JetStream remembers message ids to drop duplicate publishes (outbox retries).
    nats_duplicate_window_seconds: Interval = 900.0
    # How long a stream keeps an event (JetStream max_age; 0 = for ever). An event that no consumer has
    # acknowledged by then is dropped, and with it the e-mail or the counts it stood for: a consumer down,
    # or its database away, for longer loses events. The publisher's start brings the stream to this value;
    # a consumer creates a missing stream with its own but never changes an existing one (it keeps processed
    # event ids for the stream's actual max age), so give both the same value.
    nats_stream_max_age_seconds: float = Field(
        default=7 * DAY_SECONDS, ge=0, le=RETENTION_MAX_SECONDS, allow_inf_nan=False
    )
    # Published outbox rows are deleted this long after JetStream acknowledged them (0 = kept for ever).
    # Nothing reads a published row again: it is kept for inspection, and so that an operator could set
    # events of the last day unpublished for the relay to send again (a NATS store lost). Unpublished
    # events are never deleted. A day is far beyond the duplicate window the relay's retries rely on.
    outbox_retention_seconds: float = Field(default=DAY_SECONDS, ge=0, le=RETENTION_MAX_SECONDS, allow_inf_nan=False)
    # A consumer forgets an applied event id this long after applying it (0 = never). JetStream may
    # deliver a message again for as long as its stream holds it (a durable deleted and created anew
    # starts from the first stored message; an acknowledgement lost): the id is what makes that a
    # duplicate instead of a second e-mail. A message leaves the stream NATS_STREAM_MAX_AGE_SECONDS after
    # it was stored, and was applied after that, so ids must be kept at least that long: the default
    # keeps them a day more, for clocks of NATS and the service that disagree.
    processed_events_retention_seconds: float = Field(
        default=8 * DAY_SECONDS, ge=0, le=RETENTION_MAX_SECONDS, allow_inf_nan=False
    )
    # How often the outbox relay and the consumers delete what is past their retention.
    event_purge_interval_seconds: Interval = 3600.0

    @model_validator(mode="after")
    def _retentions_fit_together(self) -> EventSettings:
        max_age = self.nats_stream_max_age_seconds
        if max_age and max_age < self.nats_duplicate_window_seconds:
            # JetStream itself refuses such a stream.
            raise ValueError(
                f"NATS_STREAM_MAX_AGE_SECONDS ({max_age:g}) must be at least NATS_DUPLICATE_WINDOW_SECONDS "
                f"({self.nats_duplicate_window_seconds:g}), or 0 (for ever)"
            )
        retention = self.processed_events_retention_seconds
        if retention and (not max_age or retention < max_age):
            raise ValueError(
                f"PROCESSED_EVENTS_RETENTION_SECONDS ({retention:g}) must be 0 (for ever) or at least "
                f"NATS_STREAM_MAX_AGE_SECONDS ({max_age:g}, 0 = for ever): an event still on the stream may be "
                "delivered again, and only its remembered id keeps that from having a second effect"
            )
        return self


# A delay JetStream can take (it gets nanoseconds): finite, and at most a day.
RetryDelay = Annotated[float, Field(ge=0, le=DAY_SECONDS, allow_inf_nan=False)]


class ConsumerSettings(EventSettings):
    """For services that consume events (shopmesh_chassis.consumer.EventConsumer.from_settings)."""

    # A handler that fails (a poison message) is retried after these delays (JSON list, e.g.
    # CONSUMER_BACKOFF_SECONDS='[0.1, 0.5]'; the last one repeats), and after CONSUMER_MAX_ATTEMPTS
    # deliveries parked on the DEADLETTER stream. While the database is away, events are retried with the
    # same delays until it is back, and never parked.
    consumer_max_attempts: int = Field(default=5, ge=1, le=100)
    consumer_backoff_seconds: tuple[RetryDelay, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    # Messages handed to a consumer that dies unacknowledged come back after this long; it must exceed
    # the time a batch of 20 events takes to handle.
    consumer_ack_wait_seconds: float = Field(default=30.0, ge=1, le=DAY_SECONDS, allow_inf_nan=False)
    # An event of a subject this release does not consume (a newer release's, mid-rollout) is handed back
    # for a replica that does for at least this long after it was stored; past it, it is parked as a dead
    # letter once the durable is short of slots: each one handed back stays ack-pending on the durable, and
    # a full rollback would otherwise fill the durable's max_ack_pending with them and stall the events this
    # release does consume.
    consumer_handback_max_seconds: float = Field(default=120.0, ge=1, le=DAY_SECONDS, allow_inf_nan=False)
    # The most messages the durable holds delivered and unsettled (JetStream's max_ack_pending): past it the
    # server delivers nothing more. Overdue handed-back events are parked once half of it is taken. Set it to
    # what the account's JetStream limits allow when they cap it below 1000.
    consumer_max_ack_pending: int = Field(default=1000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _some_backoff(self) -> ConsumerSettings:
        if not self.consumer_backoff_seconds:
            raise ValueError("CONSUMER_BACKOFF_SECONDS must list at least one delay, e.g. '[1]'")
        return self


SettingsT = TypeVar("SettingsT", bound=RuntimeSettings)


def _describe(error: dict[str, Any], secrets: frozenset[str]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    if not location:
        # A rule over several variables (a model validator): its message names them.
        return str(error.get("msg", "invalid")).removeprefix("Value error, ")
    field = location.split(".")[0]
    given = error.get("input")
    # A secret's value is never shown: this line goes to the pod's logs. Nor a URL's password, wherever in
    # it the password may be.
    hidden = error.get("type") == "missing" or isinstance(given, dict) or field in secrets
    if not hidden and field == "nats_url":
        # NATS reads a user part without a colon as a token: masked whole (shown_url would show it as a user).
        given = shown_nats_url(given) if isinstance(given, str) else None
    elif not hidden and field.endswith("_url"):
        given = shown_url(given) if isinstance(given, str) else None
        hidden = given is None
    shown = "" if hidden else f"={given!r}"
    return f"{field.upper()}{shown}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def shown_url(url: str) -> str | None:
    """`url` as it may be shown in a log line: its scheme, user, host and path, with the password of its user
    part and the value of every query parameter masked (libpq takes `?password=`, and `?passfile=`,
    `?sslkey=` name secrets too). None when what is safe cannot be told: not a URL at all (libpq's
    `host=db password=...` keyword/value string, a mistyped `postgresql//user:pass@host`), or an '@' after
    the host, where the parse may have split a password (a '/', '?' or '#' in it, unescaped)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = url[: len(parts.scheme)]
    if not scheme or not url.startswith("://", len(scheme)) or "@" in parts.path + parts.query + parts.fragment:
        return None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    netloc = f"{user}{':***' if colon else ''}{at}{','.join(map(_without_odd_port, hosts.split(',')))}"
    shown = f"{scheme}://{netloc}{parts.path}"
    if parts.query:
        shown += "?" + "&".join(
            f"{name}=***" if equals else "***"
            for name, equals, _ in (item.partition("=") for item in parts.query.split("&"))
        )
    return shown + ("#***" if parts.fragment else "")


def _without_odd_port(host: str) -> str:
    # A URL whose '@' was forgotten (`postgresql://shop:S3cret/shop`) reads its password as the port.
    name, colon, port = host.rpartition(":")
    if not colon or host.endswith("]") or port.isdigit():
        return host
    return f"{name}:***"


def _secret_fields(cls: type[BaseSettings]) -> frozenset[str]:
    return frozenset(
        name
        for name, info in cls.model_fields.items()
        if info.annotation is SecretStr or SecretStr in get_args(info.annotation)
    )


SECRETS_DIR = "SECRETS_DIR"


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read `cls` from the environment, then from files in SECRETS_DIR when it is set (one file per
    variable, named after it: a Kubernetes Secret mounted as a volume); `overrides` win over both.

    Secrets as files rather than environment variables: a process's environment is copied to every
    child and shows in /proc/<pid>/environ and crash reports; a file is read once, by this process."""
    secrets_dir = os.environ.get(SECRETS_DIR, "")
    if secrets_dir and not os.path.isdir(secrets_dir):
        raise ConfigError(f"invalid configuration: {SECRETS_DIR}={secrets_dir!r}: not a directory")
    try:
        # pydantic-settings' init option; passed as a mapping, which its mypy plugin does not model.
        source_options: dict[str, Any] = {"_secrets_dir": secrets_dir or None}
        return cls(**overrides, **source_options)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e), _secret_fields(cls)) for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {_unparsed(cls, exc)}") from None


_UNPARSED_FIELD = re.compile(r'field "(?P<field>\w+)"')


def _unparsed(cls: type[BaseSettings], error: SettingsError) -> str:
    """The line for a value pydantic-settings could not decode before validation: a complex field's (a tuple,
    a list, a dict) is read as JSON, and anything else (CONSUMER_BACKOFF_SECONDS=0.5,1) is a SettingsError,
    whose message names the field in its own words. The value is not shown: it may be a secret's file."""
    found = _UNPARSED_FIELD.search(str(error))
    field = cls.model_fields.get(found["field"]) if found else None
    if found is None or field is None:
        return str(error)
    form = (
        "a JSON object, e.g. '{\"a\": 1}'" if get_origin(field.annotation) is dict else "a JSON list, e.g. '[0.5, 1]'"
    )
    return f"{found['field'].upper()}: is not valid JSON; give {form}"
