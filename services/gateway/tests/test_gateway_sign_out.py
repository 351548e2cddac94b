"""Per-user revocation at the gateway: a token issued at or before its user's sign-out is refused
UNAUTHENTICATED, TOKEN_REVOKED; each user's cutoff is cached (its TTL on an injected clock, a bounded number of
users), concurrent misses share one call to users, and users unreachable fails open by default, closed when
TOKEN_CUTOFF_FAIL_CLOSED says so. Then over gRPC: ShopService.SignOut in front of a stand-in users."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.testing import eventually
from shopmesh_gateway.coalesced import FAILED_FETCH_BACKOFF_SECONDS
from shopmesh_gateway.sign_outs import TOKEN_REVOKED, TokenCutoffs

from .gateway_fakes import PASSWORD, USERS_METHODS_BEFORE_SIGN_OUT, Fakes, fakes_serving
from .gateway_serving import bearer, serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Users:
    """GetTokenCutoff's stand-in: the cutoffs it answers, the calls it got, and a gate a test may hold it at."""

    cutoffs: dict[str, float] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    down: bool = False
    gate: asyncio.Event | None = None

    async def fetch(self, user_id: str) -> float | None:
        self.calls.append(user_id)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)
        if self.down:
            raise errors.Unavailable("users is down", reason=errors.DEPENDENCY_UNAVAILABLE)
        return self.cutoffs.get(user_id)


def cutoffs_of(users: Users, clock: Clock, **options: Any) -> TokenCutoffs:
    return TokenCutoffs(users.fetch, clock=clock, **{"ttl_seconds": 30.0, **options})


async def is_refused(cutoffs: TokenCutoffs, user_id: str, issued_at: float | None) -> bool:
    """Whether the token is refused as revoked (any other refusal fails the test)."""
    try:
        await cutoffs.refuse_revoked(user_id, issued_at)
    except errors.Unauthenticated as refused:
        return refused.reason == TOKEN_REVOKED or pytest.fail(f"refused {refused.reason}, not {TOKEN_REVOKED}")
    return False


async def test_a_token_issued_at_or_before_the_cutoff_is_revoked_and_one_after_it_is_not() -> None:
    users = Users(cutoffs={"usr_ann": 100.7})
    cutoffs = cutoffs_of(users, Clock())
    assert await is_refused(cutoffs, "usr_ann", 100)
    assert await is_refused(cutoffs, "usr_ann", 100.7)
    assert not await is_refused(cutoffs, "usr_ann", 101)
    # A token without iat cannot show it came after: revoked once its user signed out.
    assert await is_refused(cutoffs, "usr_ann", None)
    # Another user's tokens are not touched, and one who never signed out has every token good.
    assert not await is_refused(cutoffs, "usr_bob", 100)
    assert not await is_refused(cutoffs, "usr_bob", None)


async def test_a_cutoff_is_asked_once_per_ttl_and_a_sign_out_elsewhere_is_seen_once_it_ages_out() -> None:
    users, clock = Users(), Clock()
    cutoffs = cutoffs_of(users, clock)
    assert not await is_refused(cutoffs, "usr_ann", 100)
    users.cutoffs["usr_ann"] = 150.0  # signed out through another replica
    clock.now += 29.9
    assert not await is_refused(cutoffs, "usr_ann", 100), "within the TTL, the cached cutoff holds"
    assert users.calls == ["usr_ann"]
    clock.now += 0.1
    assert await is_refused(cutoffs, "usr_ann", 100)
    assert users.calls == ["usr_ann", "usr_ann"]


async def test_a_sign_out_on_this_replica_is_in_force_at_once_and_never_moved_back_by_a_late_answer() -> None:
    users, clock = Users(), Clock()
    cutoffs = cutoffs_of(users, clock)
    assert not await is_refused(cutoffs, "usr_ann", 100)
    cutoffs.record("usr_ann", 150.0)
    assert await is_refused(cutoffs, "usr_ann", 100)
    # A fetch that began before the sign-out answers the old cutoff after it: the later one stays.
    users.cutoffs["usr_bob"] = 50.0
    users.gate = asyncio.Event()
    checking = asyncio.create_task(is_refused(cutoffs, "usr_bob", 100))
    await asyncio.sleep(0)
    cutoffs.record("usr_bob", 150.0)
    users.gate.set()
    assert await checking, "the late answer (50) must not bring back a token the sign-out (150) revoked"
    assert await is_refused(cutoffs, "usr_bob", 100)


async def test_concurrent_misses_for_one_user_are_one_call_to_users() -> None:
    users = Users(cutoffs={"usr_ann": 100.0}, gate=asyncio.Event())
    cutoffs = cutoffs_of(users, Clock())
    checks = [asyncio.create_task(is_refused(cutoffs, "usr_ann", issued)) for issued in (99, 100, 101, 102) * 5]
    other = asyncio.create_task(is_refused(cutoffs, "usr_bob", 99))
    await asyncio.sleep(0)
    users.gate.set()
    assert await asyncio.gather(*checks) == [True, True, False, False] * 5
    assert not await other
    assert sorted(users.calls) == ["usr_ann", "usr_bob"]


