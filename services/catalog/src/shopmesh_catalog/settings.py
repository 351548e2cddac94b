"""The catalog's settings: the chassis' database settings plus whether to load the seed catalog."""

from __future__ import annotations

from pydantic import Field

from shopmesh_chassis.config import DatabaseSettings


class CatalogSettings(DatabaseSettings):
    service_name: str = "catalog"
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9462, ge=-1, le=65535)
    # SEED_CATALOG: insert the products of `shopmesh_catalog.seed` that are missing at startup. The catalog
    # has no write RPCs, so without the seed (or rows loaded by other means) it is empty.
    seed_catalog: bool = True
