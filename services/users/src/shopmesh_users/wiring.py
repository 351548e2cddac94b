"""Composition root: settings, database and migrations, the first signing key, the rotation task, the
servicer; then serve until told to stop. `python -m shopmesh_users revoke-keys` instead replaces every
signing key at once and exits (for a key that may have leaked; docs/auth.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from shopmesh.users.v1 import users_pb2_grpc
from shopmesh_chassis import app
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.server import ServiceBinding
from shopmesh_users.application import Clock, KeyPolicy, UsersApplication, utc_now
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.passwords import Passwords
from shopmesh_users.settings import UsersSettings
from shopmesh_users.store.tables import metadata
from shopmesh_users.transport import DESCRIPTOR, UsersServicer


@dataclass(frozen=True)
class Users:
    """The users service ready to serve: its binding, and what to start and close around serving."""

    database: Database
    passwords: Passwords
    application: UsersApplication
    rotator: Periodic
    binding: ServiceBinding


def key_policy(settings: UsersSettings) -> KeyPolicy:
    return KeyPolicy(
        token_lifetime=timedelta(seconds=settings.token_lifetime_seconds),
        publish_ahead=timedelta(seconds=settings.key_publish_ahead_seconds),
        rotation_interval=timedelta(seconds=settings.key_rotation_interval_seconds),
    )


def passwords(settings: UsersSettings) -> Passwords:
    return Passwords(
        time_cost=settings.password_hash_time_cost,
        memory_kib=settings.password_hash_memory_kib,
        parallelism=settings.password_hash_parallelism,
        concurrency=settings.password_hash_concurrency,
        queue=settings.password_hash_queue,
    )


async def _migrated(settings: UsersSettings, hashing: Passwords, clock: Clock) -> tuple[Database, UsersApplication]:
    database = Database(settings.resolved_database_url)
    try:
        await migrate(database, VERSIONS, metadata)
    except BaseException:
        await database.dispose()
        raise
    return database, UsersApplication(database, hashing, key_policy(settings), clock)


async def build(settings: UsersSettings, clock: Clock = utc_now) -> Users:
    """Migrate the database and make sure a key can sign; the rotator is built but not started."""
    hashing = passwords(settings)
    try:
        database, application = await _migrated(settings, hashing, clock)
    except BaseException:
        await hashing.close()
        raise
    try:
        await application.ensure_signing_key()
    except BaseException:
        await hashing.close()
        await database.dispose()
        raise
    rotator = Periodic("signing-key-rotation", settings.key_rotation_check_seconds, application.rotate_keys_if_due)
    binding = ServiceBinding(DESCRIPTOR, UsersServicer(application), users_pb2_grpc.add_UsersServiceServicer_to_server)
    return Users(database=database, passwords=hashing, application=application, rotator=rotator, binding=binding)


async def _main() -> None:
    settings = load_settings(UsersSettings)
    provider = app.setup_observability(settings)
    users = await build(settings)
    users.rotator.start()
    await app.serve(
        settings,
        [users.binding],
        tracer_provider=provider,
        # The rotator first: it must finish its transaction before the database closes. A hash whose caller
        # gave up can outlive the server's drain: waited for within the hooks' budget.
        on_shutdown=[users.rotator.stop, users.passwords.close, users.database.dispose],
    )


async def _revoke_keys() -> None:
    settings = load_settings(UsersSettings)
    hashing = passwords(settings)
    try:
        database, application = await _migrated(settings, hashing, utc_now)
        try:
            rotation = await application.revoke_keys()
        finally:
            await database.dispose()
    finally:
        await hashing.close()
    print(
        f"revoked {len(rotation.expired)} signing key(s) ({', '.join(rotation.expired) or 'none'}); "
        f"{rotation.new_key.kid} signs from now on. Tokens signed before stop verifying once verifiers "
        "refetch the key set (the gateway: at the latest after JWKS_MAX_AGE_SECONDS; docs/auth.md)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_users", description="The shopmesh users service.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "revoke-keys"),
        default="serve",
        help="serve (default), or revoke-keys: replace every signing key with one that signs at once, then exit",
    )
    command = parser.parse_args(argv).command
    app.run(_revoke_keys if command == "revoke-keys" else _main)
