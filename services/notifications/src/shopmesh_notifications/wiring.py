"""The composition root of notifications: settings, database, the order-event consumer, the SMTP
sender, the server."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.trace import TracerProvider

from shopmesh.notifications.v1 import notifications_pb2_grpc
from shopmesh_chassis import app
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.consumer import EventConsumer
from shopmesh_chassis.db import Database
from shopmesh_chassis.metrics import EventMetrics, ServerMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ServiceBinding
from shopmesh_notifications.application import NotificationsApplication
from shopmesh_notifications.codec import SUBJECTS
from shopmesh_notifications.domain.model import RetryPolicy
from shopmesh_notifications.intake import NotificationIntake, RecipientCap
from shopmesh_notifications.mailer import SmtpMailer, SmtpOptions
from shopmesh_notifications.metrics import NotificationMetrics
from shopmesh_notifications.sender import NotificationSender
from shopmesh_notifications.settings import NotificationsSettings
from shopmesh_notifications.store.tables import metadata
from shopmesh_notifications.transport import DESCRIPTOR, NotificationsServicer

VERSIONS = Path(__file__).parent / "migrations" / "versions"
DURABLE = "notifications"
STREAM = "ORDERS"
STREAM_SUBJECTS = ["orders.v1.>"]


def retry_policy(settings: NotificationsSettings) -> RetryPolicy:
    return RetryPolicy(
        base_delay_seconds=settings.send_backoff_seconds,
        max_delay_seconds=settings.send_max_backoff_seconds,
        give_up_after_seconds=settings.send_give_up_after_seconds,
    )


def build_sender(
    settings: NotificationsSettings,
    database: Database,
    metrics: NotificationMetrics,
    *,
    tracer_provider: TracerProvider | None = None,
) -> NotificationSender:
    mailer = SmtpMailer(
        SmtpOptions(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.mail_from,
            timeout_seconds=settings.smtp_timeout_seconds,
            use_tls=settings.smtp_use_tls,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
        )
    )
    return NotificationSender(
        database,
        mailer,
        retry_policy(settings),
        claim_seconds=2 * settings.smtp_timeout_seconds,
        on_attempt=metrics.attempted,
        tracer_provider=tracer_provider,
    )


def build_intake(settings: NotificationsSettings, metrics: NotificationMetrics) -> NotificationIntake:
    cap = RecipientCap(settings.recipient_mails_per_hour, settings.recipient_mail_burst)
    return NotificationIntake(cap=cap, on_suppressed=metrics.suppressed)


def build_consumer(
    settings: NotificationsSettings,
    database: Database,
    sender: NotificationSender,
    metrics: EventMetrics,
    intake: NotificationIntake,
) -> EventConsumer:
    return EventConsumer.from_settings(
        settings,
        database,
        durable=DURABLE,
        stream=STREAM,
        stream_subjects=STREAM_SUBJECTS,
        subjects=list(SUBJECTS),
        handler=intake,
        metrics=metrics,
        # The sender must not look for the new notification before its transaction has committed.
        on_applied=lambda _event: sender.wake(),
    )


async def _main() -> None:
    settings = load_settings(NotificationsSettings)
    tracer_provider = app.setup_observability(settings)
    database = Database.from_settings(settings)
    await migrate(database, VERSIONS, metadata)

    metrics = ServerMetrics()
    notification_metrics = NotificationMetrics(metrics.registry)
    sender = build_sender(settings, database, notification_metrics, tracer_provider=tracer_provider)
    # Keeps trying in the background: the service serves ListNotifications while NATS is away.
    consumer = build_consumer(settings, database, sender, metrics.events, build_intake(settings, notification_metrics))
    sender.start()
    consumer.start()

    async def stop_background() -> None:
        await consumer.stop()
        await sender.stop(grace_seconds=settings.shutdown_grace_seconds)

    binding = ServiceBinding(
        DESCRIPTOR,
        NotificationsServicer(NotificationsApplication(database)),
        notifications_pb2_grpc.add_NotificationsServiceServicer_to_server,
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
