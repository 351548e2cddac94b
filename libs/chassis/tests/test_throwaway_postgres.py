"""The throwaway PostgreSQL (testing.postgres: the tests' server and `make run --postgres`'s) listens on 127.0.0.1,
where every account of the machine reaches it: only its password lets one in. It had trust authentication, under
which any local account (`nobody`) was its superuser, read every database and ran shell commands as the server's
account (COPY ... TO PROGRAM)."""

from __future__ import annotations

import os
import stat
import subprocess

import asyncpg
import pytest

from shopmesh_chassis.testing.postgres import SUPERUSER, PostgresServer

SELECT_SUPERUSER = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
# libpq reads no password from a file that is not there (/dev/null: it warns "not a plain file").
NO_PASSFILE = "/nonexistent/shopmesh.pgpass"


def psql(server: PostgresServer, *target: str, **env: str) -> subprocess.CompletedProcess[str]:
    """psql that never prompts, without the password from this account's environment or ~/.pgpass (unless
    `env` gives it): what another account of the machine has."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    command = [str(server.bin_dir / "psql"), "-w", "-At", *target, "-c", SELECT_SUPERUSER]
    return subprocess.run(
        command, env={**clean, "PGPASSFILE": NO_PASSFILE, **env}, capture_output=True, text=True, timeout=30
    )


def test_a_connection_without_the_superusers_password_is_refused(postgres: PostgresServer) -> None:
    refused = psql(postgres, "-h", "127.0.0.1", "-p", str(postgres.port), "-U", SUPERUSER, "-d", "postgres")
    assert refused.returncode != 0, f"got in as the superuser with no password: {refused.stdout}"
    assert "no password supplied" in refused.stderr, refused.stderr


async def test_a_wrong_password_is_refused(postgres: PostgresServer) -> None:
    try:
        connection = await asyncpg.connect(postgres.url(password="not-the-password", driver="postgresql"))
    except asyncpg.InvalidPasswordError:
        return
    await connection.close()
    raise AssertionError("a wrong password got in as the superuser")


async def test_the_urls_the_server_hands_out_carry_the_password_and_get_in_as_superuser(
    postgres: PostgresServer,
) -> None:
    for url in (postgres.create_database(), postgres.url()):
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            assert await connection.fetchval(SELECT_SUPERUSER) is True
        finally:
            await connection.close()


def test_the_password_file_is_this_accounts_alone_and_lets_psql_in(postgres: PostgresServer) -> None:
    mode = stat.S_IMODE(postgres.passfile.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert postgres.passfile.stat().st_uid == os.geteuid()
    target = ("-h", "127.0.0.1", "-p", str(postgres.port), "-U", SUPERUSER, "-d", "postgres")
    accepted = psql(postgres, *target, PGPASSFILE=str(postgres.passfile))
    assert accepted.stdout.strip() == "t", accepted.stderr


def test_the_servers_repr_leaves_the_password_out(postgres: PostgresServer) -> None:
    # A failing test's report shows its fixtures' reprs.
    assert postgres.password not in repr(postgres)


@pytest.mark.parametrize("name", ['orders" WITH (FORCE); --', "Orders", "1orders", "orders-canary", "o" * 64, ""])
def test_a_database_name_psql_and_sql_would_not_take_unquoted_as_it_is_is_refused(
    postgres: PostgresServer, name: str
) -> None:
    """`create_database(name=...)` names a database a person then types (`psql -d orders`) and drop_databases
    quotes: a name folded to lowercase, cut at 63 bytes or quoting itself out is refused before the server."""
    before = list(postgres.created)
    with pytest.raises(ValueError, match="database name"):
        postgres.create_database(name=name)
    assert postgres.created == before
