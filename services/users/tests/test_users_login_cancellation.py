"""Logins cancelled (a client's deadline or cancel, which the gateway passes on) while their attempt is being
taken or given back, over a real gRPC socket on a real SQLite (or PostgreSQL) database: the attempt ends up
given back, and the service's shutdown does not cut the write off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.app import run_shutdown_hooks
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually
from shopmesh_users.application import UsersApplication
from shopmesh_users.domain.failed_logins import Attempts, email_key
from shopmesh_users.store.repository import LoginAttemptRepository, UserRepository
from shopmesh_users.wiring import build

from .conftest import PASSWORD, FakeClock, HeldHashing, login, register, running, serving, stop, users_settings

LOGIN = users_pb2.LoginRequest(email="ann@example.com", password=PASSWORD)
CANCELLED_LOGINS = {
    "grpc_type": "unary",
    "grpc_service": "shopmesh.users.v1.UsersService",
    "grpc_method": "Login",
    "grpc_code": "CANCELLED",
}


def cancelled_logins(server: ChassisServer) -> float:
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", CANCELLED_LOGINS) or 0.0


async def test_the_shutdown_waits_for_the_attempt_a_login_cancelled_twice_is_giving_back(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A login cancelled while its hash runs gives its attempt back in a write of its own, shielded so that the
    caller gets its cancellation and not the write's. Cancelled again while that write waits for the database,
    the login ends and nothing awaits the write: the shutdown hooks must, before the database closes and the
    event loop ends, or the attempt stays taken. With one attempt, the right password is then refused."""
    held = HeldHashing()
    hashing, finish = held.hashing, held.finish
    give_back_waits, database_answers = asyncio.Event(), asyncio.Event()
    handlers: list[asyncio.Task[Any]] = []
    locked = LoginAttemptRepository.locked
    account_by_email = UserRepository.account_by_email

    async def handler_account_by_email(self: UserRepository, email: str) -> Any:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        return await account_by_email(self, email)

    async def slow_give_back_lock(self: LoginAttemptRepository, key: str) -> Attempts | None:
        if handlers:  # the login's take came before its password check; only its give-back comes after
            give_back_waits.set()
            await database_answers.wait()
        return await locked(self, key)

    settings = users_settings(tmp_path, login_failure_burst=1, login_failure_refill_seconds=3600)
    try:
        async with serving(settings, clock) as (users, server, stub):
            await register(stub)
            held.hold(monkeypatch)
            monkeypatch.setattr(UserRepository, "account_by_email", handler_account_by_email)
            monkeypatch.setattr(LoginAttemptRepository, "locked", slow_give_back_lock)
            call = stub.Login(LOGIN)
            await eventually(hashing.is_set, "the login's hash started")
            call.cancel()
            await eventually(give_back_waits.is_set, "the cancelled login began giving its attempt back")
            handlers[0].cancel()
            await eventually(handlers[0].done, "the login cancelled again ended")
            finish.set()
            await stop(server)
            with caplog.at_level(logging.INFO, "shopmesh.users"):
                hooks = asyncio.create_task(run_shutdown_hooks(users.shutdown_hooks, 30))
                await eventually(
                    lambda: hooks.done() or "waiting for 1 login attempt write(s)" in caplog.text,
                    "the shutdown hooks ended or waited for the give-back",
                )
                assert not hooks.done(), "the shutdown hooks ended while an attempt was still being given back"
                database_answers.set()
                assert await hooks == []
            monkeypatch.undo()
    finally:
        finish.set()
        database_answers.set()
    async with running(settings, clock) as (_, restarted):
        assert (await login(restarted)).access_token, "the attempt was given back before the shutdown ended"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_login_cancelled_while_its_taken_attempt_commits_gives_it_back(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, database: str
) -> None:
    """On PostgreSQL a deadline can pass (or the caller cancel) after the database applied the take's COMMIT and
    before its answer came back: the login fails with no answer about the password, so its attempt must go
    back as for a cancellation during the hash, and only once it is known to have been taken. With one
    attempt, the right password is refused otherwise."""
    committed, answered = asyncio.Event(), asyncio.Event()
    transaction = Database.transaction

    @contextlib.asynccontextmanager
    async def commit_answered_late(self: Database) -> AsyncIterator[DbConnection]:
        async with transaction(self) as connection:
            yield connection
        if not committed.is_set():  # the login's first transaction: its take
            committed.set()
            await answered.wait()

    # SQLite commits on the event loop's thread, where no cancel can come in between: the late answer stands for
    # PostgreSQL's there too.
    url = request.getfixturevalue("postgres").create_database() if database == "postgresql" else ""
    settings = users_settings(tmp_path, database_url=url, login_failure_burst=1, login_failure_refill_seconds=3600)
    try:
        async with serving(settings, clock) as (_, server, stub):
            user = await register(stub)
            with monkeypatch.context() as patched:
                patched.setattr(Database, "transaction", commit_answered_late)
                call = stub.Login(LOGIN)
                await eventually(committed.is_set, "the login's attempt was committed")
                call.cancel()
                await eventually(lambda: cancelled_logins(server) == 1, "the server ended the cancelled login")
                answered.set()

            async def logged_in() -> bool:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    return (await login(stub)).user_id == user.id
                return False

            await eventually(logged_in, "the right password logged in", timeout=10)
    finally:
        answered.set()