async def test_users_down_and_no_cutoff_cached_takes_the_token_as_not_revoked_by_default() -> None:
    users, clock = Users(down=True), Clock()
    cutoffs = cutoffs_of(users, clock)
    assert not await is_refused(cutoffs, "usr_ann", 100)
    # Not remembered as "never signed out": once the retry interval is up, the next call asks users again.
    users.down, users.cutoffs["usr_ann"] = False, 150.0
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert await is_refused(cutoffs, "usr_ann", 100)


async def test_after_a_failed_fetch_a_users_calls_ask_users_nothing_for_the_retry_interval() -> None:
    """During an outage, every signed-in call of a user not cached started a GetTokenCutoff of its own."""
    users, clock = Users(down=True, cutoffs={"usr_cy": 150.0}), Clock()
    cutoffs = cutoffs_of(users, clock)
    for _ in range(5):
        assert not await is_refused(cutoffs, "usr_ann", 100)
    assert users.calls == ["usr_ann"]
    # A cached user past its TTL: the cutoff known serves, users is asked once.
    users.down = False
    assert await is_refused(cutoffs, "usr_cy", 100)
    users.down = True
    clock.now += 30
    for _ in range(5):
        assert await is_refused(cutoffs, "usr_cy", 100)
    assert users.calls == ["usr_ann", "usr_cy", "usr_cy"]
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert not await is_refused(cutoffs, "usr_ann", 100)
    assert await is_refused(cutoffs, "usr_cy", 100)
    assert users.calls == ["usr_ann", "usr_cy", "usr_cy", "usr_ann", "usr_cy"]


async def test_failing_closed_after_a_failed_fetch_refuses_at_once_without_asking_users_again() -> None:
    users, clock = Users(down=True), Clock()
    cutoffs = cutoffs_of(users, clock, fail_closed=True)
    for _ in range(3):
        with pytest.raises(errors.Unavailable) as refused:
            await cutoffs.refuse_revoked("usr_ann", 100)
        assert refused.value.reason == errors.DEPENDENCY_UNAVAILABLE
        assert refused.value.retry_after_seconds == FAILED_FETCH_BACKOFF_SECONDS
    assert users.calls == ["usr_ann"]
    users.down = False
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert not await is_refused(cutoffs, "usr_ann", 100)
    assert users.calls == ["usr_ann", "usr_ann"]


async def test_a_hanging_users_holds_a_call_of_a_user_not_cached_only_briefly_and_its_answer_serves_later() -> None:
    users, clock = Users(cutoffs={"usr_ann": 150.0}, gate=asyncio.Event()), Clock()
    cutoffs = cutoffs_of(users, clock, stale_wait_seconds=0.01)
    # Not signed out as far as this replica can tell (fail open) while the fetch goes on.
    assert not await asyncio.wait_for(is_refused(cutoffs, "usr_ann", 100), 1)
    assert not await asyncio.wait_for(is_refused(cutoffs, "usr_ann", 100), 1)
    assert users.calls == ["usr_ann"]
    users.gate.set()
    await eventually(lambda: is_refused(cutoffs, "usr_ann", 100), "the fetch's answer serves the calls after it")
    assert users.calls == ["usr_ann"]


async def test_users_down_keeps_a_cached_cutoff_serving_past_its_ttl() -> None:
    users, clock = Users(cutoffs={"usr_ann": 150.0}), Clock()
    cutoffs = cutoffs_of(users, clock)
    assert await is_refused(cutoffs, "usr_ann", 100)
    users.down = True
    clock.now += 3600
    assert await is_refused(cutoffs, "usr_ann", 100)
    assert not await is_refused(cutoffs, "usr_ann", 151)


async def test_a_hanging_users_holds_a_call_with_a_stale_cutoff_only_briefly() -> None:
    users, clock = Users(cutoffs={"usr_ann": 150.0}), Clock()
    cutoffs = cutoffs_of(users, clock, stale_wait_seconds=0.01)
    assert await is_refused(cutoffs, "usr_ann", 100)
    users.gate = asyncio.Event()  # never set: users hangs
    clock.now += 31
    # A bound, not a speed: waiting for the fetch would take the gate's 10 s.
    refused = await asyncio.wait_for(is_refused(cutoffs, "usr_ann", 100), 1)
    assert refused, "the stale cutoff answers while the fetch goes on"
    users.gate.set()


