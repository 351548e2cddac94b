"""`python -m shopmesh_users` runs the whole service: migrations, the first signing key, the rotation task,
drain on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import grpc

from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis.testing import PYTHON, start_process_serving
from shopmesh_users.token_verifier import verify_access_token

from .conftest import PASSWORD, jwks_document


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
