"""The recommendations service's settings: database, NATS, where the catalog is, and the fault switch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shopmesh_chassis.config import (
    ConsumerSettings,
    DatabaseSettings,
    GrpcPort,
    GrpcTarget,
    MetricsPort,
    OutboundTimeout,
    ServiceName,
)

FaultMode = Literal["none", "slow", "fail"]


class RecommendationsSettings(DatabaseSettings, ConsumerSettings):
    service_name: ServiceName = "recommendations"
    grpc_port: GrpcPort = 50057
    metrics_port: MetricsPort = 9467

    catalog_address: GrpcTarget = "127.0.0.1:50052"
    # Recommendations sit on the product page's critical path although they are optional: a slow
    # catalog must not make them slow, so catalog calls get a short deadline of their own.
    catalog_timeout_seconds: OutboundTimeout = 1.0
    # How long catalog answers (products, category listings) are reused; the contract allows summaries
    # to lag the catalog.
    catalog_cache_seconds: float = Field(default=30.0, ge=0, le=86400, allow_inf_nan=False)
    catalog_cache_entries: int = Field(default=10_000, ge=1)

    # FAULT_MODE, for demos and resilience tests of callers (the gateway's fallback):
    #   none: normal service;
    #   slow: ListRecommendations waits FAULT_DELAY_SECONDS before it answers (a caller's deadline
    #         cancels the wait);
    #   fail: ListRecommendations answers UNAVAILABLE, ErrorInfo reason FAULT_INJECTED.
    # Health stays SERVING in every mode: the service is up, its answers are what is degraded.
    fault_mode: FaultMode = "none"
    fault_delay_seconds: float = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)
