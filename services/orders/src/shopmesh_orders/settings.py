from __future__ import annotations

from pydantic import Field

from shopmesh_chassis.backoff import backoff_delay
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW_SECONDS
from shopmesh_chassis.config import (
    EventSettings,
    GrpcPort,
    GrpcTarget,
    IdempotencySettings,
    Interval,
    MetricsPort,
    OutboundTimeout,
    ServiceName,
)


class OrdersSettings(IdempotencySettings, EventSettings):
    service_name: ServiceName = "orders"
    grpc_port: GrpcPort = 50054
    metrics_port: MetricsPort = 9464

    catalog_address: GrpcTarget = "127.0.0.1:50052"
    inventory_address: GrpcTarget = "127.0.0.1:50053"
    payments_address: GrpcTarget = "127.0.0.1:50055"

    # Prices asked of catalog are remembered this long (0 = ask for every order): a price change
    # reaches new orders at most this much later. Products not in the catalog are never remembered.
    catalog_price_cache_seconds: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
    catalog_price_cache_products: int = Field(default=10_000, ge=1)

    # How long inventory holds the stock while payment runs; also the deadline of the whole saga. Within
    # MAX_CLOCK_SKEW of that deadline the saga asks inventory again before charging: a TTL no longer than the
    # skew would have every PlaceOrder ask.
    reservation_ttl_seconds: float = Field(default=120.0, gt=MAX_CLOCK_SKEW_SECONDS, le=3600, allow_inf_nan=False)
    # Attempts of a step whose dependency answers UNAVAILABLE, one call each: the saga is the one layer that
    # retries its steps (its channels to inventory and payments have no retry policy: wiring.step_client_options).
    # The backoff doubles, 1 s then 2 s: a step rides out a dependency away ~3 s (a pod restarting, one replica)
    # before the checkout is cancelled; with the channels' retries gone, 0.2 s cancelled it after 0.6 s.
    step_attempts: int = Field(default=3, ge=1, le=20)
    step_backoff_seconds: Interval = 1.0
    # A saga driver holds a lease on its order; another driver (a replica, or this process after a
    # restart) takes over an order whose lease ran out.
    saga_lease_seconds: Interval = 10.0
    # How often in-flight sagas are looked for (startup, then periodically).
    recovery_interval_seconds: Interval = 2.0
    # An order the recovery loop could not move on (a dependency down, a state only a newer release of it
    # knows, or any error of the order's own: an answer the adapter does not expect, a bug) waits before the
    # loop tries it again: half as long as it has gone without progress, at least one recovery interval and
    # at most this (one interval when the order cannot even be loaded). Otherwise the orders that wait or
    # fail for good would lead every pass, and newer ones behind them (each pass takes the first 50 due)
    # would never be resumed. The same goes for a charge recheck payments cannot answer for that one order,
    # or that fails with an error of its own. Not a race lost on orders' database, nor the database away.
    recovery_backoff_max_seconds: Interval = 60.0
    # Deadline of each outbound saga call; a charge whose outcome is unknown is verified only after it.
    step_timeout_seconds: OutboundTimeout = 5.0

    # Fault injection for chaos tests: after this saga step is persisted, the driver stops and waits
    # (so a test can kill the process at a known point). Empty in every real deployment.
    fault_pause_after_step: str = ""

    @property
    def lease_needed_seconds(self) -> float:
        """The longest a saga driver goes without renewing its lease: one remote call and the longest backoff
        before the next attempt. The driver renews with every step it saves, before each retry of a step and
        before each call of compensation (which makes up to four with no step saved between them), so no
        two calls share a lease period. A shorter lease lets another driver take over an order that is still
        being driven."""
        backoff = backoff_delay(self.step_backoff_seconds, self.step_attempts - 2) if self.step_attempts > 1 else 0.0
        return self.step_timeout_seconds + backoff
