"""The gateway's settings: where the internal services are, each one's time budget, rate limits, tokens.

The gateway owns no data, so it extends ServiceSettings (no database)."""

from __future__ import annotations

import functools
import ipaddress
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from shopmesh_chassis.config import (
    GrpcPort,
    GrpcTarget,
    Interval,
    MessageBytes,
    MetricsPort,
    OutboundTimeout,
    RetryDelay,
    ServiceName,
    ServiceSettings,
)
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_gateway.guard import UNIX_PEERS, TrustedProxy, is_trusted_proxy

# A token bucket's refill: a slower one (1e-300) made each refusal's RetryInfo a delay no Duration can hold, a
# faster one refuses nothing; finite, as a bucket's arithmetic needs.
RatePerSecond = Annotated[float, Field(ge=0.001, le=1e6, allow_inf_nan=False)]


class GatewaySettings(ServiceSettings):
    service_name: ServiceName = "gateway"
    grpc_port: GrpcPort = 50050
    metrics_port: MetricsPort = 9460

    # The public edge: no shop request comes near 1 MiB, and a request it takes must still fit the 4 MiB
    # of the service it goes to once the gateway added the caller's user id and e-mail (at 4 MiB here, an
    # order refused by orders' server came back as "orders is unavailable", with a retry hint).
    grpc_max_receive_message_bytes: MessageBytes = 1024 * 1024

    users_address: GrpcTarget = "127.0.0.1:50051"
    catalog_address: GrpcTarget = "127.0.0.1:50052"
    inventory_address: GrpcTarget = "127.0.0.1:50053"
    orders_address: GrpcTarget = "127.0.0.1:50054"
    notifications_address: GrpcTarget = "127.0.0.1:50056"
    recommendations_address: GrpcTarget = "127.0.0.1:50057"

    # Deadline of each outbound call, never later than the client's own deadline.
    catalog_timeout_seconds: OutboundTimeout = 2.0
    inventory_timeout_seconds: OutboundTimeout = 2.0
    # Recommendations are optional on the product page: past this budget the fallback list is shown.
    recommendations_timeout_seconds: OutboundTimeout = 0.3
    # Login hashes a password (argon2id), which takes a noticeable fraction of a second by design.
    users_timeout_seconds: OutboundTimeout = 5.0
    # PlaceOrder runs the whole checkout saga (reserve, charge, commit) before it answers.
    orders_timeout_seconds: OutboundTimeout = 15.0
    # GetOrder and ListOrders only read orders' database, as the other services' reads do theirs. Given
    # PlaceOrder's 15 s, a hung orders held the order page's and the history's shoppers that long, the first
    # few until the breaker opened and one more at each of its half-open trials.
    orders_read_timeout_seconds: OutboundTimeout = 2.0
    # CancelOrder refunds the charge at payments and releases the stock at inventory before it answers: a
    # read's 2 s would turn a cancellation whose refund is merely slow into orders' "accepted, completes on its
    # own" (UNAVAILABLE, a server error). It needs no more than that, though: orders answers so 0.3 s before
    # this deadline (given at least 1.3 s) and finishes the cancellation detached, so 15 s would only hold a
    # shopper longer while orders hangs. 5 s: one of the saga's steps at its own STEP_TIMEOUT_SECONDS.
    orders_cancel_timeout_seconds: OutboundTimeout = 5.0
    notifications_timeout_seconds: OutboundTimeout = 2.0

    # The latency SLO's threshold (the chart's slo.latency.thresholdSeconds, 0.25 s), from which the gateway's
    # deadline floor is made: a client's deadline shorter than it plus the chassis' skew tolerance (0.1 s),
    # as the time left when the gateway gets the call, is refused INVALID_ARGUMENT (DEADLINE_TOO_SHORT) before
    # any work (guard.deadline_floor says why the tolerance). A deadline that runs out while the gateway and its
    # services work is counted DEADLINE_EXCEEDED, a server error for the availability SLO and
    # ShopmeshServerErrors, so without a floor any client could page on-call with tiny deadlines; with it, a
    # call counted so had at least the threshold, and missed the latency SLO too. 0: no floor. The floor at most
    # 30 s, the HTTP edge's bound of every call (its longer grpc-timeout is cut to it): above, it would refuse
    # them all.
    min_client_deadline_seconds: float = Field(
        default=0.25, ge=0, le=30 - DEADLINE_SKEW_TOLERANCE_SECONDS, allow_inf_nan=False
    )

    # Token bucket per client (the token's subject, else the peer address), in memory per replica.
    rate_limit_per_second: RatePerSecond = 20.0
    rate_limit_burst: int = Field(default=40, ge=1)
    # A second, far smaller bucket per client address for the calls that have users hash a password
    # (Register, Login), taken besides the ordinary one. users hashes PASSWORD_HASH_CONCURRENCY (2) at a
    # time, ~0.5 s of a core each at the default argon2 costs, so ~4 a second, with 32 more queued: 34
    # places, shared by every shopper. The ordinary burst of 40 let one address fill them all and every
    # other login was refused PASSWORD_HASHING_BUSY. 5 at once is 1/7 of the places, and one every 2 s
    # is 1/8 of the hashing, per gateway replica: a household registering and logging in a few people
    # never meets it.
    password_rate_limit_per_second: RatePerSecond = 0.5
    password_rate_limit_burst: int = Field(default=5, ge=1)
    # The same for an IPv6 client's /48 as a whole (IPv4 addresses have none), taken besides its /64's: a
    # customer with a /56 has 256 /64s, one with a tunnel broker's free /48 65,536, and per /64 alone they held
    # 5 places each, all 34 of them. 8 at once is under a quarter of the places (two gateway replicas: under
    # half), one a second a quarter of the hashing, per gateway replica; a site's shoppers share it.
    password_site_rate_limit_per_second: RatePerSecond = 1.0
    password_site_rate_limit_burst: int = Field(default=8, ge=1)
    # Buckets kept at once, of each kind; the least recently used is dropped beyond it, so memory stays bounded.
    rate_limit_max_clients: int = Field(default=100_000, ge=1)
    # Comma-separated networks of proxies in front of the gateway (a sidecar: 127.0.0.0/8,::1/128; an
    # ingress: its pods' range). A call from one of them is limited by the X-Forwarded-For address it
    # vouches for instead of its own. `unix`: any peer on a Unix socket (GRPC_UNIX_SOCKET: under `make run
    # MESH=envoy`, the gateway's sidecar). Empty: the peer's address, X-Forwarded-For ignored.
    trusted_proxies: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        _parse_networks(value)
        return value

    @functools.cached_property
    def trusted_proxy_networks(self) -> tuple[TrustedProxy, ...]:
        # Parsed once: follows_trace_decision_of reads it on every call that brings a traceparent, and
        # parsing took 3/4 of that call's cost. The settings are frozen, so it cannot go stale.
        return _parse_networks(self.trusted_proxies)

    def follows_trace_decision_of(self, peer: str) -> bool:
        # A client's traceparent marked sampled would have its calls recorded in every service, whatever
        # OTEL_TRACES_SAMPLER_RATIO says; the proxies in front (the edge, a sidecar) drew at the ratio already.
        return is_trusted_proxy(peer, self.trusted_proxy_networks)

    # Access tokens, as the users contract fixes them.
    jwt_issuer: str = "shopmesh-users"
    jwt_audience: str = "shopmesh"
    # Tolerated clock skew between users (which stamps iat/nbf/exp) and the gateway. A token is accepted this
    # long past its exp, so more than minutes is no skew but tokens that never expire. (nbf and iat take
    # tokens.NOT_BEFORE_LEEWAY_SECONDS, or this if longer.)
    jwt_leeway_seconds: float = Field(default=5.0, ge=0, le=300, allow_inf_nan=False)
    # The users contract: cache the key set up to 5 minutes, refetch on an unknown kid at most every 30 s (a
    # second after a failed fetch, coalesced.FAILED_FETCH_BACKOFF_SECONDS). users' KEY_PUBLISH_AHEAD_SECONDS
    # must stay above their sum with a margin (docs/auth.md, "Rotation"): raise it when raising these.
    jwks_max_age_seconds: Interval = 300.0
    jwks_min_refetch_interval_seconds: RetryDelay = 30.0
    # The oldest key set verified with, counted from the last fetch that succeeded; 0: no limit. While users
    # cannot give a key set, the cached one keeps serving, a revoked key included; past this age every signed-in
    # call is refused UNAVAILABLE instead, until users answers. Off by default: signed-in shoppers keep
    # shopping through a users outage, and a revocation is made sure by restarting the gateways.
    jwks_hard_max_age_seconds: RetryDelay = 0.0

    # Per-user revocation (docs/auth.md, "Signing out"): how long a user's sign-out cutoff, read from users
    # (GetTokenCutoff), is used before it is asked again: a sign-out on another replica is honoured here within
    # it (the replica that signed the user out, at once). Users kept at most; the least recently seen is
    # dropped beyond it (about 250 bytes each with its user id, measured with tracemalloc: 25 MB full).
    token_cutoff_cache_seconds: Interval = 30.0
    token_cutoff_cache_max_users: int = Field(default=100_000, ge=1)
    # When users cannot give a cutoff not cached (or one aged past the TTL): false (the default), the token is
    # taken as not revoked, a stale cutoff used, and signed-in shopping goes on through a users outage; true,
    # the call is refused UNAVAILABLE instead, so that a sign-out is sure to hold on every replica.
    token_cutoff_fail_closed: bool = False

    @model_validator(mode="after")
    def _hard_max_age_after_max_age(self) -> GatewaySettings:
        if 0 < self.jwks_hard_max_age_seconds <= self.jwks_max_age_seconds:
            # Below the max age, the keys would be dropped before a refetch was due, and every call past it
            # would fetch them.
            raise ValueError("JWKS_HARD_MAX_AGE_SECONDS must be 0 (no limit) or more than JWKS_MAX_AGE_SECONDS")
        return self


def _parse_networks(value: str) -> tuple[TrustedProxy, ...]:
    """`127.0.0.0/8, ::1/128,10.0.0.7,unix` → networks (and UNIX_PEERS); ValueError naming the first entry that
    is neither."""
    networks: list[TrustedProxy] = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        if entry == UNIX_PEERS:
            networks.append(UNIX_PEERS)
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not a network (e.g. 127.0.0.0/8, ::1/128, 10.0.0.7) nor {UNIX_PEERS!r}"
            ) from None
    return tuple(networks)
