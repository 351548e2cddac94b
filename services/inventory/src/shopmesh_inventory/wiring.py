"""Composition root: settings, database and migrations, seed stock, the expiry sweeper, the retention's purge,
the server."""

from __future__ import annotations

import logging
from datetime import timedelta

from shopmesh.inventory.v1 import inventory_pb2_grpc
from shopmesh_chassis import app
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.server import ServiceBinding
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.migrations import VERSIONS
from shopmesh_inventory.seed import SEED_STOCK
from shopmesh_inventory.settings import InventorySettings
from shopmesh_inventory.store.tables import metadata
from shopmesh_inventory.transport import DESCRIPTOR, InventoryServicer

log = logging.getLogger("shopmesh.inventory")


def binding(inventory: Inventory) -> ServiceBinding:
    return ServiceBinding(
        DESCRIPTOR, InventoryServicer(inventory), inventory_pb2_grpc.add_InventoryServiceServicer_to_server
    )


def inventory_of(settings: InventorySettings, database: Database) -> Inventory:
    retention = settings.reservation_retention_seconds
    return Inventory(
        database,
        sweep_batch_size=settings.reservation_sweep_batch_size,
        retention=timedelta(seconds=retention) if retention else None,
    )


async def _main() -> None:
    settings = load_settings(InventorySettings)
    provider = app.setup_observability(settings)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)
    inventory = inventory_of(settings, database)
    if settings.seed_stock:
        created = await inventory.seed_stock(SEED_STOCK)
        log.info("seeded stock of %d products", created, extra={"seeded": created})
    sweeper = Periodic(
        "reservation-expiry-sweeper", settings.reservation_sweep_interval_seconds, inventory.sweep_expired
    )
    purge = Periodic("reservation-purge", settings.reservation_purge_interval_seconds, inventory.purge_finished)
    sweeper.start()
    purge.start()

    async def stop_purge() -> None:
        # Not the sweeper's 10 s: the first run after an upgrade may meet months of reservations, and a purge
        # cut short loses nothing (each batch is a transaction of its own; the next run goes on).
        await purge.stop(timeout=1.0)

    await app.serve(
        settings,
        [binding(inventory)],
        tracer_provider=provider,
        # The sweeper and the purge first: they must finish their transaction before the database closes.
        on_shutdown=[sweeper.stop, stop_purge, database.dispose],
    )


def main() -> None:
    app.run(_main)
