from __future__ import annotations

from pydantic import Field, SecretStr

from shopmesh_chassis.config import ConsumerSettings, DatabaseSettings, GrpcPort, Interval, MetricsPort, ServiceName


class NotificationsSettings(DatabaseSettings, ConsumerSettings):
    service_name: ServiceName = "notifications"
    grpc_port: GrpcPort = 50056
    metrics_port: MetricsPort = 9466

    # The mail server (`make run` starts a local SMTP sink on 127.0.0.1:8025).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    # Implicit TLS (port 465); otherwise STARTTLS, required when SMTP_USERNAME is set (a relay that does not
    # offer it never gets the credentials: each attempt fails and is retried), used when offered without.
    smtp_use_tls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    # One delivery attempt, all of it; a sender that dies mid-attempt leaves the notification to be
    # picked up again after twice this.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    mail_from: str = "shopmesh <orders@shopmesh.example>"

    # Delivery attempts: the first at once, then after 1, 2, 4, ... seconds (at most
    # SEND_MAX_BACKOFF_SECONDS), until one fails SEND_GIVE_UP_AFTER_SECONDS after the notification was
    # recorded: FAILED then, or at once when the server refuses the e-mail for good. A time window, not a
    # count of attempts: a relay outage (or wrong credentials) shorter than it loses no e-mail.
    send_backoff_seconds: Interval = 1.0
    send_max_backoff_seconds: Interval = 600.0
    send_give_up_after_seconds: float = Field(default=86400.0, gt=0, le=30 * 86400, allow_inf_nan=False)

    # The cap on cancellation e-mails to one address (intake.RecipientCap, per replica): RECIPIENT_MAIL_BURST at
    # once, then RECIPIENT_MAILS_PER_HOUR. Beyond it a cancellation is recorded WITHHELD, not sent, counted in
    # shopmesh_notifications_suppressed_total{reason="recipient_cap"}. Confirmations (receipts of captured
    # payments) are never capped; someone making the shop mail an address with orders that fail gets a handful.
    recipient_mail_burst: int = Field(default=10, ge=1, le=10_000)
    recipient_mails_per_hour: float = Field(default=6.0, gt=0, le=360_000, allow_inf_nan=False)
