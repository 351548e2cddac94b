"""`python -m shopmesh_users` runs the whole service: migrations, the first signing key, the rotation task,
drain on SIGTERM."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import grpc
import pytest

from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis.testing import PYTHON, eventually, start_process_serving
from shopmesh_users.token_verifier import verify_access_token

from .conftest import PASSWORD, jwks_document, published_kids


async def test_service_process_registers_and_logs_in_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {
        "METRICS_PORT": "-1",
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "",
        "PASSWORD_HASH_TIME_COST": "1",
        "PASSWORD_HASH_MEMORY_KIB": "8192",
        "PASSWORD_HASH_PARALLELISM": "1",
    }
    service = await start_process_serving([PYTHON, "-m", "shopmesh_users"], log_path=tmp_path / "users.log", env=env)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = users_pb2_grpc.UsersServiceStub(channel)
            await stub.Register(
                users_pb2.RegisterRequest(email="ann@example.com", password=PASSWORD, display_name="Ann")
            )
            response = await stub.Login(users_pb2.LoginRequest(email="ann@example.com", password=PASSWORD))
            claims = verify_access_token(response.access_token, await jwks_document(stub))
        assert claims["sub"] == response.user_id
    finally:
        service.signal()
        exit_code = service.wait()
    assert exit_code == 0, service.output()
    assert "shutdown hook failed" not in service.output()
    assert PASSWORD not in service.output()


def estimating_processes(pid: int) -> list[int]:
    """The multiprocessing workers `pid` spawned (not its resource tracker)."""
    children = [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


async def test_service_process_has_its_estimating_process_running_once_serving_before_any_register(
    tmp_path: Path,
) -> None:
    """The first Register does not pay the estimating process' spawn and zxcvbn's loading (~0.6 s, far more on a
    small pod): both are done at startup, before the service reports SERVING."""
    env = {"METRICS_PORT": "-1", "DATA_DIR": str(tmp_path), "DATABASE_URL": ""}
    service = await start_process_serving([PYTHON, "-m", "shopmesh_users"], log_path=tmp_path / "users.log", env=env)
    try:
        assert len(estimating_processes(service.process.pid)) == 1, service.output()
    finally:
        service.signal()
        exit_code = service.wait()
    assert exit_code == 0, service.output()


async def test_service_process_rotates_its_signing_key_and_prunes_refilled_login_attempts(tmp_path: Path) -> None:
    """The rotator and the pruner are started by the process, not only built: with a key due after 2 s and
    attempts refilled after a millisecond, a second key is published and the stored attempt disappears."""
    env = {
        "METRICS_PORT": "-1",
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "",
        "PASSWORD_HASH_TIME_COST": "1",
        "PASSWORD_HASH_MEMORY_KIB": "8192",
        "PASSWORD_HASH_PARALLELISM": "1",
        "KEY_ROTATION_INTERVAL_SECONDS": "2",
        "KEY_PUBLISH_AHEAD_SECONDS": "1",
        "KEY_ROTATION_CHECK_SECONDS": "0.1",
        "LOGIN_FAILURE_REFILL_SECONDS": "0.001",
        "LOGIN_FAILURE_PRUNE_SECONDS": "0.1",
    }
    service = await start_process_serving([PYTHON, "-m", "shopmesh_users"], log_path=tmp_path / "users.log", env=env)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = users_pb2_grpc.UsersServiceStub(channel)
            first = await published_kids(stub)
            await stub.Register(
                users_pb2.RegisterRequest(email="ann@example.com", password=PASSWORD, display_name="Ann")
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Login(users_pb2.LoginRequest(email="ann@example.com", password=PASSWORD + "wrong"))
            # A login writes its attempt before the answer; the pruner may already have taken it, so the
            # attempt is not looked for: only its going (or having gone) for good.
            await eventually(lambda: login_attempts_stored(tmp_path / "users.db") == 0, "the refilled attempt pruned")

            async def rotated() -> bool:
                return bool(set(await published_kids(stub)) - set(first))

            await eventually(rotated, "a second signing key published")
    finally:
        service.signal()
        exit_code = service.wait()
    assert exit_code == 0, service.output()


def login_attempts_stored(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        (count,) = connection.execute("SELECT count(*) FROM login_attempts").fetchone()
    return int(count)
