"""Ids a service mints for what it creates (orders, payments, notifications, events, processor charges, lease
owners): one shape, so every id is its kind's prefix and 32 random hex digits, well within an id's 64 characters
(`contract_limits.MAX_ID_LENGTH`) and printable, as every service requires of an id it is handed."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """A new random id, `prefix` (its separator included: "ord_", "saga-") followed by a UUID4's 32 hex digits."""
    return f"{prefix}{uuid.uuid4().hex}"
