"""Composition root: settings, database and migrations, seed stock, the expiry sweeper, the server."""

from __future__ import annotations

import logging

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


async def _main() -> None:
    settings = load_settings(InventorySettings)
    provider = app.setup_observability(settings)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)
    inventory = Inventory(database, sweep_batch_size=settings.reservation_sweep_batch_size)
    if settings.seed_stock:
        created = await inventory.seed_stock(SEED_STOCK)
        log.info("seeded stock of %d products", created, extra={"seeded": created})
    sweeper = Periodic(
        "reservation-expiry-sweeper", settings.reservation_sweep_interval_seconds, inventory.sweep_expired
    )
    sweeper.start()
    await app.serve(
        settings,
        [binding(inventory)],
        tracer_provider=provider,
        # The sweeper first: it must finish its transaction before the database closes.
        on_shutdown=[sweeper.stop, database.dispose],
    )


def main() -> None:
    app.run(_main)
