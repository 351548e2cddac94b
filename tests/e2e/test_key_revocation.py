"""Revoking every signing key (docs/auth.md) as an operator does it: `python -m shopmesh_users
revoke-keys` beside the running shop. Through the gateway, a token signed before is refused from then
on, and a fresh login works, without restarting users or the gateway."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import jwt
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_platform.stack import Stack

from .shop import CHEAP_PASSWORD_HASHING, PASSWORD

# The gateway refetches the key set on an unknown kid at most this often (default 30 s: shortened so
# that the test need not wait out the window docs/auth.md describes).
REFETCH_INTERVAL_SECONDS = 1.0


async def login(shop: shop_pb2_grpc.ShopServiceStub, email: str) -> str:
    return (await shop.Login(shop_pb2.LoginRequest(email=email, password=PASSWORD))).access_token


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def revoke_keys(data_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "shopmesh_users", "revoke-keys"],
        env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(data_dir), "DATABASE_URL": "", "LOG_FORMAT": "text"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_after_revoke_keys_the_gateway_refuses_earlier_tokens_and_accepts_new_logins(tmp_path: Path) -> None:
    env = {
        "gateway": {"JWKS_MIN_REFETCH_INTERVAL_SECONDS": str(REFETCH_INTERVAL_SECONDS)},
        "users": CHEAP_PASSWORD_HASHING,
    }
    async with (
        Stack.for_tests(tmp_path, env=env) as stack,
        grpc.aio.insecure_channel(stack.address("gateway")) as channel,
    ):
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
        await shop.Register(shop_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Ada"))
        before = await login(shop, email)
        await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(before))

        printed = revoke_keys(stack.data_dir)
        await asyncio.sleep(REFETCH_INTERVAL_SECONDS + 0.1)

        after = await login(shop, email)
        new_kid = jwt.get_unverified_header(after)["kid"]
        assert new_kid != jwt.get_unverified_header(before)["kid"]
        assert f"{new_kid} signs from now on" in printed
        await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(after))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(before))
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
