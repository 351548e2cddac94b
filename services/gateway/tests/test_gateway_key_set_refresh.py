"""The gateway's key set is refetched for everybody, whatever one client's deadline: a client sending short
deadlines (or hanging up) must neither keep a revoked signing key accepted nor a new one refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of

from .gateway_fakes import Fakes, FakeUsers, fakes_serving
from .gateway_keys import SigningKey
from .gateway_serving import bearer, serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

# Nothing listens here: the core services are never called by these tests.
NOWHERE = "127.0.0.1:9"


@contextlib.asynccontextmanager
async def gateway(fakes: Fakes, **overrides: Any) -> AsyncIterator[Shop]:
    nowhere = dict.fromkeys(("catalog", "inventory", "orders"), NOWHERE)
    async with serving_gateway({**nowhere, **fakes.addresses}, **overrides) as (shop, _):
        yield shop


def slow_jwks(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Makes the fake users' GetJwks take `seconds` (a network hop, a busy users replica)."""
    original = FakeUsers.GetJwks

    async def delayed(self: FakeUsers, request: Any, context: Any) -> Any:
        await asyncio.sleep(seconds)
        return await original(self, request, context)

    monkeypatch.setattr(FakeUsers, "GetJwks", delayed)


async def cancelled_call(shop: Shop, token: str) -> None:
    """A call whose deadline passes while the gateway is still fetching the key set (or a client that
    hangs up then): grpcio cancels the handler."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=0.05)


async def token_error(shop: Shop, token: str) -> tuple[grpc.StatusCode, str] | None:
    try:
        await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=5)
    except grpc.aio.AioRpcError as error:
        details = details_of(error)
        return details.code, details.reason
    return None


# The contract's 300 s / 30 s, scaled down a hundredfold.
FAST = {"jwks_max_age_seconds": 3.0, "jwks_min_refetch_interval_seconds": 0.3}
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_revoked_key_is_refused_past_the_max_age_even_right_after_a_call_that_gave_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/auth.md: after `revoke-keys`, tokens signed before stop verifying "in any case within
    JWKS_MAX_AGE_SECONDS". The holder of a leaked key sends a call with a short deadline as the refetch
    falls due: the refetch it started is not that call's to cancel, and the next call sees its result."""
    slow_jwks(monkeypatch, 0.2)  # GetJwks takes longer than the short deadline
    async with fakes_serving() as fakes, gateway(fakes, **FAST) as shop:
        leaked = fakes.users.key
        assert await token_error(shop, leaked.token("usr_victim")) is None
        fakes.users.key = SigningKey()  # revoke-keys: only a new key is published from now on
        await asyncio.sleep(FAST["jwks_max_age_seconds"])
        await cancelled_call(shop, leaked.token("usr_victim"))
        assert await token_error(shop, leaked.token("usr_victim")) == REFUSED


async def test_a_new_keys_tokens_verify_right_after_a_call_with_an_unknown_kid_gave_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/auth.md: a new key's tokens may be refused "at most 30 s" (JWKS_MIN_REFETCH_INTERVAL_SECONDS).
    An anonymous client that sends a token with an unknown kid and a short deadline must not make that
    interval start with a refetch it cut short: a shopper's token of the new key, just after, verifies."""
    slow_jwks(monkeypatch, 0.2)
    async with fakes_serving() as fakes, gateway(fakes, **FAST) as shop:
        assert await token_error(shop, fakes.users.key.token("usr_ann")) is None
        fakes.users.key = SigningKey()  # the next key signs (after a revocation: at once)
        await asyncio.sleep(FAST["jwks_min_refetch_interval_seconds"])
        await cancelled_call(shop, SigningKey().token("usr_nobody"))  # a kid the gateway does not know
        assert await token_error(shop, fakes.users.key.token("usr_ann")) is None
