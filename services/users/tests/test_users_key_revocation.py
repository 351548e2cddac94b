"""`python -m shopmesh_users revoke-keys`, run as its own process beside a serving users service on the
same SQLite database: every key goes, a new one signs at once, earlier tokens stop verifying. Pointed at
a database without keys, or one it cannot reach, it revokes nothing and says so in one line, exit 1."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import free_port
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_users import wiring
from shopmesh_users.application import KeysKeptChanging, UsersApplication
from shopmesh_users.domain.keys import Rotation
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.store.repository import SigningKeyRepository
from shopmesh_users.store.tables import metadata
from shopmesh_users.token_verifier import verify_access_token
from shopmesh_users.wiring import Users

from .conftest import FakeClock, jwks_document, login, published_kids, register

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub


def run_revoke_keys(cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shopmesh_users", "revoke-keys"],
        env={"PATH": "/usr/bin:/bin", "LOG_FORMAT": "text", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def revoke_keys(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_revoke_keys(DATA_DIR=str(data_dir), DATABASE_URL="")


async def test_revoke_keys_replaces_every_key_and_tokens_signed_before_stop_verifying(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock, tmp_path: Path
) -> None:
    await register(stub)
    old_token = (await login(stub)).access_token
    pending = await users.application.rotate_keys()  # published, not yet signing: it goes too
    assert pending is not None
    before = await published_kids(stub)
    assert len(before) == 2

    result = revoke_keys(tmp_path)

    assert result.returncode == 0, result.stderr
    clock.now = datetime.now(UTC)  # the command ran on the real clock
    [new_kid] = await published_kids(stub)
    assert new_kid not in before
    # Named oldest first; the key set lists them newest first.
    assert f"revoked 2 signing key(s) ({', '.join(reversed(before))}); {new_kid} signs" in result.stdout
    document = await jwks_document(stub)
    with pytest.raises(jwt.InvalidTokenError):
        verify_access_token(old_token, document)
    new_token = (await login(stub)).access_token
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert verify_access_token(new_token, document)["sub"]


def test_revoke_keys_refuses_a_database_file_that_does_not_exist_and_creates_none(tmp_path: Path) -> None:
    # Run from the wrong directory (DATA_DIR defaults to ./.data) or with a mistyped DATA_DIR: a new,
    # empty database "revoked" nothing while the leaked key kept signing in the real one.
    result = run_revoke_keys(cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: no users database at ")
    assert "nothing revoked" in line
    assert not (tmp_path / ".data" / "users.db").exists()
    assert "revoked" not in result.stdout


def test_revoke_keys_refuses_a_database_without_the_users_schema_and_leaves_it_unmigrated(tmp_path: Path) -> None:
    (tmp_path / "users.db").touch()  # another service's database, or a file restored empty
    result = revoke_keys(tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "has no users schema" in line
    with sqlite3.connect(tmp_path / "users.db") as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_revoke_keys_refuses_a_file_that_is_no_database_with_one_error_line(tmp_path: Path) -> None:
    # DATA_DIR pointing at a folder whose users.db is no SQLite database (a backup archive, an encrypted
    # copy, another program's file): docs/auth.md promises one `error: ...` line and exit 1 for a database
    # that is not the users service's, and nothing revoked; not a traceback of sqlite3.DatabaseError.
    (tmp_path / "users.db").write_bytes(b"this is not an SQLite database, but a file someone put here\n" * 4)
    result = revoke_keys(tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "nothing revoked" in line or "not a database" in line


async def test_revoke_keys_refuses_a_users_database_that_holds_no_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/users.db")
    try:
        await migrate(database, VERSIONS, metadata)
    finally:
        await database.dispose()
    result = revoke_keys(tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "holds no signing keys" in line


def test_revoke_keys_on_an_unreachable_database_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/users"
    result = run_revoke_keys(cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database unavailable: cannot connect to the database"), line


def test_revoke_keys_on_a_mistyped_database_name_is_one_error_line_and_exit_1(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database().rsplit("/", 1)[0] + "/no_such_database"
    result = run_revoke_keys(cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database unavailable:"), line
    assert "no_such_database" in line


def test_revoke_keys_as_a_role_the_database_refuses_is_one_error_line_and_exit_1(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    # k8s/infra gives each service its own database and user and `REVOKE ALL ON DATABASE ... FROM PUBLIC`:
    # a DATABASE_URL naming another service's user (a mistyped DATABASE_URL, docs/auth.md) is refused at
    # connect with 42501 "permission denied for database". One `error:` line and exit 1, not a traceback.
    url = postgres.create_database()
    name = url.rsplit("/", 1)[1]
    statements = [
        "CREATE ROLE catalog LOGIN PASSWORD 's3cret'",
        f"REVOKE ALL ON DATABASE {name} FROM PUBLIC",
    ]
    for statement in statements:
        subprocess.run(
            [str(postgres.bin_dir / "psql"), postgres.url(name, driver="postgresql")],
            input=statement, capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
    result = run_revoke_keys(cwd=tmp_path, DATABASE_URL=postgres.url(name, user="catalog", password="s3cret"))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    assert "permission denied" in line


def test_revoke_keys_that_lost_every_race_to_rotations_is_one_error_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def keys_kept_changing(_application: UsersApplication) -> Rotation:
        raise KeysKeptChanging("signing keys kept changing under the revocation; nothing revoked, run it again")

    async def one_key(_repository: SigningKeyRepository) -> int:
        return 1

    (tmp_path / "users.db").touch()
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setattr(SigningKeyRepository, "count", one_key)
    monkeypatch.setattr(UsersApplication, "revoke_keys", keys_kept_changing)
    with pytest.raises(SystemExit) as exited:
        wiring.main(["revoke-keys"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: signing keys kept changing under the revocation; nothing revoked, run it again\n"
    )


def test_an_unknown_command_is_refused_with_usage_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shopmesh_users", "revoke-everything"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice: 'revoke-everything'" in result.stderr


async def test_a_login_still_checking_its_password_when_the_keys_are_revoked_gets_a_token_of_the_new_key(
    users: Users, stub: UsersServiceAsyncStub, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/auth.md: from a revocation on, "new logins get tokens signed by the new key". A login whose
    # password is being hashed while the revocation runs (a hash takes tens of milliseconds, seconds behind
    # a full queue) answers after it, so its token must not carry a revoked key: it would be refused at once.
    await register(stub)
    [revoked_kid] = await published_kids(stub)
    checking, go_on = asyncio.Event(), asyncio.Event()
    verify = users.passwords.verify

    async def slow_verify(password_hash: str | None, password: str) -> bool:
        checking.set()
        await go_on.wait()
        return await verify(password_hash, password)

    monkeypatch.setattr(users.passwords, "verify", slow_verify)
    logging_in = asyncio.ensure_future(login(stub))
    await asyncio.wait_for(checking.wait(), 10)
    rotation = await users.application.revoke_keys()
    go_on.set()
    token = (await logging_in).access_token

    assert rotation.expired == (revoked_kid,)
    document = await jwks_document(stub)
    assert jwt.get_unverified_header(token)["kid"] == rotation.new_key.kid
    assert verify_access_token(token, document)["sub"]
