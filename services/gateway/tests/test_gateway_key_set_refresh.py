"""The gateway's key set is refetched for everybody, whatever one client's deadline: a client sending short
deadlines (or hanging up) must neither keep a revoked signing key accepted nor a new one refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import jwt
import pytest

import shopmesh_gateway.wiring
from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually
from shopmesh_gateway.tokens import JwksCache

from .gateway_fakes import Fakes, FakeUsers, fakes_serving
from .gateway_keys import SigningKey
from .gateway_serving import bearer, serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

# Nothing listens here: the core services are never called by these tests.
NOWHERE = "127.0.0.1:9"
# Bounds a hang only: every wait below is for something that, with the behaviour intact, comes at once.
HANG = 30.0


@contextlib.asynccontextmanager
async def gateway(fakes: Fakes, **overrides: Any) -> AsyncIterator[Shop]:
    nowhere = dict.fromkeys(("catalog", "inventory", "orders"), NOWHERE)
    async with serving_gateway({**nowhere, **fakes.addresses}, **overrides) as (shop, _):
        yield shop


class HeldClock:
    """The key set's clock, moved by the test: its max age and refetch interval pass when the test says,
    not when a loaded machine gets round to it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class WatchedKeySet(JwksCache):
    """The gateway's key set on the test's clock, telling when a caller gave up waiting for it."""

    def __init__(self, *args: Any, clock: HeldClock, **kwargs: Any) -> None:
        super().__init__(*args, clock=clock, **kwargs)
        self.caller_gave_up = asyncio.Event()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        try:
            return await super().key(kid)
        except asyncio.CancelledError:
            self.caller_gave_up.set()
            raise


@dataclass
class Held:
    """The gateway's key set on a held clock, and GetJwks held in flight on demand."""

    clock: HeldClock = field(default_factory=HeldClock)
    key_sets: list[WatchedKeySet] = field(default_factory=list)
    holding: bool = False
    fetch_started: asyncio.Event = field(default_factory=asyncio.Event)
    fetch_released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key_set(self) -> WatchedKeySet:
        [key_set] = self.key_sets
        return key_set


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Held:
    held = Held()

    def key_set(*args: Any, **kwargs: Any) -> WatchedKeySet:
        made = WatchedKeySet(*args, clock=held.clock, **kwargs)
        held.key_sets.append(made)
        return made

    monkeypatch.setattr(shopmesh_gateway.wiring, "JwksCache", key_set)
    original = FakeUsers.GetJwks

    async def held_in_flight(self: FakeUsers, request: Any, context: Any) -> Any:
        # A network hop, a busy users replica: the fetch is in flight until the test lets it answer.
        if held.holding:
            held.fetch_started.set()
            await held.fetch_released.wait()
        return await original(self, request, context)

    monkeypatch.setattr(FakeUsers, "GetJwks", held_in_flight)
    return held


async def call_given_up_during_the_refetch(shop: Shop, held: Held, token: str) -> None:
    """A call that starts a refetch and is cancelled while the gateway waits for it, as grpcio cancels the
    handler when the call's deadline passes or its client hangs up; then the fetch answers."""
    held.holding = True
    call = shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=HANG)
    await eventually(lambda: held.fetch_started.is_set() or call.done(), "a refetch, or the answer", timeout=HANG)
    assert not call.done(), "the call was answered without waiting for a refetch of the key set"
    call.cancel()
    await eventually(held.key_set.caller_gave_up.is_set, "the gateway's handler cancelled", timeout=HANG)
    held.holding = False
    held.fetch_released.set()


async def token_error(shop: Shop, token: str) -> tuple[grpc.StatusCode, str] | None:
    try:
        await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=HANG)
    except grpc.aio.AioRpcError as error:
        details = details_of(error)
        return details.code, details.reason
    return None


# The contract's: on a held clock the test need not scale them down.
CONTRACT = {"jwks_max_age_seconds": 300.0, "jwks_min_refetch_interval_seconds": 30.0}
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_revoked_key_is_refused_past_the_max_age_even_right_after_a_call_that_gave_up(held: Held) -> None:
    """docs/auth.md: after `revoke-keys`, tokens signed before stop verifying "in any case within
    JWKS_MAX_AGE_SECONDS". The holder of a leaked key sends a call with a short deadline as the refetch
    falls due: the refetch it started is not that call's to cancel, and the next call sees its result."""
    async with fakes_serving() as fakes, gateway(fakes, **CONTRACT) as shop:
        leaked = fakes.users.key
        assert await token_error(shop, leaked.token("usr_victim")) is None
        fakes.users.key = SigningKey()  # revoke-keys: only a new key is published from now on
        held.clock.now += CONTRACT["jwks_max_age_seconds"]
        await call_given_up_during_the_refetch(shop, held, leaked.token("usr_victim"))
        assert await token_error(shop, leaked.token("usr_victim")) == REFUSED


async def test_a_new_keys_tokens_verify_right_after_a_call_with_an_unknown_kid_gave_up(held: Held) -> None:
    """docs/auth.md: a new key's tokens may be refused "at most 30 s" (JWKS_MIN_REFETCH_INTERVAL_SECONDS).
    An anonymous client that sends a token with an unknown kid and a short deadline must not make that
    interval start with a refetch it cut short: a shopper's token of the new key, just after, verifies."""
    async with fakes_serving() as fakes, gateway(fakes, **CONTRACT) as shop:
        assert await token_error(shop, fakes.users.key.token("usr_ann")) is None
        fakes.users.key = SigningKey()  # the next key signs (after a revocation: at once)
        held.clock.now += CONTRACT["jwks_min_refetch_interval_seconds"]
        # A kid the gateway does not know.
        await call_given_up_during_the_refetch(shop, held, SigningKey().token("usr_nobody"))
        assert await token_error(shop, fakes.users.key.token("usr_ann")) is None