async def test_a_give_back_cut_off_at_shutdown_unwinds_before_the_database_closes(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A give-back still waiting for the database when the shutdown hooks' budget runs out is cancelled: its
    transaction rolls back, which takes a round trip to the database. The hook must wait for that (within the
    time the hooks' runner leaves it to unwind) before the next hook closes the database under it."""
    held = HeldHashing()
    hashing, finish = held.hashing, held.finish
    give_back_waits, never = asyncio.Event(), asyncio.Event()
    unwound: list[str] = []
    disposed_after: list[list[str]] = []
    locked = LoginAttemptRepository.locked
    give_back = UsersApplication._give_back
    dispose = Database.dispose

    async def stuck_give_back_lock(self: LoginAttemptRepository, key: str) -> Attempts | None:
        if hashing.is_set():  # the take came before the hash; only the give-back comes after
            give_back_waits.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # the rollback's round trip to the database
                raise
        return await locked(self, key)

    async def recorded_give_back(self: UsersApplication, key: str) -> None:
        try:
            await give_back(self, key)
        finally:
            unwound.append(key)

    async def recorded_dispose(self: Database) -> None:
        disposed_after.append(list(unwound))
        await dispose(self)

    settings = users_settings(tmp_path, login_failure_burst=1, login_failure_refill_seconds=3600)
    users = await build(settings, clock)
    try:
        await users.application.register("ann@example.com", PASSWORD, "Ann")
        held.hold(monkeypatch)
        monkeypatch.setattr(LoginAttemptRepository, "locked", stuck_give_back_lock)
        monkeypatch.setattr(UsersApplication, "_give_back", recorded_give_back)
        monkeypatch.setattr(Database, "dispose", recorded_dispose)
        logging_in = asyncio.create_task(users.application.login("ann@example.com", PASSWORD))
        await eventually(hashing.is_set, "the login's hash started")
        logging_in.cancel()
        await eventually(give_back_waits.is_set, "the cancelled login began giving its attempt back")
        logging_in.cancel()
        await eventually(logging_in.done, "the login cancelled again ended")
        finish.set()
        cut_off = await run_shutdown_hooks(users.shutdown_hooks, 2.0)
        assert cut_off == ["UsersApplication.settle_login_attempts"]
        assert disposed_after == [[email_key("ann@example.com")]], "the database closed under a rollback"
    finally:
        finish.set()
        never.set()
        monkeypatch.undo()
        await users.database.dispose()
