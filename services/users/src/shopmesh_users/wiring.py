"""Composition root: settings, database and migrations, the first signing key, the rotation task, the
servicer; then serve until told to stop. `python -m shopmesh_users revoke-keys` instead replaces every
signing key at once and exits (for a key that may have leaked; docs/auth.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from shopmesh.users.v1 import users_pb2_grpc
from shopmesh_chassis import app
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.config import load_settings, shown_url
from shopmesh_chassis.db import Database, is_sqlite
from shopmesh_chassis.db_errors import database_unavailable
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.server import ServiceBinding
from shopmesh_users.application import KeyPolicy, KeysKeptChanging, UsersApplication
from shopmesh_users.domain.failed_logins import LoginThrottle
from shopmesh_users.metrics import UsersMetrics
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.password_strength import PasswordStrength
from shopmesh_users.passwords import Passwords
from shopmesh_users.settings import UsersSettings
from shopmesh_users.store.repository import SigningKeyRepository
from shopmesh_users.store.tables import metadata
from shopmesh_users.transport import DESCRIPTOR, UsersServicer

log = logging.getLogger("shopmesh.users")

# The bound on the estimating process' warm-up at startup: its spawn and zxcvbn's loading took ~0.6 s on a CPU of
# their own, so ~6 s on a pod of a tenth of a CPU; 30 s leaves that five times over and still starts a replica whose
# process will not start within a bound at all, one that only speeds up the first Register.
WARM_UP_SECONDS = 30.0


@dataclass(frozen=True)
class Users:
    """The users service ready to serve: its binding, its metrics, and what to start and close around serving."""

    database: Database
    passwords: Passwords
    password_strength: PasswordStrength
    application: UsersApplication
    rotator: Periodic
    # Deletes the stored login attempts that have refilled (docs/auth.md, "Login throttling").
    pruner: Periodic
    binding: ServiceBinding
    # The server's, which users' own join (UsersMetrics): handed to `app.serve`.
    metrics: ServerMetrics

    @property
    def shutdown_hooks(self) -> list[app.ShutdownHook]:
        """What to close once the server has stopped, in order. The rotator and the pruner first, and the login
        attempts that cancelled logins left being written: each must finish its transaction before the database
        closes. A hash whose caller gave up can outlive the server's drain: waited for within the hooks'
        budget."""
        return [
            self.rotator.stop,
            self.pruner.stop,
            self.passwords.close,
            self.password_strength.close,
            self.application.settle_login_attempts,
            self.database.dispose,
        ]


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


def login_throttle(settings: UsersSettings) -> LoginThrottle:
    return LoginThrottle(settings.login_failure_burst, timedelta(seconds=settings.login_failure_refill_seconds))


async def _migrated(
    settings: UsersSettings, hashing: Passwords, strength: PasswordStrength, clock: Clock
) -> tuple[Database, UsersApplication]:
    database = Database.from_settings(settings)
    try:
        await migrate(database, VERSIONS, metadata)
    except BaseException:
        await database.dispose()
        raise
    application = UsersApplication(
        database, hashing, key_policy(settings), clock, login_throttle(settings), password_strength=strength
    )
    return database, application


async def _abandon(warming: asyncio.Task[None], strength: PasswordStrength) -> None:
    """A build that failed: the warming estimate given up and its process ended."""
    warming.cancel()
    await asyncio.gather(warming, return_exceptions=True)
    await strength.close()


async def _warmed(warming: asyncio.Task[None], metrics: UsersMetrics) -> None:
    """Waits for the warm-up, within `WARM_UP_SECONDS`. One that fails or takes longer does not keep the service from
    serving, its logins and JWKS included: the first Register waits for the warm-up still running (the estimate
    already handed to the process cannot be called back), or starts the process again if it died."""
    try:
        await asyncio.wait_for(warming, WARM_UP_SECONDS)
    except Exception as error:  # TimeoutError, or the spawn's, the import's or the estimate's own
        if isinstance(error, TimeoutError):
            # The others were counted by the estimate, as any Register's are.
            metrics.estimate_failed("timeout")
        log.warning(
            "the password-strength process did not warm up (%s); serving anyway, the first Register waits for it or "
            "starts it again (shopmesh_users_password_strength_failures_total counts the estimates that fail)",
            type(error).__name__,
        )


async def build(settings: UsersSettings, clock: Clock = utc_now) -> Users:
    """Migrate the database, make sure a key can sign and start the estimating process; the rotator and the
    pruner are built but not started."""
    hashing = passwords(settings)
    metrics = ServerMetrics()
    users_metrics = UsersMetrics(metrics.registry)
    strength = PasswordStrength(on_failure=users_metrics.estimate_failed)
    # Beside the migrations: the estimating process spawns and loads zxcvbn on a CPU of its own, if there is one.
    warming = asyncio.create_task(strength.start())
    try:
        database, application = await _migrated(settings, hashing, strength, clock)
    except BaseException:
        await _abandon(warming, strength)
        await hashing.close()
        raise
    try:
        await application.ensure_signing_key()
        # Before the server starts, so before it reports SERVING: the first Register does not wait for it.
        await _warmed(warming, users_metrics)
    except BaseException:
        await _abandon(warming, strength)
        await hashing.close()
        await database.dispose()
        raise
    rotator = Periodic("signing-key-rotation", settings.key_rotation_check_seconds, application.rotate_keys_if_due)
    pruner = Periodic("login-attempts-prune", settings.login_failure_prune_seconds, application.prune_login_attempts)
    binding = ServiceBinding(DESCRIPTOR, UsersServicer(application), users_pb2_grpc.add_UsersServiceServicer_to_server)
    return Users(
        database=database,
        passwords=hashing,
        password_strength=strength,
        application=application,
        rotator=rotator,
        pruner=pruner,
        binding=binding,
        metrics=metrics,
    )


async def _main() -> None:
    settings = load_settings(UsersSettings)
    provider = app.setup_observability(settings)
    users = await build(settings)
    users.rotator.start()
    users.pruner.start()
    await app.serve(
        settings,
        [users.binding],
        tracer_provider=provider,
        on_shutdown=users.shutdown_hooks,
        metrics=users.metrics,
    )


class RevocationRefused(Exception):
    """The database holds no signing keys to revoke: most likely not the one the users service runs on."""


def _revocation_target(url: str) -> Database:
    """The database to revoke the keys of; never a new one. Creating it (sqlite3 does on connect) would
    report success while the leaked key stays in the database the service really uses."""
    if is_sqlite(url):
        path = make_url(url).database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise RevocationRefused(
                f"no users database at {path or ':memory:'} (check DATA_DIR or DATABASE_URL); nothing revoked"
            )
    return Database(url)


async def _revoke_keys() -> None:
    settings = load_settings(UsersSettings)
    url = settings.resolved_database_url
    # hide_password masks only user:password@; libpq's ?password= would be printed.
    shown = shown_url(url) or "the database"
    # No migrations: a database that needs them is not the one serving the leaked key.
    database = _revocation_target(url)
    hashing = passwords(settings)
    try:
        async with database.read() as connection:
            stored = await SigningKeyRepository(connection).count()
        if stored is None:
            raise RevocationRefused(f"{shown} has no users schema (check DATA_DIR or DATABASE_URL); nothing revoked")
        if stored == 0:
            raise RevocationRefused(f"{shown} holds no signing keys (check DATA_DIR or DATABASE_URL); nothing revoked")
        rotation = await UsersApplication(database, hashing, key_policy(settings), utc_now).revoke_keys()
    finally:
        await database.dispose()
        await hashing.close()
    print(
        f"revoked {len(rotation.expired)} signing key(s) ({', '.join(rotation.expired) or 'none'}); "
        f"{rotation.new_key.kid} signs from now on. Tokens signed before stop verifying once verifiers "
        "refetch the key set (the gateway: at the latest after JWKS_MAX_AGE_SECONDS; docs/auth.md)."
    )


def _refusal(error: Exception) -> str | None:
    """The one line an operator gets for a revocation that did not happen, or None for a bug (traceback)."""
    if isinstance(error, RevocationRefused | KeysKeptChanging):
        return str(error)
    if database_unavailable(error) or _refused_connection(error):
        cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
        return " ".join(f"database unavailable: {cause}".split())
    if isinstance(error, DBAPIError) and type(error.orig) is sqlite3.DatabaseError:
        # Not a users database at all (DATA_DIR names another file): SQLite says so on the first read.
        return f"{error.orig}: check DATA_DIR or DATABASE_URL; nothing revoked"
    return None


def _refused_connection(error: Exception) -> bool:
    """PostgreSQL refused the connection itself: no such database (3D000), bad credentials (28xxx), or a role
    without CONNECT on the database (42501: k8s/infra revokes it from PUBLIC), as a mistyped DATABASE_URL
    gives."""
    sqlstate = str(getattr(getattr(error, "orig", None), "sqlstate", None) or "")
    return sqlstate in ("3D000", "42501") or sqlstate.startswith("28")


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
    if command != "revoke-keys":
        app.run(_main)
    try:
        app.run(_revoke_keys)
    except Exception as error:
        refusal = _refusal(error)
        if refusal is None:
            raise
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(1)
