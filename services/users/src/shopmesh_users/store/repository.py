"""Users, signing keys and login attempts in one session (one transaction). Portable SQL only."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, inspect, select, update

from shopmesh_chassis.db import Database, DbConnection, as_utc, insert_skipping_existing
from shopmesh_chassis.db_errors import duplicates_raised
from shopmesh_chassis.periodic import delete_in_batches
from shopmesh_users.domain.failed_logins import Attempts
from shopmesh_users.domain.keys import SigningKey
from shopmesh_users.domain.models import Account, User
from shopmesh_users.store.tables import login_attempts, signing_keys, users

# Every login runs these: built once (docs/chassis.md, "Statements on hot paths are built once").
_ATTEMPTS_LOCKED = (
    select(login_attempts.c.tokens, login_attempts.c.updated_at)
    .where(login_attempts.c.email_key == bindparam("key"))
    .with_for_update()
)
# Bound as b_key: SQLAlchemy reserves a table's column names for its own binds in UPDATE.
_ATTEMPTS_REPLACE = (
    update(login_attempts)
    .where(login_attempts.c.email_key == bindparam("b_key"))
    .values(tokens=bindparam("tokens"), updated_at=bindparam("updated_at"))
)
_ATTEMPTS_FORGET = delete(login_attempts).where(login_attempts.c.email_key == bindparam("key"))


def _cutoff(row: Any) -> datetime | None:
    return as_utc(row.tokens_valid_after) if row.tokens_valid_after is not None else None


def _user(row: Any) -> User:
    return User(id=row.id, email=row.email, display_name=row.display_name, created_at=as_utc(row.created_at))


def _signing_key(row: Any) -> SigningKey:
    return SigningKey(
        kid=row.kid,
        generation=row.generation,
        public_jwk=json.loads(row.public_jwk),
        private_key_pem=row.private_key_pem,
        created_at=as_utc(row.created_at),
        activates_at=as_utc(row.activates_at),
        token_lifetime=_lifetime(row.token_lifetime_seconds),
        retired_at=as_utc(row.retired_at) if row.retired_at is not None else None,
    )


def _lifetime(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


def _seconds(lifetime: timedelta | None) -> int | None:
    # Whole seconds, rounded up: a record shorter than the tokens' lifetime would unpublish their key early.
    return math.ceil(lifetime.total_seconds()) if lifetime is not None else None


class UserRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def add(self, user: User, password_hash: str) -> None:
        """Raises Duplicate when the e-mail is taken (`uq_users_email`; user ids are random, so no other unique
        check can fail: one that did would stay the driver's IntegrityError)."""
        with duplicates_raised(key="email"):
            await self._session.execute(
                insert(users).values(
                    id=user.id,
                    email=user.email,
                    display_name=user.display_name,
                    password_hash=password_hash,
                    created_at=user.created_at,
                )
            )

    async def by_id(self, user_id: str) -> User | None:
        row = (await self._session.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row) if row is not None else None

    async def account_by_email(self, email: str) -> Account | None:
        row = (await self._session.execute(select(users).where(users.c.email == email))).first()
        if row is None:
            return None
        return Account(user=_user(row), password_hash=row.password_hash, tokens_valid_after=_cutoff(row))

    async def token_cutoff(self, user_id: str) -> tuple[bool, datetime | None]:
        """Whether the user exists, and its cutoff (None: never signed out)."""
        row = (await self._session.execute(select(users.c.tokens_valid_after).where(users.c.id == user_id))).first()
        return (False, None) if row is None else (True, _cutoff(row))

    async def locked_token_cutoff(self, user_id: str) -> tuple[bool, datetime | None]:
        """`token_cutoff`, the row locked until the transaction ends (PostgreSQL: SELECT ... FOR UPDATE; SQLite:
        its one writer): sign-outs of one user on two replicas take turns, and the later one's cutoff stays."""
        row = (
            await self._session.execute(
                select(users.c.tokens_valid_after).where(users.c.id == user_id).with_for_update()
            )
        ).first()
        return (False, None) if row is None else (True, _cutoff(row))

    async def set_token_cutoff(self, user_id: str, cutoff: datetime) -> None:
        await self._session.execute(update(users).where(users.c.id == user_id).values(tokens_valid_after=cutoff))

    async def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        # Conditional: a hash changed in between (by another login's upgrade) is left alone.
        await self._session.execute(
            update(users).where(users.c.id == user_id, users.c.password_hash == old_hash).values(password_hash=new_hash)
        )


class SigningKeyRepository:
    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def count(self) -> int | None:
        """How many signing keys the database holds; None without the users schema (a database that is not
        this service's, or not migrated)."""
        if not await self._session.run_sync(lambda sync: inspect(sync).has_table(signing_keys.name)):
            return None
        return await self._session.scalar(select(func.count()).select_from(signing_keys)) or 0

    async def all(self) -> list[SigningKey]:
        rows = await self._session.execute(select(signing_keys).order_by(signing_keys.c.generation))
        return [_signing_key(row) for row in rows]

    async def add(self, key: SigningKey) -> None:
        """Raises Duplicate when another key has the same generation (a concurrent rotation)."""
        with duplicates_raised():
            await self._session.execute(
                insert(signing_keys).values(
                    kid=key.kid,
                    generation=key.generation,
                    private_key_pem=key.private_key_pem,
                    public_jwk=json.dumps(dict(key.public_jwk), sort_keys=True),
                    created_at=key.created_at,
                    activates_at=key.activates_at,
                    token_lifetime_seconds=_seconds(key.token_lifetime),
                    retired_at=key.retired_at,
                )
            )

    async def record_token_lifetime(self, kid: str, token_lifetime: timedelta) -> None:
        """Raise the key's recorded token lifetime to `token_lifetime`; never lowers it (another replica may
        have raised it further). A NULL record already stands for the longest lifetime and stays."""
        seconds = _seconds(token_lifetime)
        await self._session.execute(
            update(signing_keys)
            .where(signing_keys.c.kid == kid, signing_keys.c.token_lifetime_seconds < seconds)
            .values(token_lifetime_seconds=seconds)
        )

    async def retire(self, kid: str, retired_at: datetime) -> None:
        await self._session.execute(update(signing_keys).where(signing_keys.c.kid == kid).values(retired_at=retired_at))

    async def delete(self, kids: Sequence[str]) -> None:
        if kids:
            await self._session.execute(delete(signing_keys).where(signing_keys.c.kid.in_(list(kids))))


class LoginAttemptRepository:
    """Each e-mail's stored bucket (domain/failed_logins.py), read locked and written back in one transaction:
    replicas taking from one bucket at once take turns (PostgreSQL: the row lock of SELECT ... FOR UPDATE;
    SQLite: its one writer, BEGIN IMMEDIATE)."""

    def __init__(self, session: DbConnection) -> None:
        self._session = session

    async def locked(self, key: str) -> Attempts | None:
        """The bucket, locked until the transaction ends; None when none is stored (a full one)."""
        row = (await self._session.execute(_ATTEMPTS_LOCKED, {"key": key})).first()
        return Attempts(row.tokens, as_utc(row.updated_at)) if row is not None else None

    async def add(self, key: str, attempts: Attempts) -> bool:
        """Store a bucket for `key`, which `locked` found none of; False (nothing written) when another
        transaction stored one since. On PostgreSQL this waits for that transaction to end, so a `locked`
        after a False finds its row."""
        added = await self._session.execute(
            insert_skipping_existing(self._session.dialect.name, login_attempts),
            {"email_key": key, "tokens": attempts.tokens, "updated_at": attempts.updated_at},
        )
        return bool(added.rowcount)

    async def replace(self, key: str, attempts: Attempts) -> None:
        await self._session.execute(
            _ATTEMPTS_REPLACE, {"b_key": key, "tokens": attempts.tokens, "updated_at": attempts.updated_at}
        )

    async def forget(self, key: str) -> None:
        await self._session.execute(_ATTEMPTS_FORGET, {"key": key})


async def prune_login_attempts(database: Database, full_since: datetime) -> int:
    """Delete the buckets last changed at or before `full_since` (full again: the same as none), in short
    transactions; how many. On PostgreSQL a bucket a login changes meanwhile is re-checked under its row lock
    and kept."""
    return await delete_in_batches(
        database, login_attempts, login_attempts.c.email_key, login_attempts.c.updated_at <= full_since
    )
