"""`python -m shopmesh_users revoke-keys`, run as its own process beside a serving users service on the
same SQLite database: every key goes, a new one signs at once, earlier tokens stop verifying."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest

from shopmesh_users.token_verifier import verify_access_token
from shopmesh_users.wiring import Users

from .conftest import FakeClock, jwks_document, login, published_kids, register, running, users_settings

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub


def revoke_keys(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data_dir), "DATABASE_URL": "", "LOG_FORMAT": "text"}
    return subprocess.run(
        [sys.executable, "-m", "shopmesh_users", "revoke-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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


async def test_revoke_keys_on_a_new_database_revokes_nothing_and_leaves_one_key_that_signs(
    tmp_path: Path, clock: FakeClock
) -> None:
    result = revoke_keys(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "revoked 0 signing key(s) (none);" in result.stdout
    clock.now = datetime.now(UTC)
    async with running(users_settings(tmp_path), clock) as (_users, stub):
        [kid] = await published_kids(stub)  # the service found a key that signs and added none
        assert f"; {kid} signs from now on" in result.stdout


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
