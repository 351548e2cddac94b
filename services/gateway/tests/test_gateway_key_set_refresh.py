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
from shopmesh_chassis import errors
from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.tokens import STALE_KEYS_WAIT_SECONDS, JwksCache

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
    # GetJwks calls that users got while holding.
    held_fetches: int = 0
    # What the key set is made with: how long a call whose key is cached waits for a refetch due to age.
    stale_keys_wait_seconds: float = STALE_KEYS_WAIT_SECONDS
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
        made = WatchedKeySet(*args, clock=held.clock, stale_keys_wait_seconds=held.stale_keys_wait_seconds, **kwargs)
        held.key_sets.append(made)
        return made

    monkeypatch.setattr(shopmesh_gateway.wiring, "JwksCache", key_set)
    original = FakeUsers.GetJwks

    async def held_in_flight(self: FakeUsers, request: Any, context: Any) -> Any:
        # A network hop, a busy users replica: the fetch is in flight until the test lets it answer.
        if held.holding:
            held.held_fetches += 1
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
    # Its key known, a call waits STALE_KEYS_WAIT_SECONDS for a refetch due to age: here, until its client
    # gives up, whenever that is on a loaded machine.
    held.stale_keys_wait_seconds = HANG
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


async def test_signed_in_calls_are_answered_with_the_cached_keys_while_a_refetch_due_to_age_hangs(held: Held) -> None:
    """docs/auth.md: when users is unreachable "the keys it already has keep serving". A users that hangs
    (a black-holed route, a stalled replica) held every signed-in call for the refetch that the key set's
    age made due, up to USERS_TIMEOUT_SECONDS, though the call's key was cached. Once the refetch answers,
    a key users no longer publishes stops verifying at once."""
    # users hangs past every call's deadline here: the gateway's own budget for GetJwks must not end the wait.
    async with fakes_serving() as fakes, gateway(fakes, **CONTRACT, users_timeout_seconds=2 * HANG) as shop:
        leaked = fakes.users.key
        assert await token_error(shop, leaked.token("usr_ann")) is None
        fakes.users.key = SigningKey()  # revoke-keys; the gateway will learn it from the refetch held below
        held.holding = True
        held.clock.now += CONTRACT["jwks_max_age_seconds"]
        for _ in range(3):
            assert await token_error(shop, leaked.token("usr_ann")) is None
        assert held.fetch_started.is_set(), "answered while the refetch, not yet released, hangs"
        assert held.held_fetches == 1, "one refetch at a time"
        held.fetch_released.set()
        refused = await eventually(lambda: token_error(shop, leaked.token("usr_ann")), "a refusal", timeout=HANG)
        assert refused == REFUSED
        assert await token_error(shop, fakes.users.key.token("usr_ann")) is None, "the new key verifies"


async def test_past_the_hard_max_age_a_revoked_key_is_refused_while_users_cannot_give_a_key_set(held: Held) -> None:
    """Without JWKS_HARD_MAX_AGE_SECONDS a revoked key verifies for as long as users fails GetJwks; with it,
    the cached keys serve until that age and every signed-in call is UNAVAILABLE after it, until users
    answers."""
    async with fakes_serving() as fakes, gateway(fakes, **CONTRACT, jwks_hard_max_age_seconds=3600.0) as shop:
        leaked = fakes.users.key
        assert await token_error(shop, leaked.token("usr_victim")) is None

        class Unreachable:
            @property
            def jwk(self) -> dict[str, str]:
                raise errors.Unavailable("users' database is away", reason="DATABASE_UNAVAILABLE")

        fakes.users.key = Unreachable()  # type: ignore[assignment]  # revoke-keys, and GetJwks fails from now on
        held.clock.now += 3599.0
        assert await token_error(shop, leaked.token("usr_victim")) is None, "the cached keys serve up to that age"
        held.clock.now += 1.0
        unavailable = (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert await token_error(shop, leaked.token("usr_victim")) == unavailable
        fakes.users.key = SigningKey()
        assert await token_error(shop, leaked.token("usr_victim")) == REFUSED
        assert await token_error(shop, fakes.users.key.token("usr_victim")) is None


def test_a_hard_max_age_within_the_max_age_stops_startup() -> None:
    with pytest.raises(ConfigError, match="JWKS_HARD_MAX_AGE_SECONDS"):
        load_settings(GatewaySettings, jwks_max_age_seconds=300.0, jwks_hard_max_age_seconds=300.0)
