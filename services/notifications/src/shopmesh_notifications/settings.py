from __future__ import annotations

from pydantic import Field, SecretStr

from shopmesh_chassis.config import DatabaseSettings, EventSettings


class NotificationsSettings(DatabaseSettings, EventSettings):
    service_name: str = "notifications"
    grpc_port: int = 50056
    metrics_port: int = 9466

    # Consuming order events: a handler that fails (a poison message) is retried after these delays
    # (JSON list, e.g. CONSUMER_BACKOFF_SECONDS='[0.1, 0.5]'; the last one repeats), and after
    # CONSUMER_MAX_ATTEMPTS deliveries parked on the DEADLETTER stream. While the database is away, events
    # are retried with the same delays until it is back, and never parked.
    consumer_max_attempts: int = Field(default=5, ge=1, le=100)
    consumer_backoff_seconds: tuple[float, ...] = Field(default=(0.5, 1.0, 2.0, 5.0, 10.0), min_length=1)
    # Messages handed to a consumer that dies unacknowledged come back after this long; it must exceed
    # the time a batch of 20 events takes to handle.
    consumer_ack_wait_seconds: float = Field(default=30.0, ge=1)

    # The mail server (`make run` starts a local SMTP sink on 127.0.0.1:8025).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    # Implicit TLS (port 465); otherwise STARTTLS is used when the server offers it.
    smtp_use_tls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    # One delivery attempt, all of it; a sender that dies mid-attempt leaves the notification to be
    # picked up again after twice this.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    mail_from: str = "shopmesh <orders@shopmesh.example>"

    # Delivery attempts per notification: the first at once, then after 1, 2, 4, ... seconds (at most
    # SEND_MAX_BACKOFF_SECONDS); FAILED after the last one, or at once when the server refuses for good.
    send_max_attempts: int = Field(default=10, ge=1, le=100)
    send_backoff_seconds: float = Field(default=1.0, gt=0)
    send_max_backoff_seconds: float = Field(default=600.0, gt=0)
