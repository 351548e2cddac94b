"""Composition root: settings, database, migrations, catalog client, event consumer, servicer, serve()."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.recommendations.v1 import recommendations_pb2_grpc
from shopmesh_chassis import app
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.consumer import EventConsumer
from shopmesh_chassis.db import Database
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.clients import CatalogClient
from shopmesh_recommendations.faults import with_fault_injection
from shopmesh_recommendations.order_events import (
    DURABLE,
    STREAM,
    STREAM_SUBJECTS,
    SUBJECTS,
    order_events_handler,
)
from shopmesh_recommendations.settings import RecommendationsSettings
from shopmesh_recommendations.store.repository import forget_cancelled_orders
from shopmesh_recommendations.store.tables import metadata
from shopmesh_recommendations.transport import DESCRIPTOR, RecommendationsServicer

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


@dataclass(frozen=True)
class Recommendations:
    """The service ready to serve: its binding, and what to start and stop around serving."""

    database: Database
    catalog_channel: ResilientChannel
    consumer: EventConsumer
    binding: ServiceBinding
    metrics: ServerMetrics

    async def close(self) -> None:
        await self.consumer.stop()
        await self.catalog_channel.close()
        await self.database.dispose()


async def build(settings: RecommendationsSettings) -> Recommendations:
    """Migrate the database and assemble the service; the event consumer is built but not started."""
    database = Database.from_settings(settings)
    try:
        await migrate(database, VERSIONS, metadata)
    except BaseException:
        await database.dispose()
        raise
    channel = ResilientChannel(
        settings.catalog_address,
        [CATALOG_SERVICE],
        ClientOptions(default_timeout_seconds=settings.catalog_timeout_seconds, caller=settings.service_name),
    )
    catalog = CatalogClient(
        channel.channel,
        settings.catalog_timeout_seconds,
        cache_seconds=settings.catalog_cache_seconds,
        cache_entries=settings.catalog_cache_entries,
    )
    application = RecommendationsApplication(database, catalog)
    metrics = ServerMetrics()
    metrics.watch_breakers("catalog", channel.breakers)
    consumer = EventConsumer.from_settings(
        settings,
        database,
        durable=DURABLE,
        stream=STREAM,
        stream_subjects=STREAM_SUBJECTS,
        subjects=SUBJECTS,
        handler=order_events_handler(application),
        metrics=metrics.events,
        # Orders cancelled before their confirmation are remembered only until no confirmation can come.
        on_purge=lambda cutoff: forget_cancelled_orders(database, cutoff),
    )
    servicer = with_fault_injection(
        RecommendationsServicer(application), settings.fault_mode, settings.fault_delay_seconds
    )
    binding = ServiceBinding(
        DESCRIPTOR, servicer, recommendations_pb2_grpc.add_RecommendationsServiceServicer_to_server
    )
    return Recommendations(
        database=database, catalog_channel=channel, consumer=consumer, binding=binding, metrics=metrics
    )


async def _main() -> None:
    settings = load_settings(RecommendationsSettings)
    provider = app.setup_observability(settings)
    service = await build(settings)
    # Serves while NATS is away: the consumer keeps reconnecting, JetStream keeps the events meanwhile.
    service.consumer.start()
    await app.serve(
        settings, [service.binding], tracer_provider=provider, on_shutdown=[service.close], metrics=service.metrics
    )


def main() -> None:
    app.run(_main)
