"""Signing-key rotation over real gRPC on SQLite, on a clock the tests move: a new key is published before
it signs, tokens of the previous key keep verifying, retired keys leave once their tokens have expired."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest
from sqlalchemy import select, text

from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.testing import eventually
from shopmesh_users.store.tables import signing_keys
from shopmesh_users.token_verifier import verify_access_token
from shopmesh_users.wiring import Users

from .conftest import FakeClock, jwks_document, login, published_kids, register, running, users_settings

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub

PUBLISH_AHEAD = 600  # the default
LIFETIME = 3600


async def kid_of_next_token(stub: UsersServiceAsyncStub) -> str:
    return str(jwt.get_unverified_header((await login(stub)).access_token)["kid"])


async def stored_kids(users: Users) -> set[str]:
    async with users.database.transaction() as session:
        return set(await session.scalars(select(signing_keys.c.kid)))


async def assert_published_until_its_token_expires(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock, kid: str, token: str
) -> None:
    """`kid`, which signed `token`, survives a rotation a second before `token` expires (`token` still
    verifies), and leaves the JWKS only once the publish-ahead past that expiry is over."""
    expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    clock.advance(expires - int(clock.now.timestamp()) - 1)
    # A rotation at this moment deletes the keys it judges expired: `kid` must not be one.
    await users.application.rotate_keys()
    assert kid in await published_kids(stub)
    assert verify_access_token(token, await jwks_document(stub))["sub"]
    # Logged in at the rotation's moment: the key could sign for the publish-ahead after this token.
    clock.advance(1 + PUBLISH_AHEAD - 1)
    assert kid in await published_kids(stub)
    clock.advance(1)
    assert kid not in await published_kids(stub)


async def test_a_rotated_key_is_published_at_once_but_signs_only_after_the_publish_ahead_delay(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    await register(stub)
    [old] = await published_kids(stub)
    new = await users.application.rotate_keys()
    assert new is not None
    assert await published_kids(stub) == [new.kid, old]
    assert await kid_of_next_token(stub) == old
    clock.advance(PUBLISH_AHEAD - 1)
    assert await kid_of_next_token(stub) == old
    clock.advance(1)
    assert await kid_of_next_token(stub) == new.kid


async def test_a_token_signed_by_the_previous_key_still_verifies_with_the_jwks_after_rotation(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    await register(stub)
    old_token = (await login(stub)).access_token
    await users.application.rotate_keys()
    clock.advance(PUBLISH_AHEAD)
    new_token = (await login(stub)).access_token
    assert jwt.get_unverified_header(old_token)["kid"] != jwt.get_unverified_header(new_token)["kid"]
    document = await jwks_document(stub)
    assert verify_access_token(old_token, document)["sub"] == verify_access_token(new_token, document)["sub"]


async def test_a_retired_key_leaves_the_jwks_when_its_last_token_expires_and_is_deleted_at_the_next_rotation(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    [old] = await published_kids(stub)
    new = await users.application.rotate_keys()
    assert new is not None
    clock.advance(PUBLISH_AHEAD + LIFETIME - 1)
    assert await published_kids(stub) == [new.kid, old]
    clock.advance(1)
    assert await published_kids(stub) == [new.kid]
    assert old in await stored_kids(users)
    newest = await users.application.rotate_keys()
    assert newest is not None
    assert await stored_kids(users) == {new.kid, newest.kid}


async def test_the_jwks_lists_keys_newest_first(users: Users, stub: UsersServiceAsyncStub, clock: FakeClock) -> None:
    [first] = await published_kids(stub)
    second = await users.application.rotate_keys()
    clock.advance(60)
    third = await users.application.rotate_keys()
    assert second is not None
    assert third is not None
    assert await published_kids(stub) == [third.kid, second.kid, first]


async def test_periodic_rotation_adds_one_key_once_the_newest_is_as_old_as_the_interval(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = users_settings(tmp_path, key_rotation_interval_seconds=3600)
    async with running(settings, clock) as (users, stub):
        clock.advance(3599)
        assert await users.application.rotate_keys_if_due() is None
        clock.advance(1)
        rotated = await users.application.rotate_keys_if_due()
        assert rotated is not None
        assert await users.application.rotate_keys_if_due() is None
        assert len(await published_kids(stub)) == 2


async def test_periodic_rotation_is_off_with_a_zero_interval(tmp_path: Path, clock: FakeClock) -> None:
    async with running(users_settings(tmp_path, key_rotation_interval_seconds=0), clock) as (users, stub):
        clock.advance(365 * 24 * 3600)
        assert await users.application.rotate_keys_if_due() is None
        assert len(await published_kids(stub)) == 1


async def test_the_rotation_task_rotates_a_due_key_in_the_background(tmp_path: Path, clock: FakeClock) -> None:
    settings = users_settings(tmp_path, key_rotation_interval_seconds=3600)
    async with running(settings, clock) as (users, stub):
        rotated = asyncio.Event()

        async def rotate_if_due() -> None:
            if await users.application.rotate_keys_if_due() is not None:
                rotated.set()

        rotator = Periodic("signing-key-rotation", 0.05, rotate_if_due)
        rotator.start()
        try:
            clock.advance(3600)
            await asyncio.wait_for(rotated.wait(), timeout=10)
        finally:
            await rotator.stop()
        assert len(await published_kids(stub)) == 2


async def test_a_rotation_that_fails_in_the_database_never_logs_the_new_private_key(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The database failing under the rotation's INSERT (PostgreSQL restarting, a full disk) is logged by
    the rotator; SQLAlchemy's error text carries the statement's parameters, the new key's PEM among them:
    a private signing key (anyone holding it mints tokens) must never reach a log line."""
    settings = users_settings(tmp_path, key_rotation_interval_seconds=3600)
    async with running(settings, clock) as (users, _stub):
        async with users.database.transaction() as session:
            # Fails the INSERT itself with an OperationalError, as a database going away under it does.
            await session.execute(
                text("CREATE TRIGGER fail_insert BEFORE INSERT ON signing_keys BEGIN SELECT * FROM gone_away; END")
            )
        caplog.set_level(logging.INFO)
        clock.advance(3600)
        users.rotator.start()
        try:
            await eventually(lambda: any(r.exc_info for r in caplog.records), "the rotator logged its failure")
        finally:
            await users.rotator.stop()
    formatter = logging.Formatter("%(message)s")
    lines = "\n".join(formatter.format(record) for record in caplog.records)
    assert "gone_away" in lines, "the rotation did not fail as the test means it to"
    assert "PRIVATE KEY" not in lines


