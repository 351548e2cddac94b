"""The composition root of orders: settings, database, clients, saga, outbox relay, recovery, server."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.inventory.v1 import inventory_pb2
from shopmesh.orders.v1 import orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis import app
from shopmesh_chassis.client import NO_RETRIES, ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.events import DeferredJetStream
from shopmesh_chassis.idempotency import RequestFingerprint, fingerprint_key
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.outbox import OutboxRelay
from shopmesh_chassis.server import ServiceBinding
from shopmesh_orders.application import OrdersApplication
from shopmesh_orders.clients import CachedCatalog, CatalogClient, InventoryClient, PaymentsClient
from shopmesh_orders.domain.ports import Catalog
from shopmesh_orders.metrics import OrderMetrics
from shopmesh_orders.saga import SagaDriver
from shopmesh_orders.settings import OrdersSettings
from shopmesh_orders.store.tables import metadata
from shopmesh_orders.transport import DESCRIPTOR, OrdersServicer

VERSIONS = Path(__file__).parent / "migrations" / "versions"
STREAM = "ORDERS"
SUBJECTS = ["orders.v1.>"]

log = logging.getLogger("shopmesh.orders")


def client_options(settings: OrdersSettings) -> ClientOptions:
    """The options of orders' channels: each call's deadline the saga's step timeout."""
    return ClientOptions(default_timeout_seconds=settings.step_timeout_seconds, caller="orders")


def step_client_options(settings: OrdersSettings) -> ClientOptions:
    """The options of orders' channels to inventory and payments, which carry the saga's steps alone: one
    attempt per call. The saga retries each step itself (STEP_ATTEMPTS, keyed so a repeat is harmless, renewing
    its lease between attempts); a channel retrying under it multiplied the two, 12 Reserve calls for one
    checkout while inventory was down. Catalog's channel keeps gRPC's retries: pricing is no step."""
    return replace(client_options(settings), retry=NO_RETRIES)


async def _main() -> None:
    settings = load_settings(OrdersSettings)
    tracer_provider = app.setup_observability(settings)
    if settings.saga_lease_seconds <= settings.lease_needed_seconds:
        # Not refused: test meshes shorten the lease on purpose, to see crashed sagas resumed quickly.
        log.warning(
            "SAGA_LEASE_SECONDS (%s) does not outlast a step call and its backoff (%.1f s): the recovery loop "
            "may take over checkouts that are still running, and cancel them",
            settings.saga_lease_seconds,
            settings.lease_needed_seconds,
        )
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)

    catalog = ResilientChannel(
        settings.catalog_address, [catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]], client_options(settings)
    )
    step_options = step_client_options(settings)
    inventory = ResilientChannel(
        settings.inventory_address, [inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]], step_options
    )
    payments = ResilientChannel(
        settings.payments_address, [payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"]], step_options
    )

    # Connects in the background: orders serves while NATS is away; the outbox keeps the events.
    publisher = DeferredJetStream.from_settings(settings, stream=STREAM, subjects=SUBJECTS)
    metrics = ServerMetrics()
    for dependency, resilient in (("catalog", catalog), ("inventory", inventory), ("payments", payments)):
        metrics.watch_breakers(dependency, resilient.breakers)
    relay = OutboxRelay.from_settings(settings, database, publisher, metrics.outbox)
    publisher.start(on_ready=relay.wake)
    relay.start()

    order_metrics = OrderMetrics(metrics.registry)
    saga = SagaDriver(
        database,
        InventoryClient(
            inventory.channel, settings.step_timeout_seconds, unknown_state_wait=settings.recovery_interval_seconds
        ),
        PaymentsClient(
            payments.channel, settings.step_timeout_seconds, unknown_state_wait=settings.recovery_interval_seconds
        ),
        settings,
        on_event=relay.wake,
        on_finished=order_metrics.finished,
        on_late_refund=order_metrics.late_capture_refunded,
    )
    pricing: Catalog = CatalogClient(catalog.channel, settings.step_timeout_seconds)
    if settings.catalog_price_cache_seconds > 0:
        pricing = CachedCatalog(pricing, settings.catalog_price_cache_seconds, settings.catalog_price_cache_products)
    application = OrdersApplication(
        database,
        pricing,
        saga,
        on_recovery_error=order_metrics.recovery_error,
        on_unreadable=order_metrics.unreadable_order,
        on_waiting=order_metrics.waiting_for_dependency,
        tracer_provider=tracer_provider,
    )
    recovery = application.recovery_loop(settings.recovery_interval_seconds)
    recovery.start()

    async def stop_background() -> None:
        await recovery.stop(timeout=0)
        await application.wait_running(timeout=settings.shutdown_grace_seconds)
        await relay.stop()
        for channel in (catalog, inventory, payments):
            await channel.close()
        await publisher.close()

    binding = ServiceBinding(
        DESCRIPTOR,
        OrdersServicer(application, RequestFingerprint(fingerprint_key(settings))),
        orders_pb2_grpc.add_OrdersServiceServicer_to_server,
    )
    await app.serve(
        settings,
        [binding],
        tracer_provider=tracer_provider,
        on_shutdown=[stop_background, database.dispose],
        metrics=metrics,
    )


def main() -> None:
    app.run(_main)
