"""What the users service knows about an account."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class User:
    """A registered user as others may see it: never the password or its hash."""

    id: str
    email: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Account:
    """A user with the stored password hash: only login reads it."""

    user: User
    password_hash: str = field(repr=False)
    # When the user last signed out: the token Login issues must be stamped after it (`domain.tokens`).
    tokens_valid_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """A validated Register request: e-mail and password normalized, display name trimmed."""

    email: str
    password: str = field(repr=False)
    display_name: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """A validated Login request: the e-mail and the password normalized as at registration."""

    email: str
    password: str = field(repr=False)
    # The password as sent, when normalizing changed it: accounts registered before passwords were
    # normalized hold a hash of that form.
    password_as_sent: str | None = field(default=None, repr=False)


def new_user_id() -> str:
    return f"usr_{secrets.token_hex(16)}"
