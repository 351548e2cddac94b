from __future__ import annotations

from pydantic import Field

from shopmesh_chassis.config import EventSettings, IdempotencySettings


class OrdersSettings(IdempotencySettings, EventSettings):
    service_name: str = "orders"
    grpc_port: int = 50054
    metrics_port: int = 9464

    catalog_address: str = "127.0.0.1:50052"
    inventory_address: str = "127.0.0.1:50053"
    payments_address: str = "127.0.0.1:50055"

    # How long inventory holds the stock while payment runs; also the deadline of the whole saga.
    reservation_ttl_seconds: float = Field(default=120.0, ge=1, le=3600)
    # Saga-level attempts of a step whose dependency stays UNAVAILABLE after gRPC's own retries.
    step_attempts: int = Field(default=3, ge=1, le=20)
    step_backoff_seconds: float = Field(default=0.2, gt=0)
    # A saga driver holds a lease on its order; another driver (a replica, or this process after a
    # restart) takes over an order whose lease ran out.
    saga_lease_seconds: float = Field(default=10.0, gt=0)
    # How often in-flight sagas are looked for (startup, then periodically).
    recovery_interval_seconds: float = Field(default=2.0, gt=0)
    # Deadline of each outbound saga call; a charge whose outcome is unknown is verified only after it.
    step_timeout_seconds: float = Field(default=5.0, gt=0)

    # Fault injection for chaos tests: after this saga step is persisted, the driver stops and waits
    # (so a test can kill the process at a known point). Empty in every real deployment.
    fault_pause_after_step: str = ""
