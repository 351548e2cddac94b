"""Delivery over SMTP (aiosmtplib). The e-mail is built from the stored notification alone, so every
attempt sends the same message: same Message-ID, same Date, same body."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from shopmesh_notifications.domain.model import Notification


class DeliveryFailed(Exception):
    """An attempt failed; `permanent` when the mail server refused the message for good (5xx)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int
    sender: str
    # For the whole attempt (connect, greeting, envelope, data), not per step.
    timeout_seconds: float
    use_tls: bool = False
    username: str = ""
    password: str = ""


def build_message(notification: Notification, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = notification.recipient
    message["Subject"] = notification.subject
    message["Date"] = format_datetime(notification.created_at)
    message["Message-ID"] = notification.message_id
    # For support and for tests: which order and event an e-mail in a mailbox is about.
    message["X-Shopmesh-Order-Id"] = notification.order_id
    message["X-Shopmesh-Event-Id"] = notification.event_id
    message["X-Shopmesh-Notification-Id"] = notification.id
    message.set_content(notification.body)
    return message


def _failure(error: Exception) -> DeliveryFailed:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in error.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
        return DeliveryFailed(f"recipient refused: {detail}", permanent=all(500 <= code < 600 for code in codes))
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return DeliveryFailed(f"SMTP {error.code}: {error.message}", permanent=500 <= error.code < 600)
    if isinstance(error, TimeoutError):
        return DeliveryFailed("SMTP server did not answer in time", permanent=False)
    return DeliveryFailed(f"{type(error).__name__}: {error}", permanent=False)


class SmtpMailer:
    def __init__(self, options: SmtpOptions) -> None:
        self._options = options

    async def send(self, notification: Notification) -> None:
        """Hand the e-mail to the SMTP server; raises DeliveryFailed when it was not accepted."""
        options = self._options
        try:
            async with asyncio.timeout(options.timeout_seconds):
                await aiosmtplib.send(
                    build_message(notification, options.sender),
                    hostname=options.host,
                    port=options.port,
                    timeout=options.timeout_seconds,
                    use_tls=options.use_tls,
                    username=options.username or None,
                    password=options.password or None,
                )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise _failure(error) from error