async def test_failing_closed_refuses_unavailable_while_users_cannot_confirm_a_cutoff() -> None:
    users, clock = Users(cutoffs={"usr_ann": 150.0}), Clock()
    cutoffs = cutoffs_of(users, clock, fail_closed=True)
    assert await is_refused(cutoffs, "usr_ann", 100)
    users.down = True
    clock.now += 30
    for user_id in ("usr_ann", "usr_bob"):
        with pytest.raises(errors.Unavailable) as refused:
            await cutoffs.refuse_revoked(user_id, 151)
        assert refused.value.reason == errors.DEPENDENCY_UNAVAILABLE
        assert (refused.value.retry_after_seconds or 0) > 0
    users.down = False
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert not await is_refused(cutoffs, "usr_bob", 151)


async def test_the_cache_keeps_at_most_its_bound_of_users_dropping_the_least_recently_seen() -> None:
    users = Users()
    cutoffs = cutoffs_of(users, Clock(), max_users=2)
    for user_id in ("usr_a", "usr_b", "usr_a", "usr_c", "usr_a", "usr_b"):
        await cutoffs.refuse_revoked(user_id, 100)
    # usr_b was dropped for usr_c (usr_a seen since), then asked again.
    assert users.calls == ["usr_a", "usr_b", "usr_c", "usr_b"]


# --- over gRPC -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway(fakes: Fakes, **overrides: Any) -> AsyncIterator[Shop]:
    async with serving_gateway(fakes.addresses, **overrides) as (shop, _):
        yield shop


async def refusal(call: Any) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def notifications(shop: Shop, token: str) -> Any:
    return shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token))


async def test_signing_out_revokes_the_token_and_every_earlier_one_of_the_user_only() -> None:
    async with fakes_serving() as fakes, gateway(fakes) as shop:
        ann, copied, bob = (fakes.users.key.token(user) for user in ("usr_ann", "usr_ann", "usr_bob"))
        await notifications(shop, copied)

        signed_out = await shop.SignOut(shop_pb2.SignOutRequest(), metadata=bearer(ann))
        cutoff = fakes.users.cutoffs["usr_ann"]
        assert abs(signed_out.tokens_valid_after.ToNanoseconds() / 1e9 - cutoff) < 1e-6

        for token in (ann, copied):  # the token used, and a copy made before the sign-out
            refused = await refusal(notifications(shop, token))
            assert (refused.code, refused.reason, refused.error_info.domain if refused.error_info else None) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_REVOKED",
                "shopmesh.gateway",
            )
        assert (await refusal(shop.SignOut(shop_pb2.SignOutRequest(), metadata=bearer(ann)))).reason == "TOKEN_REVOKED"
        # Other users keep their sessions; the user's next login (stamped after the cutoff, as users does) works.
        await notifications(shop, bob)
        await notifications(shop, fakes.users.key.token("usr_ann", iat=int(cutoff) + 1, nbf=int(cutoff) + 1))


async def test_another_replica_refuses_the_revoked_token_once_its_cached_cutoff_ages_out() -> None:
    async with fakes_serving() as fakes, gateway(fakes) as one, gateway(fakes, token_cutoff_cache_seconds=0.2) as two:
        token = fakes.users.key.token("usr_ann")
        await notifications(two, token)  # caches "never signed out"
        await one.SignOut(shop_pb2.SignOutRequest(), metadata=bearer(token))

        # A bounded wait, no timing assertion: the second replica asks users again once its 0.2 s are up.
        async def refused() -> str | None:
            try:
                await notifications(two, token)
            except grpc.aio.AioRpcError as error:
                return details_of(error).reason
            return None

        assert await eventually(refused, "the second replica refuses the revoked token") == "TOKEN_REVOKED"


async def test_concurrent_calls_of_a_user_not_cached_make_one_call_to_users() -> None:
    async with fakes_serving() as fakes, gateway(fakes) as shop:
        token = fakes.users.key.token("usr_cy")
        await asyncio.gather(*(notifications(shop, token) for _ in range(10)))
        assert fakes.users.cutoff_calls == ["usr_cy"]


async def test_a_hanging_users_holds_a_signed_in_call_of_a_user_not_cached_only_briefly() -> None:
    async with fakes_serving() as fakes, gateway(fakes, users_timeout_seconds=10) as shop:
        fakes.users.cutoff_mode = "hang"
        token = fakes.users.key.token("usr_eve")
        # A bound, not a speed: waiting for users' answer would take USERS_TIMEOUT_SECONDS, 10 s.
        for _ in range(3):
            await asyncio.wait_for(notifications(shop, token), 1)
        assert fakes.users.cutoff_calls == ["usr_eve"], "the calls share the one fetch still hanging"


