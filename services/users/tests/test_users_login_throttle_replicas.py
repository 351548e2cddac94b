"""Login throttling per e-mail holds for the account, not per replica: two users-service instances (each its
own engine, servicer and gRPC socket) on one database, SQLite and PostgreSQL, draw on one budget per
address; a restart does not refill it; replicas racing for an address's last attempts never both get one."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import func, select

from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_users.settings import UsersSettings
from shopmesh_users.store.tables import login_attempts
from shopmesh_users.wiring import Users

from .conftest import PASSWORD, FakeClock, login, register, running, users_settings

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub

WRONG = "not the password"
THROTTLED = "TOO_MANY_LOGIN_ATTEMPTS"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        return postgres.create_database()
    return f"sqlite:///{tmp_path}/users-shared.db"


def shared_settings(tmp_path: Path, database_url: str) -> UsersSettings:
    # No refill within a test: every attempt the replicas take stays taken.
    return users_settings(tmp_path, database_url=database_url, login_failure_burst=3, login_failure_refill_seconds=3600)


async def started(
    stack: AsyncExitStack, settings: UsersSettings, clock: FakeClock
) -> tuple[Users, UsersServiceAsyncStub]:
    return await stack.enter_async_context(running(settings, clock))


async def outcome(stub: UsersServiceAsyncStub, password: str = WRONG, email: str = "ann@example.com") -> str:
    """OK, or the refusal's ErrorInfo reason."""
    try:
        await login(stub, email=email, password=password)
    except grpc.aio.AioRpcError as error:
        return details_of(error).reason or error.code().name
    return "OK"


async def test_replicas_on_one_database_share_each_emails_login_attempts(
    tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    """Guesses spread over the replicas (a Service balances them) get one burst between them, not one
    each; a success on either forgets the attempts taken on both."""
    settings = shared_settings(tmp_path, database_url)
    async with AsyncExitStack() as stack:
        (_, a), (_, b) = [await started(stack, settings, clock) for _ in range(2)]
        await register(a)
        assert [await outcome(a), await outcome(a)] == ["INVALID_CREDENTIALS"] * 2
        assert await outcome(b, PASSWORD) == "OK"
        assert [await outcome(a), await outcome(b), await outcome(a)] == ["INVALID_CREDENTIALS"] * 3
        assert [await outcome(b), await outcome(a), await outcome(b, PASSWORD)] == [THROTTLED] * 3


async def test_a_restarted_replica_finds_the_attempts_taken_before(
    tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    settings = shared_settings(tmp_path, database_url)
    async with running(settings, clock) as (_, stub):
        await register(stub)
        assert [await outcome(stub) for _ in range(3)] == ["INVALID_CREDENTIALS"] * 3
    async with running(settings, clock) as (_, stub):
        assert await outcome(stub, PASSWORD) == THROTTLED


async def test_replicas_racing_for_one_emails_attempts_admit_no_more_than_the_burst(
    tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    """Parallel guesses for one address, half to each replica, starting from no stored attempts: the
    first takes race to create the address's row, the later ones for its last tokens. Exactly the burst
    reaches a password check."""
    settings = shared_settings(tmp_path, database_url)
    async with AsyncExitStack() as stack:
        (_, a), (_, b) = [await started(stack, settings, clock) for _ in range(2)]
        await register(a)
        guesses = 16
        outcomes = Counter(await asyncio.gather(*(outcome(a if n % 2 else b) for n in range(guesses))))
    assert outcomes == {"INVALID_CREDENTIALS": 3, THROTTLED: guesses - 3}


async def stored_buckets(users: Users) -> int:
    async with users.database.read() as connection:
        return int(await connection.scalar(select(func.count()).select_from(login_attempts)) or 0)


async def test_the_prune_deletes_the_buckets_that_have_refilled_and_keeps_the_others(
    tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    """Bounded growth: a bucket left alone for burst x refill is full again, the same as none, and goes; one
    still refilling stays, with what it holds."""
    settings = users_settings(
        tmp_path, database_url=database_url, login_failure_burst=2, login_failure_refill_seconds=60
    )
    async with running(settings, clock) as (users, stub):
        await register(stub)
        assert await outcome(stub) == "INVALID_CREDENTIALS"
        clock.advance(60)
        assert [await outcome(stub, email="nobody@example.com") for _ in range(2)] == ["INVALID_CREDENTIALS"] * 2
        assert await users.application.prune_login_attempts() == 0
        clock.advance(60)
        assert await stored_buckets(users) == 2
        # ann's bucket: untouched for 120 s, full. nobody's: one attempt back of two.
        assert await users.application.prune_login_attempts() == 1
        assert await stored_buckets(users) == 1
        assert [await outcome(stub, email="nobody@example.com") for _ in range(2)] == [
            "INVALID_CREDENTIALS",
            THROTTLED,
        ]
        assert await outcome(stub, PASSWORD) == "OK"
        # A success leaves no bucket behind.
        assert await stored_buckets(users) == 1


async def test_a_bucket_stamped_by_a_replica_whose_clock_jumped_ahead_refills_on_the_others_after_the_skew(
    tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    """A replica whose clock jumped an hour ahead (an NTP step, a VM resumed) stored its guesses' bucket with a
    time an hour ahead: the right-clocked replicas refilled nothing for that hour, each refusal saying "retry
    after 30 s" (the clock audit's finding, failing so on the old code). They take a stored time as at most the
    assumed clock skew ahead (5 s), and say to wait that too; no attempt more than the refill is handed out."""
    settings = users_settings(
        tmp_path, database_url=database_url, login_failure_burst=3, login_failure_refill_seconds=30
    )
    jumped = FakeClock(clock.now + timedelta(hours=1))
    async with AsyncExitStack() as stack:
        _, right = await started(stack, settings, clock)
        _, ahead = await started(stack, settings, jumped)
        await register(right)
        assert [await outcome(ahead) for _ in range(3)] == ["INVALID_CREDENTIALS"] * 3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await login(right, password=WRONG)
        assert details_of(refused.value).retry_delay_seconds == 5 + 30
        clock.advance(5 + 30)
        assert [await outcome(right), await outcome(right)] == ["INVALID_CREDENTIALS", THROTTLED]
