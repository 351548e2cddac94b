"""Fixtures of the users tests: cheap argon2 settings, a clock tests can move, the service over real gRPC
on SQLite (or PostgreSQL), and helpers to read errors and JWKS documents."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import serve_in_process
from shopmesh_users.passwords import Passwords
from shopmesh_users.settings import UsersSettings
from shopmesh_users.wiring import Users, build

if TYPE_CHECKING:
    # Only the .pyi declares the async stub's type; at run time the stub class serves both.
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub

PASSWORD = "correct horse battery"


def users_settings(data_dir: Path, **overrides: Any) -> UsersSettings:
    # database_url="" pins the SQLite file in data_dir even when DATABASE_URL is set in the environment;
    # argon2 at its cheapest keeps the tests fast (production costs are the settings' defaults).
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": -1,
        "data_dir": str(data_dir),
        "database_url": "",
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 8192,
        "password_hash_parallelism": 1,
    }
    return load_settings(UsersSettings, **{**values, **overrides})


@dataclass
class FakeClock:
    """Time that moves only when a test says so: key schedules without sleeping."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    # Ten minutes in the past: tokens the service signs are checked by PyJWT against the real clock, so
    # a test can move the service's time forward by up to ten minutes and still verify them.
    return FakeClock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10))


@asynccontextmanager
async def running(settings: UsersSettings, clock: FakeClock) -> AsyncIterator[tuple[Users, UsersServiceAsyncStub]]:
    """The users service built from `settings` on a real gRPC socket, and a stub connected to it."""
    users = await build(settings, clock)
    try:
        async with (
            serve_in_process(settings, [users.binding], metrics=users.metrics) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            yield users, users_pb2_grpc.UsersServiceStub(channel)
    finally:
        await users.passwords.close()
        await users.password_strength.close()
        await users.database.dispose()


@asynccontextmanager
async def serving(
    settings: UsersSettings, clock: FakeClock
) -> AsyncIterator[tuple[Users, ChassisServer, UsersServiceAsyncStub]]:
    """The service on a real gRPC socket; the test may stop it (`stop`) and run its shutdown hooks itself."""
    users = await build(settings, clock)
    server = ChassisServer(settings, [users.binding], metrics=users.metrics)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield users, server, users_pb2_grpc.UsersServiceStub(channel)
    finally:
        await stop(server)
        await users.passwords.close()
        await users.password_strength.close()
        await users.database.dispose()


async def stop(server: ChassisServer) -> None:
    """Drain `server`, once however often it is asked."""
    server.request_drain()
    await server.wait_stopped()


@pytest.fixture
async def service(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[Users, UsersServiceAsyncStub]]:
    async with running(users_settings(tmp_path), clock) as started:
        yield started


@pytest.fixture
def users(service: tuple[Users, UsersServiceAsyncStub]) -> Users:
    return service[0]


@pytest.fixture
def stub(service: tuple[Users, UsersServiceAsyncStub]) -> UsersServiceAsyncStub:
    return service[1]


async def error_of(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def violations_of(details: ErrorDetails) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in details.field_violations]


async def register(
    stub: UsersServiceAsyncStub, email: str = "ann@example.com", password: str = PASSWORD, display_name: str = "Ann"
) -> users_pb2.User:
    response = await stub.Register(users_pb2.RegisterRequest(email=email, password=password, display_name=display_name))
    return response.user


async def login(
    stub: UsersServiceAsyncStub, email: str = "ann@example.com", password: str = PASSWORD
) -> users_pb2.LoginResponse:
    return await stub.Login(users_pb2.LoginRequest(email=email, password=password))


async def jwks_document(stub: UsersServiceAsyncStub) -> dict[str, Any]:
    """GetJwks in its proto3 JSON form: what a verifier (or grpcurl) gets."""
    return MessageToDict(await stub.GetJwks(users_pb2.GetJwksRequest()))


async def published_kids(stub: UsersServiceAsyncStub) -> list[str]:
    return [key.kid for key in (await stub.GetJwks(users_pb2.GetJwksRequest())).keys]


@dataclass
class HeldHashing:
    """Password checks held once `hold` is called: each sets `hashing` as it starts and then waits until the
    test sets `finish` (30 s at most) before checking: an argon2id check at production cost on a busy node,
    lasting as long as the test needs, from one thread of the hashing pool."""

    hashing: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)

    def hold(self, monkeypatch: pytest.MonkeyPatch) -> None:
        verify = Passwords._verify

        def held_verify(passwords: Passwords, password_hash: str | None, password: str) -> bool:
            self.hashing.set()
            self.finish.wait(30)
            return verify(passwords, password_hash, password)

        monkeypatch.setattr(Passwords, "_verify", held_verify)
