"""users_0002 (each signing key's token lifetime) on a database the previous release keeps serving: its
keys, stored before the migration or by its pods during the rollout, have no recorded lifetime, and stay
published a day (the longest lifetime the settings allow) after they retire, never less."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import MetaData, Table, insert

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import migrate_to, schema_differences
from shopmesh_users.domain.keys import published_keys
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.store.repository import SigningKeyRepository
from shopmesh_users.store.tables import metadata, signing_keys

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# The table as the previous release declares it, and writes it.
PREVIOUS = Table(
    "signing_keys", MetaData(), *(c._copy() for c in signing_keys.columns if c.name != "token_lifetime_seconds")
)


def previous_key(generation: int, retired_at: datetime | None) -> dict[str, Any]:
    return {
        "kid": f"k{generation}",
        "generation": generation,
        "private_key_pem": "pem",
        "public_jwk": f'{{"kid": "k{generation}"}}',
        "created_at": T0,
        "activates_at": T0,
        "retired_at": retired_at,
    }


async def test_keys_of_the_previous_release_stay_published_a_day_after_they_retire(blank_db: Database) -> None:
    await migrate_to(blank_db, VERSIONS, "users_0001")
    async with blank_db.transaction() as connection:
        await connection.execute(insert(PREVIOUS).values(previous_key(1, retired_at=T0 + timedelta(hours=1))))
    await migrate(blank_db, VERSIONS, metadata)
    assert await schema_differences(blank_db, metadata) == []
    # A pod of the previous release, still running during the rollout, rotates: its key has no record either.
    async with blank_db.transaction() as connection:
        await connection.execute(insert(PREVIOUS).values(previous_key(2, retired_at=T0 + timedelta(hours=2))))
        await connection.execute(insert(PREVIOUS).values(previous_key(3, retired_at=None)))

    async with blank_db.read() as connection:
        keys = await SigningKeyRepository(connection).all()
    assert [k.token_lifetime for k in keys] == [None, None, None]
    just_before = T0 + timedelta(hours=1) + DAY - timedelta(seconds=1)
    assert [k.kid for k in published_keys(keys, just_before)] == ["k3", "k2", "k1"]
    assert [k.kid for k in published_keys(keys, just_before + timedelta(seconds=1))] == ["k3", "k2"]


async def test_a_keys_recorded_token_lifetime_is_only_ever_raised(blank_db: Database) -> None:
    await migrate_to(blank_db, VERSIONS, "users_0001")
    async with blank_db.transaction() as connection:
        await connection.execute(insert(PREVIOUS).values(previous_key(1, retired_at=None)))
    await migrate(blank_db, VERSIONS, metadata)
    async with blank_db.transaction() as connection:
        await connection.execute(insert(signing_keys).values({**previous_key(2, None), "token_lifetime_seconds": 3600}))
        repository = SigningKeyRepository(connection)
        for kid in ("k1", "k2"):
            await repository.record_token_lifetime(kid, timedelta(hours=2))
            await repository.record_token_lifetime(kid, timedelta(minutes=30))
        keys = await repository.all()
    # No record stands for the longest lifetime already: none is made that would shorten it.
    assert [(k.kid, k.token_lifetime) for k in keys] == [("k1", None), ("k2", timedelta(hours=2))]
