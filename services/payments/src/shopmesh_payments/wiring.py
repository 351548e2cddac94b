"""The composition root: settings, database, migrations, the fake processor, idempotency, the outbox relay
and its NATS connection, housekeeping, the servicer; then serve until told to stop."""

from __future__ import annotations

from datetime import timedelta
from typing import NoReturn

from shopmesh.payments.v1.payments_pb2_grpc import add_PaymentsServiceServicer_to_server
from shopmesh_chassis import app
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.events import DeferredJetStream
from shopmesh_chassis.idempotency import IdempotencyStore, RequestFingerprint, fingerprint_key
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.outbox import OutboxRelay
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.server import ServiceBinding
from shopmesh_payments import event_messages
from shopmesh_payments.application import PaymentsApplication, ProcessorFactory
from shopmesh_payments.domain.processor import CardProcessor
from shopmesh_payments.fake_processor import FakeCardProcessor
from shopmesh_payments.migrations import VERSIONS
from shopmesh_payments.settings import PaymentsSettings
from shopmesh_payments.store.ledger import ProcessorLedger
from shopmesh_payments.store.tables import metadata
from shopmesh_payments.transport import DESCRIPTOR, PaymentsServicer


def builtin_processor(clock: Clock) -> ProcessorFactory:
    def processor_for(session: DbConnection) -> CardProcessor:
        return FakeCardProcessor(ProcessorLedger(session), clock)

    return processor_for


class PaymentsRuntime:
    """The servicer and the background work it relies on: the outbox relay, the NATS connection it
    publishes through (made in the background, so the service serves while NATS is away), and the purge
    of expired idempotency keys."""

    def __init__(
        self,
        settings: PaymentsSettings,
        database: Database,
        *,
        processor_for: ProcessorFactory | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.idempotency = IdempotencyStore(
            database,
            settings.resolved_error_domain,
            fingerprint=RequestFingerprint(fingerprint_key(settings)),
            retention=timedelta(hours=settings.idempotency_retention_hours),
        )
        self.jetstream = DeferredJetStream.from_settings(
            settings, stream=event_messages.STREAM, subjects=event_messages.STREAM_SUBJECTS
        )
        self.metrics = ServerMetrics()
        self.relay = OutboxRelay.from_settings(settings, database, self.jetstream, self.metrics.outbox)
        self.purge = Periodic(
            "idempotency-purge", settings.idempotency_purge_interval_seconds, self.idempotency.purge_expired
        )
        application = PaymentsApplication(
            database, processor_for or builtin_processor(clock), self.idempotency, clock, self.relay.wake
        )
        servicer = PaymentsServicer(application)
        self.binding = ServiceBinding(DESCRIPTOR, servicer, add_PaymentsServiceServicer_to_server)

    def start(self) -> None:
        # Events committed while NATS was away go out as soon as it is reachable.
        self.jetstream.start(on_ready=self.relay.wake)
        self.relay.start()
        self.purge.start()

    async def stop(self) -> None:
        await self.purge.stop()
        await self.relay.stop()
        await self.jetstream.close()


async def _main() -> None:
    settings = load_settings(PaymentsSettings)
    tracer_provider = app.setup_observability(settings)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)
    runtime = PaymentsRuntime(settings, database)
    runtime.start()
    await app.serve(
        settings,
        [runtime.binding],
        tracer_provider=tracer_provider,
        on_shutdown=[runtime.stop, database.dispose],
        metrics=runtime.metrics,
    )


def main() -> NoReturn:
    app.run(_main)
