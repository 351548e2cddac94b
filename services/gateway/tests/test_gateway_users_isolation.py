"""Slow logins must not take the rest of users down with them, as seen from the gateway.

users checks passwords with argon2id, a few at a time, behind a queue (docs/auth.md, passwords.py): a
burst of logins waits its turn, and those at the back of the queue miss the gateway's deadline. users
keeps answering GetJwks and GetUser meanwhile ("the service keeps answering other calls (GetJwks,
GetUser) while logins are being checked"). The gateway must keep using them: token verification and
checkout's e-mail lookup have nothing to do with a login queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.breaker import CircuitBreaker
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_gateway.wiring import Channels

from .gateway_fakes import PASSWORD, Fakes, FakeUsers, fakes_serving
from .gateway_serving import bearer, serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

NOWHERE = "127.0.0.1:9"
USERS_TIMEOUT = 0.3


def breaker_state(breakers: Mapping[str, CircuitBreaker]) -> str:
    return ", ".join(f"{method.rsplit('/', 1)[-1]} {breaker.state.value}" for method, breaker in breakers.items())


@contextlib.asynccontextmanager
async def gateway(fakes: Fakes, **overrides: Any) -> AsyncIterator[tuple[Shop, Channels]]:
    nowhere = dict.fromkeys(("catalog", "inventory", "orders"), NOWHERE)
    # Every login of a burst reaches users (all come from this one address), past the breaker's threshold.
    overrides.setdefault("password_rate_limit_burst", 100)
    async with serving_gateway({**nowhere, **fakes.addresses}, **overrides) as serving:
        yield serving


def queued_logins(monkeypatch: pytest.MonkeyPatch) -> None:
    """users' Login waits for a hashing turn longer than the gateway's deadline (a burst of logins: with
    the default argon2 costs a hash takes ~0.5 s of a core, two at a time, 32 more queued)."""
    original = FakeUsers.Login

    async def waiting_for_a_hashing_turn(self: FakeUsers, request: Any, context: Any) -> Any:
        await asyncio.sleep(USERS_TIMEOUT * 5)
        return await original(self, request, context)

    monkeypatch.setattr(FakeUsers, "Login", waiting_for_a_hashing_turn)


async def login_burst(shop: Shop, n: int) -> None:
    async def one() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await shop.Login(shop_pb2.LoginRequest(email="ada@example.com", password=PASSWORD))

    await asyncio.gather(*(one() for _ in range(n)))


async def test_logins_missing_their_deadline_do_not_stop_token_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway replica that starts (or meets a rotated-in key) during a burst of logins must still
    fetch users' key set, which users serves at once: here every authenticated call failed UNAVAILABLE,
    because the logins' DEADLINE_EXCEEDED opened the one circuit breaker of the users channel, which
    GetJwks goes through too."""
    queued_logins(monkeypatch)
    async with fakes_serving() as fakes, gateway(fakes, users_timeout_seconds=USERS_TIMEOUT) as (shop, channels):
        await login_burst(shop, 6)
        token = fakes.users.key.token("usr_ada")
        try:
            await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=5)
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            pytest.fail(
                f"an authenticated call failed {details.code.name} {details.reason} after logins timed out "
                f"(users breakers {breaker_state(channels.users.breakers)}): {error.details()}"
            )


async def test_logins_missing_their_deadline_do_not_fail_checkouts_e_mail_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkout without an e-mail asks users for the account's address (GetUser, which users answers at
    once): after a burst of logins timed out it failed UNAVAILABLE naming users, refused by the gateway's
    own breaker, instead of going on to orders (here unreachable, so the checkout fails naming orders)."""
    queued_logins(monkeypatch)
    async with fakes_serving() as fakes, gateway(fakes, users_timeout_seconds=USERS_TIMEOUT) as (shop, channels):
        token = fakes.users.key.token("usr_ada")
        await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=5)
        await login_burst(shop, 6)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.PlaceOrder(shop_pb2.PlaceOrderRequest(currency="USD"), metadata=bearer(token), timeout=5)
        details = details_of(caught.value)
        assert details.error_info is not None
        assert details.error_info.metadata.get("dependency") != "users", (
            f"checkout's e-mail lookup refused after logins timed out: {caught.value.details()} "
            f"(users breakers {breaker_state(channels.users.breakers)})"
        )
