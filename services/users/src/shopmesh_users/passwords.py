"""Password hashing with argon2id (argon2-cffi), off the event loop.

A hash takes tens of milliseconds of CPU by design, so it runs in a worker thread: the service keeps
answering other calls (GetJwks, GetUser) while logins are being checked.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        # Checked against when the e-mail is unknown, so that a login for an account that does not exist
        # costs the same hashing as one with a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`; with None, does the same work and says no."""
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            matched = self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the configured ones (they were raised)."""
        return self._hasher.check_needs_rehash(password_hash)
