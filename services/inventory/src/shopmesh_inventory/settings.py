"""The inventory service's settings (environment variables; see docs/chassis.md for the common ones)."""

from __future__ import annotations

from pydantic import Field

from shopmesh_chassis.config import DatabaseSettings, GrpcPort, Interval, MetricsPort, ServiceName


class InventorySettings(DatabaseSettings):
    service_name: ServiceName = "inventory"
    grpc_port: GrpcPort = 50053
    metrics_port: MetricsPort = 9463

    # How often PENDING reservations past expires_at are recorded as EXPIRED and their units freed.
    # Reads and Reserve already treat them as expired in between; the sweep keeps `reserved` exact.
    reservation_sweep_interval_seconds: Interval = 1.0
    # Reservations expired per batch; each one in its own short transaction.
    reservation_sweep_batch_size: int = Field(default=100, ge=1, le=10_000)

    # At startup, create stock records for the demo shop's products that have none (never overwrites).
    seed_stock: bool = True
