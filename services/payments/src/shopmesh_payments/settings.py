"""The payments service's settings: a database, NATS for its events, and how long idempotency keys live."""

from __future__ import annotations

from pydantic import Field

from shopmesh_chassis.config import EventSettings, GrpcPort, IdempotencySettings, Interval, MetricsPort, ServiceName


class PaymentsSettings(IdempotencySettings, EventSettings):
    service_name: ServiceName = "payments"
    grpc_port: GrpcPort = 50055
    metrics_port: MetricsPort = 9465
    # The contract promises callers at least 24 hours in which a retry replays the stored outcome; more than
    # a year is a typing mistake (inf overflows the timedelta of the purge).
    idempotency_retention_hours: float = Field(default=48.0, ge=24.0, le=366 * 24, allow_inf_nan=False)
    idempotency_purge_interval_seconds: Interval = 3600.0
