"""Delivery over SMTP (aiosmtplib). The e-mail is built from the stored notification alone, so every
attempt sends the same message: same Message-ID, same Date, same body."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from shopmesh_chassis.email_addresses import is_email_address
from shopmesh_notifications.domain.model import Notification, Refusal


class DeliveryFailed(Exception):
    """An attempt failed, `reason` saying how (for operators); `refusal` when the mail server refused this
    e-mail for good (a 5xx reply to its recipient or its data, not about us), None when it is retried."""

    def __init__(self, reason: str, *, refusal: Refusal | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refusal = refusal

    @property
    def permanent(self) -> bool:
        return self.refusal is not None


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int
    sender: str
    # For the whole attempt (connect, greeting, envelope, data), not per step.
    timeout_seconds: float
    # Implicit TLS (port 465). Otherwise STARTTLS: required when there are credentials to send (a relay
    # that does not offer it, or a man in the middle stripping it from EHLO, would read them in plain
    # text), used when offered without them.
    use_tls: bool = False
    username: str = ""
    password: str = ""

    @property
    def start_tls(self) -> bool | None:
        """aiosmtplib's `start_tls`: True requires STARTTLS, None uses it when the server offers it."""
        return True if self.username and not self.use_tls else None


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


# RFC 4954's replies about our session, whichever command drew them: authentication required, mechanism
# too weak, credentials invalid, encryption required. Every e-mail gets them until the relay's settings
# or credentials are fixed.
_SESSION_REFUSALS = frozenset({530, 534, 535, 538})


# RFC 3463's enhanced status 5.7.x, "security or policy status", at the head of a reply's text: at RCPT a
# relay refusing us (`554 5.7.1 Relay access denied`: our address not in its networks, authentication
# needed), not the recipient. Every e-mail gets it until the relay's settings or ours are fixed.
_POLICY_REFUSAL = re.compile(r"\s*5\.7\.\d{1,3}(?!\S)")
# ... unless the reply says the recipient is what the policy refused: a relay's per-recipient access rule
# uses the same code (Postfix: `554 5.7.1 <x@blocked>: Recipient address rejected: Access denied`). That is
# this e-mail's refusal, for good: retried for a day, it would be given up all the same, and meanwhile
# count as the relay refusing us (ShopmeshEmailsNotGoingOut).
_RECIPIENT_REJECTED = re.compile(r"recipient address rejected", re.IGNORECASE)


def _relay_policy_refusal(message: str) -> bool:
    """A 5.7.x reply at RCPT that is about us (the relay's policy), not about the recipient."""
    return bool(_POLICY_REFUSAL.match(message)) and not _RECIPIENT_REJECTED.search(message)


def _refused_for_good(code: int) -> bool:
    return 500 <= code < 600 and code not in _SESSION_REFUSALS


def _recipient_refused_for_good(code: int, message: str) -> bool:
    return _refused_for_good(code) and not _relay_policy_refusal(message)


def _failure(error: Exception) -> DeliveryFailed:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
        if any(_relay_policy_refusal(r.message) for r in error.recipients):
            # Said so in the log line: the relay's settings or ours to fix, not the address.
            return DeliveryFailed(f"recipient refused by the relay's policy: {detail}")
        for_good = all(_refused_for_good(r.code) for r in error.recipients)
        return DeliveryFailed(f"recipient refused: {detail}", refusal=Refusal.RECIPIENT if for_good else None)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        # Only a refusal of this e-mail's recipient or content is for good. One of the greeting, EHLO,
        # STARTTLS, AUTH or MAIL FROM is about the relay or our settings (credentials being rotated, TLS
        # required, the sender address not allowed), and so is a policy refusal at RCPT: it refuses every
        # e-mail alike until fixed, and failing each at its first attempt would lose them all; retried, they
        # go out once it is fixed.
        refusal = None
        if isinstance(error, aiosmtplib.SMTPRecipientRefused):
            refusal = Refusal.RECIPIENT if _recipient_refused_for_good(error.code, error.message) else None
        elif isinstance(error, aiosmtplib.SMTPDataError):
            refusal = Refusal.MESSAGE if _refused_for_good(error.code) else None
        return DeliveryFailed(f"SMTP {error.code}: {error.message}", refusal=refusal)
    if type(error) is aiosmtplib.SMTPException and "STARTTLS" in str(error):
        # Only with credentials to send: about our settings or the relay's, like a refused login.
        return DeliveryFailed(
            "the SMTP server does not offer STARTTLS, and the credentials are never sent unencrypted: "
            "enable STARTTLS on the relay, or set SMTP_USE_TLS for implicit TLS",
        )
    if isinstance(error, TimeoutError):
        return DeliveryFailed("SMTP server did not answer in time")
    return DeliveryFailed(f"{type(error).__name__}: {error}")


class SmtpMailer:
    def __init__(self, options: SmtpOptions) -> None:
        self._options = options

    async def send(self, notification: Notification) -> None:
        """Hand the e-mail to the SMTP server; raises DeliveryFailed when it was not accepted."""
        options = self._options
        if not is_email_address(notification.recipient):
            # Stored under an older release's looser check (`root,ada@example.com`): the SMTP library would
            # read the To header as other recipients than the customer (`root` at the relay's domain).
            raise DeliveryFailed("recipient is not an e-mail address", refusal=Refusal.NOT_AN_ADDRESS)
        try:
            async with asyncio.timeout(options.timeout_seconds):
                await aiosmtplib.send(
                    build_message(notification, options.sender),
                    hostname=options.host,
                    port=options.port,
                    timeout=options.timeout_seconds,
                    use_tls=options.use_tls,
                    start_tls=options.start_tls,
                    username=options.username or None,
                    password=options.password or None,
                )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise _failure(error) from error
