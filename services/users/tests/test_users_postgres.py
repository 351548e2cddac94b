"""The register path and key rotation on PostgreSQL, where concurrent transactions really overlap: racing
registrations of one e-mail make exactly one account (the others ALREADY_EXISTS, never INTERNAL), and
replicas rotating at the same moment add exactly one key."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
from sqlalchemy import func, select

from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_users.store.tables import signing_keys, users
from shopmesh_users.token_verifier import verify_access_token
from shopmesh_users.wiring import build

from .conftest import FakeClock, error_of, jwks_document, login, register, running, users_settings


async def test_register_login_and_get_user_on_postgresql(
    postgres: PostgresServer, tmp_path: Path, clock: FakeClock
) -> None:
    settings = users_settings(tmp_path, database_url=postgres.create_database())
    async with running(settings, clock) as (_, stub):
        user = await register(stub, email=" Ann@Example.com")
        assert (await stub.GetUser(users_pb2.GetUserRequest(user_id=user.id))).user == user
        token = (await login(stub, email="ann@example.com")).access_token
        assert verify_access_token(token, await jwks_document(stub))["sub"] == user.id
        duplicate = await error_of(register(stub, email="ANN@example.com"))
        assert (duplicate.code, duplicate.reason) == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_ALREADY_REGISTERED")


async def test_concurrent_registrations_of_one_email_on_postgresql_make_one_account_and_no_internal_error(
    postgres: PostgresServer, tmp_path: Path, clock: FakeClock
) -> None:
    settings = users_settings(tmp_path, database_url=postgres.create_database())
    async with running(settings, clock) as (service, stub):

        async def attempt(n: int) -> str:
            try:
                await register(stub, email=f"{'RACE' if n % 2 else 'race'}@example.com", display_name=f"R{n}")
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}:{details_of(error).reason}"
            return "OK"

        outcomes = Counter(await asyncio.gather(*(attempt(n) for n in range(20))))
        async with service.database.transaction() as session:
            accounts = await session.scalar(select(func.count()).select_from(users))
    assert outcomes == {"OK": 1, "ALREADY_EXISTS:EMAIL_ALREADY_REGISTERED": 19}
    assert accounts == 1


async def test_replicas_rotating_at_the_same_moment_on_postgresql_add_exactly_one_key(
    postgres: PostgresServer, tmp_path: Path, clock: FakeClock
) -> None:
    settings = users_settings(tmp_path, database_url=postgres.create_database(), key_rotation_interval_seconds=3600)
    replicas = [await build(settings, clock) for _ in range(4)]
    try:
        clock.advance(3600)
        rotated = await asyncio.gather(*(r.application.rotate_keys_if_due() for r in replicas))
        async with replicas[0].database.transaction() as session:
            generations = list(await session.scalars(select(signing_keys.c.generation)))
    finally:
        for replica in replicas:
            await replica.password_strength.close()
            await replica.passwords.close()
            await replica.database.dispose()
    assert sum(key is not None for key in rotated) == 1
    assert sorted(generations) == [1, 2]