async def test_users_unreachable_for_the_cutoff_fails_open_or_closed_as_set() -> None:
    async with fakes_serving() as fakes:
        fakes.users.cutoff_mode = "fail"
        token = fakes.users.key.token("usr_dee")
        async with gateway(fakes) as shop:
            await notifications(shop, token)
        async with gateway(fakes, token_cutoff_fail_closed=True) as shop:
            refused = await refusal(notifications(shop, token))
            assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
            assert refused.retry_delay_seconds is not None


async def test_a_users_of_a_release_without_sign_out_makes_sign_out_unavailable_and_signed_in_calls_go_on() -> None:
    """During users' rollout to users_0004 (or after a rollback past it) a pod of the older release answers
    SignOut and GetTokenCutoff with gRPC's own UNIMPLEMENTED: users unavailable for the call, not a fault of the
    gateway's (it was INTERNAL, HTTP 500, counted as the gateway's error); the cutoff fails open as for any
    users outage."""
    async with fakes_serving(users_methods=USERS_METHODS_BEFORE_SIGN_OUT) as fakes, gateway(fakes) as shop:
        token = fakes.users.key.token("usr_ann")
        refused = await refusal(shop.SignOut(shop_pb2.SignOutRequest(), metadata=bearer(token)))
        assert refused.error_info is not None
        assert (refused.code, refused.reason, refused.error_info.domain, dict(refused.error_info.metadata)) == (
            grpc.StatusCode.UNAVAILABLE,
            "DEPENDENCY_UNAVAILABLE",
            "shopmesh.gateway",
            {"dependency": "users"},
        )
        assert refused.retry_delay_seconds is not None
        assert fakes.users.cutoffs == {}, "nothing revoked"
        await notifications(shop, token)


async def test_a_flood_of_a_revoked_token_is_charged_to_the_address_and_its_user_signed_in_again_is_served() -> None:
    """Whoever holds a leaked token its user signed out must not keep the user, signed in again, at
    RESOURCE_EXHAUSTED until it expires: a revoked token is a failed one, charged to the address as expired and
    forged tokens are, and only a token that passes takes from its user's bucket."""
    burst = 10
    # Next to no refill: what each call takes shows, without a race with the clock.
    async with fakes_serving() as fakes, gateway(fakes, rate_limit_burst=burst, rate_limit_per_second=0.01) as shop:
        leaked = fakes.users.key.token("usr_ann")
        await shop.SignOut(shop_pb2.SignOutRequest(), metadata=bearer(leaked))
        later = int(fakes.users.cutoffs["usr_ann"]) + 1
        fresh = fakes.users.key.token("usr_ann", iat=later, nbf=later)

        reasons: list[str | None] = []
        for _ in range(burst // 2 - 1):
            for _ in range(burst):
                reasons.append((await refusal(notifications(shop, leaked))).reason)
            await notifications(shop, fresh)
        assert set(reasons) == {TOKEN_REVOKED, "RATE_LIMITED"}, "refused as revoked, then the address is spent"


async def test_an_over_limit_user_is_refused_rate_limited_without_asking_users_for_the_cutoff() -> None:
    """A flooding user's spent bucket refuses their calls at once: looked up first, each call whose cached cutoff
    had expired waited for users (up to USERS_TIMEOUT_SECONDS failing closed), holding gateway handlers."""
    burst = 3
    # A cache that expires between any two calls: every call admitted asks users once.
    limits = {"rate_limit_burst": burst, "rate_limit_per_second": 0.01, "token_cutoff_cache_seconds": 1e-6}
    async with fakes_serving() as fakes, gateway(fakes, **limits) as shop:
        token = fakes.users.key.token("usr_ann")
        for _ in range(burst):
            await notifications(shop, token)
        asked = len(fakes.users.cutoff_calls)

        for _ in range(burst):
            assert (await refusal(notifications(shop, token))).reason == "RATE_LIMITED"
        assert len(fakes.users.cutoff_calls) == asked, "no cutoff asked for a call the user's bucket refuses"


async def test_failing_closed_a_users_calls_refused_unavailable_are_charged_to_the_user_not_the_address() -> None:
    """users unable to say whether the token was revoked is no fault of the token's: its calls spend their user's
    bucket, not the address's, which anonymous shoppers behind the same NAT share."""
    burst = 3
    limits = {"rate_limit_burst": burst, "rate_limit_per_second": 0.01, "token_cutoff_fail_closed": True}
    async with fakes_serving() as fakes, gateway(fakes, **limits) as shop:
        fakes.users.cutoff_mode = "fail"
        token = fakes.users.key.token("usr_dee")
        for _ in range(burst):
            assert (await refusal(notifications(shop, token))).reason == "DEPENDENCY_UNAVAILABLE"

        assert (await refusal(notifications(shop, token))).reason == "RATE_LIMITED"
        # Anonymous, from the same address: its bucket was not spent by the user's refused calls.
        await shop.Register(shop_pb2.RegisterRequest(email="ann@example.com", password=PASSWORD, display_name="Ann"))
