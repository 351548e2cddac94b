"""A burst of logins from one client address must not lock every other shopper out, through the real
gateway in front of a real users process (argon2id at its default costs).

users hashes PASSWORD_HASH_CONCURRENCY passwords at a time with PASSWORD_HASH_QUEUE more waiting, and
refuses the rest PASSWORD_HASHING_BUSY: places that every client shares. The gateway's ordinary bucket
(burst 40) let one address take all of them, so a shopper logging in from elsewhere was refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_platform.stack import Stack

from .gateway_serving import serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

NOWHERE = "127.0.0.1:9"
PASSWORD = "correct horse battery staple"
# The gateway believes X-Forwarded-For from loopback, as behind a sidecar: each test client is its own
# address although every call comes from this process.
ATTACKER, SHOPPER = "203.0.113.9", "198.51.100.7"
# users' defaults, spelled out: 2 hashes at a time, 32 waiting.
HASHING = {"PASSWORD_HASH_CONCURRENCY": "2", "PASSWORD_HASH_QUEUE": "32"}
USERS_PLACES = 34
# Logins the attacker sends at once: more than users has places for, within the ordinary burst of 40.
BURST = USERS_PLACES + 4


async def login(shop: Shop, email: str, address: str) -> tuple[str, str, float | None]:
    """(status, reason, retry delay) of a login from `address`."""
    request = shop_pb2.LoginRequest(email=email, password=PASSWORD)
    try:
        await shop.Login(request, metadata=(("x-forwarded-for", address),), timeout=60)
    except grpc.aio.AioRpcError as error:
        details = details_of(error)
        return details.code.name, details.reason or "", details.retry_delay_seconds
    return "OK", "", None


async def test_a_burst_of_logins_from_one_address_is_refused_at_the_gateway_and_others_still_log_in(
    tmp_path: Path,
) -> None:
    limits = GatewaySettings()
    assert limits.rate_limit_burst >= BURST, "the ordinary bucket alone admits the whole burst"
    callees = dict.fromkeys(("catalog", "inventory", "orders", "notifications", "recommendations"), NOWHERE)
    async with (
        Stack.for_tests(tmp_path, services=["users"], env={"users": HASHING}) as stack,
        serving_gateway(
            {**callees, "users": stack.address("users")},
            trusted_proxies="127.0.0.0/8,::1/128",
            # The shopper's login waits behind the attacker's admitted hashes: room for a loaded machine.
            users_timeout_seconds=60,
        ) as (shop, _),
    ):
        register = shop_pb2.RegisterRequest(email="ada@example.com", password=PASSWORD, display_name="Ada")
        await shop.Register(register, metadata=(("x-forwarded-for", SHOPPER),), timeout=60)

        # Unknown e-mails, each hashed all the same (and none throttled: its first failure). Tasks start in
        # order, so every attacker call is on its way to users before the shopper's: had the gateway let
        # them all through, users' places would all be taken when the shopper's arrived.
        attacks = [asyncio.create_task(login(shop, f"guess-{i}@example.com", ATTACKER)) for i in range(BURST)]
        shopper = asyncio.create_task(login(shop, "ada@example.com", SHOPPER))
        answers = await asyncio.gather(*attacks)
        assert await shopper == ("OK", "", None), f"the attacker was answered {answers}"

        hashed = [a for a in answers if a[:2] == ("UNAUTHENTICATED", "INVALID_CREDENTIALS")]
        refused = [a for a in answers if a[:2] == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")]
        assert len(hashed) + len(refused) == BURST, f"no PASSWORD_HASHING_BUSY nor anything else: {answers}"
        assert len(hashed) < USERS_PLACES
        for _, _, delay in refused:
            assert delay is not None
            assert 0 < delay <= 1 / limits.password_rate_limit_per_second


# Cheap hashing: what is measured is how many logins reach users, not how long they take.
CHEAP_HASHING = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "8192"}
# NFKC changes it (U+FF50, a full-width p): users checks it normalized and then as sent, two argon2 checks.
CHECKED_TWICE = "\uff50assword-guess"


async def test_an_address_gets_half_as_many_logins_users_checks_twice_as_plain_ones(tmp_path: Path) -> None:
    """users checks a password that NFKC changes twice, for an unknown e-mail too, so that both take as long. The
    gateway counted such a login as one hash: "5 logins admitted for one address cost users 10 argon2 checks",
    and four IPv4 addresses, not eight, kept users' hashing full."""
    burst = GatewaySettings().password_rate_limit_burst
    callees = dict.fromkeys(("catalog", "inventory", "orders", "notifications", "recommendations"), NOWHERE)
    async with (
        Stack.for_tests(tmp_path, services=["users"], env={"users": CHEAP_HASHING}) as stack,
        serving_gateway(
            {**callees, "users": stack.address("users")},
            trusted_proxies="127.0.0.0/8,::1/128",
            # No refill while the test runs, however slowly a loaded machine runs it: the burst is what counts.
            password_rate_limit_per_second=0.001,
            users_timeout_seconds=60,
        ) as (shop, _),
    ):

        async def admitted(address: str, password: str) -> int:
            answers = []
            for i in range(2 * burst):
                request = shop_pb2.LoginRequest(email=f"guess-{address}-{i}@example.com", password=password)
                try:
                    await shop.Login(request, metadata=(("x-forwarded-for", address),), timeout=60)
                    answers.append(("OK", ""))
                except grpc.aio.AioRpcError as error:
                    details = details_of(error)
                    answers.append((details.code.name, details.reason or ""))
            checked = answers.count(("UNAUTHENTICATED", "INVALID_CREDENTIALS"))
            assert checked + answers.count(("RESOURCE_EXHAUSTED", "RATE_LIMITED")) == len(answers), answers
            return checked

        assert await admitted(ATTACKER, "password-guess") == burst
        assert await admitted(SHOPPER, CHECKED_TWICE) == burst // 2