async def test_a_token_signed_under_a_longer_lifetime_verifies_until_its_exp_after_a_restart_with_a_shorter_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Lowering TOKEN_LIFETIME_SECONDS must not cut short the tokens signed under the longer one: their key
    stays published, and is not purged by a rotation, until the last of them expires."""
    async with running(users_settings(tmp_path, token_lifetime_seconds=4 * LIFETIME), clock) as (_, stub):
        await register(stub)
        long_lived = (await login(stub)).access_token
    async with running(users_settings(tmp_path, token_lifetime_seconds=LIFETIME), clock) as (users, stub):
        [old] = await published_kids(stub)
        await users.application.rotate_keys()
        await assert_published_until_its_token_expires(users, stub, clock, old, long_lived)


async def test_a_retiring_key_that_signs_under_a_raised_lifetime_stays_published_until_that_token_expires(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The key rotated out under the shorter lifetime still signs during its publish-ahead; a replica (or
    restart) with a longer lifetime signing with it then must extend how long it stays published."""
    async with running(users_settings(tmp_path, token_lifetime_seconds=LIFETIME), clock) as (users, stub):
        await register(stub)
        [old] = await published_kids(stub)
        await users.application.rotate_keys()
    async with running(users_settings(tmp_path, token_lifetime_seconds=4 * LIFETIME), clock) as (users, stub):
        long_lived = (await login(stub)).access_token
        assert jwt.get_unverified_header(long_lived)["kid"] == old
    # Back to the shorter lifetime: what the key signed is judged by the key's record, not the setting.
    async with running(users_settings(tmp_path, token_lifetime_seconds=LIFETIME), clock) as (users, stub):
        await assert_published_until_its_token_expires(users, stub, clock, old, long_lived)
