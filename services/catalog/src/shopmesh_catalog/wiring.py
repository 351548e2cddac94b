"""Composition root: settings, database, migrations, seed, servicer, serve()."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopmesh.catalog.v1 import catalog_pb2_grpc
from shopmesh_catalog import seed
from shopmesh_catalog.application import CatalogApplication
from shopmesh_catalog.settings import CatalogSettings
from shopmesh_catalog.store.tables import metadata
from shopmesh_catalog.transport import DESCRIPTOR, CatalogServicer
from shopmesh_chassis import app
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"


@dataclass(frozen=True)
class Catalog:
    """A catalog ready to serve: its binding, and the database to close on shutdown."""

    database: Database
    application: CatalogApplication
    binding: ServiceBinding


async def build(settings: CatalogSettings) -> Catalog:
    """Migrate the database, load the seed when SEED_CATALOG is true, and build the servicer."""
    database = Database.from_settings(settings)
    try:
        await migrate(database, VERSIONS, metadata)
        application = CatalogApplication(database)
        if settings.seed_catalog:
            await application.load(seed.CATEGORIES, seed.PRODUCTS)
    except BaseException:
        await database.dispose()
        raise
    servicer = CatalogServicer(application)
    binding = ServiceBinding(DESCRIPTOR, servicer, catalog_pb2_grpc.add_CatalogServiceServicer_to_server)
    return Catalog(database=database, application=application, binding=binding)


async def _main() -> None:
    settings = load_settings(CatalogSettings)
    provider = app.setup_observability(settings)
    catalog = await build(settings)
    await app.serve(settings, [catalog.binding], tracer_provider=provider, on_shutdown=[catalog.database.dispose])


def main() -> None:
    app.run(_main)
