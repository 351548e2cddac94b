"""The catalog's settings: the chassis' database settings plus whether to load the seed catalog."""

from __future__ import annotations

from shopmesh_chassis.config import DatabaseSettings, GrpcPort, MetricsPort, ServiceName


class CatalogSettings(DatabaseSettings):
    service_name: ServiceName = "catalog"
    grpc_port: GrpcPort = 50052
    metrics_port: MetricsPort = 9462
    # SEED_CATALOG: insert the products of `shopmesh_catalog.seed` that are missing at startup. The catalog
    # has no write RPCs, so without the seed (or rows loaded by other means) it is empty.
    seed_catalog: bool = True
