"""UsersService over a real gRPC socket against a real SQLite database: every RPC, its happy paths and
each documented error."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import jwt
import pytest
from argon2 import PasswordHasher
from grpc_health.v1 import health_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from shopmesh.users.v1 import users_pb2
from shopmesh.users.v1.users_pb2_grpc import UsersServiceStub, add_UsersServiceServicer_to_server
from shopmesh_chassis.db import Database
from shopmesh_chassis.errors import CONFLICT_RETRY_AFTER_SECONDS, ResourceExhausted
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.server import ChassisServer, ServiceBinding
from shopmesh_chassis.testing import eventually, free_port, health_status, serve_in_process
from shopmesh_chassis.testing.gil import held, holding_the_gil
from shopmesh_users import password_strength, wiring
from shopmesh_users import passwords as passwords_module
from shopmesh_users.application import UsersApplication
from shopmesh_users.metrics import ESTIMATE_FAILURES
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.password_strength import PasswordStrength
from shopmesh_users.passwords import BUSY_REASON, Passwords
from shopmesh_users.settings import UsersSettings
from shopmesh_users.signing import jwk_thumbprint
from shopmesh_users.store.repository import LoginAttemptRepository, UserRepository
from shopmesh_users.store.tables import metadata
from shopmesh_users.store.tables import users as users_table
from shopmesh_users.token_verifier import verify_access_token
from shopmesh_users.transport import DESCRIPTOR, UsersServicer
from shopmesh_users.wiring import Users, build, key_policy, passwords

from .conftest import (
    PASSWORD,
    FakeClock,
    HeldHashing,
    error_of,
    jwks_document,
    login,
    published_kids,
    register,
    running,
    serving,
    users_settings,
    violations_of,
)

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub


async def stored_hash(users: Users, email: str) -> str:
    async with users.database.transaction() as session:
        return str(await session.scalar(select(users_table.c.password_hash).where(users_table.c.email == email)))


async def account_count(users: Users) -> int:
    async with users.database.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(users_table)) or 0)


# --- Register --------------------------------------------------------------------------------------


async def test_register_returns_the_user_with_normalized_email_and_trimmed_display_name(
    stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    user = await register(stub, email="  Ann.Lee@Example.COM ", display_name="  Ann Lee  ")
    assert user.id.startswith("usr_")
    assert len(user.id) <= 64
    assert user.email == "ann.lee@example.com"
    assert user.display_name == "Ann Lee"
    assert user.created_at.ToDatetime(clock.now.tzinfo) == clock.now


async def test_register_stores_only_a_salted_argon2id_hash_of_the_password(
    stub: UsersServiceAsyncStub, users: Users
) -> None:
    await register(stub, email="ann@example.com")
    await register(stub, email="bob@example.com")
    ann, bob = await stored_hash(users, "ann@example.com"), await stored_hash(users, "bob@example.com")
    assert ann.startswith("$argon2id$")
    assert PASSWORD not in ann
    assert ann != bob  # same password, different salts


async def test_register_of_an_email_taken_in_another_case_fails_with_already_exists(
    stub: UsersServiceAsyncStub, users: Users
) -> None:
    await register(stub, email="ann@example.com")
    details = await error_of(register(stub, email=" ANN@example.com", display_name="Other Ann"))
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.reason == "EMAIL_ALREADY_REGISTERED"
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.users"
    assert await account_count(users) == 1


@pytest.mark.parametrize(
    ("email", "password", "display_name", "expected"),
    [
        ("", PASSWORD, "Ann", [("email", "REQUIRED")]),
        ("ann.example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        (f"{'a' * 250}@x.io", PASSWORD, "Ann", [("email", "TOO_LONG")]),
        ("ann@example.com", "", "Ann", [("password", "REQUIRED")]),
        ("ann@example.com", "short", "Ann", [("password", "TOO_SHORT")]),
        ("ann@example.com", "p" * 129, "Ann", [("password", "TOO_LONG")]),
        ("ann@example.com", " " * 8, "Ann", [("password", "REQUIRED")]),
        ("ann@example.com", "12345678", "Ann", [("password", "PASSWORD_TOO_COMMON")]),
        ("weak@example.com", "weak@example.com", "Ann", [("password", "PASSWORD_TOO_COMMON")]),
        ("ann@example.com", PASSWORD, " ", [("display_name", "REQUIRED")]),
        ("ann@example.com", PASSWORD, "n" * 51, [("display_name", "TOO_LONG")]),
        ("bad", "short", "", [("email", "INVALID_FORMAT"), ("password", "TOO_SHORT"), ("display_name", "REQUIRED")]),
    ],
)
async def test_register_rejects_invalid_fields_with_one_violation_each_and_creates_nothing(
    stub: UsersServiceAsyncStub,
    users: Users,
    email: str,
    password: str,
    display_name: str,
    expected: list[tuple[str, str]],
) -> None:
    details = await error_of(register(stub, email=email, password=password, display_name=display_name))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == expected
    assert await account_count(users) == 0


async def test_concurrent_registrations_of_one_email_create_exactly_one_account(
    stub: UsersServiceAsyncStub, users: Users
) -> None:
    async def attempt(n: int) -> str:
        try:
            await register(stub, email="Race@Example.com" if n % 2 else "race@example.com", display_name=f"R{n}")
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}:{details_of(error).reason}"
        return "OK"

    outcomes = Counter(await asyncio.gather(*(attempt(n) for n in range(10))))
    assert outcomes == {"OK": 1, "ALREADY_EXISTS:EMAIL_ALREADY_REGISTERED": 9}
    assert await account_count(users) == 1


# --- Login -----------------------------------------------------------------------------------------


async def test_login_returns_a_bearer_token_that_verifies_with_the_published_jwks_alone(
    stub: UsersServiceAsyncStub,
) -> None:
    user = await register(stub)
    response = await login(stub)
    assert response.token_type == "Bearer"
    assert response.user_id == user.id
    claims = verify_access_token(response.access_token, await jwks_document(stub))
    assert claims["sub"] == user.id


async def test_login_token_has_the_contract_header_and_claims(stub: UsersServiceAsyncStub, clock: FakeClock) -> None:
    user = await register(stub)
    response = await login(stub)
    header = jwt.get_unverified_header(response.access_token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": (await published_kids(stub))[0]}
    claims = verify_access_token(response.access_token, await jwks_document(stub))
    issued_at = int(clock.now.timestamp())
    assert claims == {
        "iss": "shopmesh-users",
        "aud": "shopmesh",
        "sub": user.id,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + 3600,
        "jti": claims["jti"],
    }
    assert response.expires_at.seconds == claims["exp"]
    assert response.expires_at.nanos == 0


async def test_token_lifetime_follows_the_setting(tmp_path: Path, clock: FakeClock) -> None:
    async with running(users_settings(tmp_path, token_lifetime_seconds=900), clock) as (_, stub):
        await register(stub)
        claims = verify_access_token((await login(stub)).access_token, await jwks_document(stub))
    assert claims["exp"] - claims["iat"] == 900


async def test_every_login_mints_a_token_with_a_new_jti(stub: UsersServiceAsyncStub) -> None:
    await register(stub)
    document = await jwks_document(stub)
    tokens = [(await login(stub)).access_token for _ in range(3)]
    assert len({verify_access_token(t, document)["jti"] for t in tokens}) == 3


async def test_login_normalizes_the_email_before_lookup(stub: UsersServiceAsyncStub) -> None:
    user = await register(stub, email="ann@example.com")
    assert (await login(stub, email="  ANN@Example.com ")).user_id == user.id


async def test_login_with_a_wrong_password_and_with_an_unknown_email_fail_identically(
    stub: UsersServiceAsyncStub,
) -> None:
    await register(stub, email="ann@example.com")
    wrong_password = await error_of(login(stub, email="ann@example.com", password="not the password"))
    unknown_email = await error_of(login(stub, email="nobody@example.com", password=PASSWORD))
    malformed_email = await error_of(login(stub, email="nobody", password=PASSWORD))
    for details in (wrong_password, unknown_email, malformed_email):
        assert details.code == grpc.StatusCode.UNAUTHENTICATED
        assert details.reason == "INVALID_CREDENTIALS"
    assert wrong_password == unknown_email == malformed_email


async def test_failed_logins_for_one_email_throttle_it_for_a_known_and_an_unknown_email_alike(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Guessing one account's password from many addresses: the gateway limits each address, so users
    counts the failures per e-mail, and then refuses even the right password until the bucket refills."""
    async with running(users_settings(tmp_path, login_failure_burst=3), clock) as (_, stub):
        await register(stub, email="ann@example.com")
        await register(stub, email="bob@example.com")
        for email in ("ann@example.com", "nobody@example.com"):
            for _ in range(3):
                failed = await error_of(login(stub, email=email, password="not the password"))
                assert failed.reason == "INVALID_CREDENTIALS"
        # The same normalized address as the failures', whatever the case it is sent in.
        throttled = await error_of(login(stub, email=" ANN@example.com", password=PASSWORD))
        unknown = await error_of(login(stub, email="nobody@example.com", password=PASSWORD))
        for details in (throttled, unknown):
            assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.reason == "TOO_MANY_LOGIN_ATTEMPTS"
            assert details.error_info is not None
            assert dict(details.error_info.metadata) == {}
            assert details.retry_delay_seconds is not None
            assert 0 < details.retry_delay_seconds <= 30
            assert details.retry_delay_seconds == int(details.retry_delay_seconds)
        assert throttled.message == unknown.message
        # Another account's logins are not held back.
        assert (await login(stub, email="bob@example.com")).user_id


async def test_a_successful_login_forgets_the_failures_before_it(tmp_path: Path, clock: FakeClock) -> None:
    async with running(users_settings(tmp_path, login_failure_burst=3), clock) as (_, stub):
        user = await register(stub, email="ann@example.com")
        for _ in range(3):
            for _ in range(2):
                await error_of(login(stub, email="ann@example.com", password="not the password"))
            assert (await login(stub, email="ann@example.com")).user_id == user.id


async def test_concurrent_wrong_logins_for_one_email_hash_no_more_passwords_than_the_burst(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guesses sent in parallel: all arrive before the first has failed. Each must use its attempt up when
    it is admitted; counting only failures let every guess the hashing queue holds through at each refill."""
    reached, hashes, refused = 0, 0, 0
    finish = threading.Event()
    verify, verify_in_turn = Passwords._verify, Passwords.verify

    async def counted_verify(self: Passwords, password_hash: str | None, password: str) -> bool:
        nonlocal reached
        reached += 1
        return await verify_in_turn(self, password_hash, password)

    def held_verify(self: Passwords, password_hash: str | None, password: str) -> bool:
        nonlocal hashes
        hashes += 1  # at most one thread at a time: PASSWORD_HASH_CONCURRENCY=1
        # No hash finishes, so no failure is known, until every guess has been either admitted or refused.
        finish.wait(30)
        return verify(self, password_hash, password)

    async def guess() -> str | None:
        nonlocal refused
        details = await error_of(login(stub, email="ann@example.com", password="not the password"))
        if details.reason == "TOO_MANY_LOGIN_ATTEMPTS":
            refused += 1
        return details.reason

    monkeypatch.setattr(Passwords, "_verify", held_verify)
    monkeypatch.setattr(Passwords, "verify", counted_verify)
    settings = users_settings(
        tmp_path, login_failure_burst=3, login_failure_refill_seconds=3600, password_hash_concurrency=1
    )
    guesses = 20
    try:
        async with running(settings, clock) as (_, stub):
            await register(stub, email="ann@example.com")
            tasks = [asyncio.ensure_future(guess()) for _ in range(guesses)]
            await eventually(lambda: reached + refused == guesses, "every guess sent to the hasher or refused")
            finish.set()
            reasons = Counter(await asyncio.gather(*tasks))
            assert reasons == {"INVALID_CREDENTIALS": 3, "TOO_MANY_LOGIN_ATTEMPTS": guesses - 3}
            assert hashes == 3
            throttled = await error_of(login(stub, email="ann@example.com"))
            assert throttled.reason == "TOO_MANY_LOGIN_ATTEMPTS", "the burst is spent, even for the right password"
    finally:
        finish.set()


async def verify_busy(_self: Passwords, _password_hash: str | None, _password: str) -> bool:
    raise ResourceExhausted("too many password checks at once; retry shortly", reason=BUSY_REASON)


async def account_read_fails(_self: UserRepository, _email: str) -> None:
    raise OperationalError("SELECT users", {}, Exception("database is locked"))


@pytest.mark.parametrize(
    ("target", "failure", "reason"),
    [
        ((Passwords, "verify"), verify_busy, BUSY_REASON),
        ((UserRepository, "account_by_email"), account_read_fails, "DATABASE_UNAVAILABLE"),
    ],
    ids=["hashing-queue-full", "database-error"],
)
async def test_logins_that_end_before_the_password_is_checked_spend_no_attempt(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    target: tuple[type, str],
    failure: object,
    reason: str,
) -> None:
    """Such a login tells the caller nothing about the password: it gives its attempt back, so a busy or
    failing service does not throttle the account's owner."""
    settings = users_settings(tmp_path, login_failure_burst=2, login_failure_refill_seconds=3600)
    async with running(settings, clock) as (_, stub):
        user = await register(stub)
        with monkeypatch.context() as patched:
            patched.setattr(*target, failure)
            for _ in range(5):
                assert (await error_of(login(stub))).reason == reason
        assert (await login(stub)).user_id == user.id


async def forget_fails(_self: LoginAttemptRepository, _key: str) -> None:
    raise OperationalError("DELETE FROM login_attempts", {}, Exception("database is locked"))


async def test_a_right_password_logs_in_when_its_attempts_cannot_be_forgotten(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Forgetting the address's attempts after the right password is a write of its own, best effort like the
    hash upgrade: the password was checked and right, so the database failing that delete must not refuse the
    login (UNAVAILABLE, the owner sent to try again, hashing once more). The attempts stay taken, logged."""
    settings = users_settings(tmp_path, login_failure_burst=3, login_failure_refill_seconds=3600)
    async with running(settings, clock) as (_, stub):
        user = await register(stub)
        with monkeypatch.context() as patched, caplog.at_level(logging.WARNING, "shopmesh.users"):
            patched.setattr(LoginAttemptRepository, "forget", forget_fails)
            assert (await login(stub)).user_id == user.id
        assert "login attempts not forgotten (OperationalError)" in caplog.text
        # The successful login's attempt stayed taken: two left, then throttled.
        for _ in range(2):
            assert (await error_of(login(stub, password="not the password"))).reason == "INVALID_CREDENTIALS"
        assert (await error_of(login(stub))).reason == "TOO_MANY_LOGIN_ATTEMPTS"


async def take_fails(_self: LoginAttemptRepository, _key: str) -> None:
    raise OperationalError("SELECT login_attempts FOR UPDATE", {}, Exception("database is locked"))


async def test_a_login_whose_attempt_cannot_be_taken_is_refused_unavailable_before_any_hashing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throttle fails closed (docs/auth.md): the right password too is refused, retryably, and unhashed."""
    settings = users_settings(tmp_path, login_failure_burst=1, login_failure_refill_seconds=3600)
    async with running(settings, clock) as (_, stub):
        user = await register(stub)
        with monkeypatch.context() as patched:
            patched.setattr(LoginAttemptRepository, "locked", take_fails)
            patched.setattr(Passwords, "verify", verify_busy)  # would answer PASSWORD_HASHING_BUSY if reached
            refused = await error_of(login(stub))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        assert refused.retry_delay_seconds is not None
        # Nothing was taken: the one attempt is still there.
        assert (await login(stub)).user_id == user.id


async def no_bucket(_self: LoginAttemptRepository, _key: str) -> None:
    return None


async def another_replica_stored_it(_self: LoginAttemptRepository, _key: str, _attempts: object) -> bool:
    return False


async def test_a_login_whose_attempt_loses_three_races_is_aborted_concurrent_update_retryable_and_unhashed(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each round another replica stores the address's first bucket between this one's read and its insert (and
    a success forgets it again): after three, ABORTED CONCURRENT_UPDATE with ErrorInfo, as the chassis answers
    a lost race (ABORTED: retry the whole call, with the chassis' RetryInfo for a lost race), nothing taken and
    no password hashed."""
    settings = users_settings(tmp_path, login_failure_burst=1, login_failure_refill_seconds=3600)
    async with running(settings, clock) as (_, stub):
        user = await register(stub)
        with monkeypatch.context() as patched:
            patched.setattr(LoginAttemptRepository, "locked", no_bucket)
            patched.setattr(LoginAttemptRepository, "add", another_replica_stored_it)
            patched.setattr(Passwords, "verify", verify_busy)  # would answer PASSWORD_HASHING_BUSY if reached
            aborted = await error_of(login(stub))
        assert aborted.error_info is not None
        assert (aborted.code, aborted.reason, aborted.error_info.domain, aborted.retry_delay_seconds) == (
            grpc.StatusCode.ABORTED,
            "CONCURRENT_UPDATE",
            "shopmesh.users",
            CONFLICT_RETRY_AFTER_SECONDS,
        )
        assert (await login(stub)).user_id == user.id, "the one attempt was not taken"


async def test_logins_given_up_while_waiting_for_or_running_their_hash_spend_no_attempt(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline (a client's own, which the gateway passes on) or a cancellation ends a login without an
    answer about the password: the attempt is given back, whether its hash had started or not."""
    held = HeldHashing()
    hashing, finish = held.hashing, held.finish

    settings = users_settings(
        tmp_path, login_failure_burst=2, login_failure_refill_seconds=3600, password_hash_concurrency=1
    )
    wrong_password = users_pb2.LoginRequest(email="ann@example.com", password="not the password")
    try:
        async with running(settings, clock) as (_, stub):
            user = await register(stub)
            held.hold(monkeypatch)
            first = stub.Login(wrong_password)
            await eventually(hashing.is_set, "the first login's hash started")
            first.cancel()
            for _ in range(4):
                # Past its deadline while queued behind the held hash; refused instead when the server has not
                # yet seen an earlier one's deadline (its attempt still out).
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Login(wrong_password, timeout=0.05)
            finish.set()

            async def logged_in() -> bool:
                # The server learns of each deadline on its own: until it has, the attempt is still out.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    return (await login(stub)).user_id == user.id
                return False

            await eventually(logged_in, "the right password logged in")
    finally:
        finish.set()


@pytest.mark.parametrize(
    ("email", "password", "expected"),
    [
        ("", PASSWORD, [("email", "REQUIRED")]),
        ("ann@example.com", "", [("password", "REQUIRED")]),
        (" ", "", [("email", "REQUIRED"), ("password", "REQUIRED")]),
    ],
)
async def test_login_with_an_empty_email_or_password_fails_with_invalid_argument(
    stub: UsersServiceAsyncStub, email: str, password: str, expected: list[tuple[str, str]]
) -> None:
    details = await error_of(login(stub, email=email, password=password))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == expected


async def test_login_upgrades_a_hash_made_with_weaker_argon2_parameters(tmp_path: Path, clock: FakeClock) -> None:
    async with running(users_settings(tmp_path), clock) as (users, stub):
        await register(stub)
        assert ",t=1," in await stored_hash(users, "ann@example.com")
    async with running(users_settings(tmp_path, password_hash_time_cost=2), clock) as (users, stub):
        await login(stub)
        upgraded = await stored_hash(users, "ann@example.com")
        assert upgraded.startswith("$argon2id$v=19$m=8192,t=2,p=1$")
        await login(stub)
        assert await stored_hash(users, "ann@example.com") == upgraded


async def test_a_password_logs_in_whichever_unicode_normal_form_the_device_sends(stub: UsersServiceAsyncStub) -> None:
    """ "Crème brûlée 2024" typed on one device arrives composed (NFC: è = U+00E8); pasted on another from
    a source that keeps text decomposed (NFD: e + U+0300, as macOS does) it is other code points for the
    same text."""
    typed = "Crème brûlée 2024"
    user = await register(stub, email="ann@example.com", password=unicodedata.normalize("NFD", typed))
    for form in ("NFC", "NFD", "NFKC"):
        assert (await login(stub, password=unicodedata.normalize(form, typed))).user_id == user.id


async def test_an_account_hashed_before_passwords_were_normalized_logs_in_and_gets_the_normalized_hash(
    users: Users, stub: UsersServiceAsyncStub
) -> None:
    typed = "Crème brûlée 2024"
    decomposed = unicodedata.normalize("NFD", typed)
    await register(stub)
    # What registering from a Mac stored before: a hash of the code points as sent.
    legacy = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(decomposed)
    async with users.database.transaction() as session:
        await session.execute(update(users_table).values(password_hash=legacy))
    await login(stub, password=decomposed)
    assert await stored_hash(users, "ann@example.com") != legacy
    await login(stub, password=unicodedata.normalize("NFC", typed))
    details = await error_of(login(stub, password=decomposed.upper()))
    assert details.reason == "INVALID_CREDENTIALS"


async def test_an_account_whose_password_register_now_refuses_still_logs_in(
    users: Users, stub: UsersServiceAsyncStub
) -> None:
    """Only a new password is checked for being common (NIST SP 800-63B 5.1.1.2): accounts registered with one
    before the check (the audit's "12345678") keep logging in with it."""
    await register(stub)
    common = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("12345678")
    async with users.database.transaction() as session:
        await session.execute(update(users_table).values(password_hash=common))
    details = await error_of(register(stub, email="bob@example.com", password="12345678"))
    assert violations_of(details) == [("password", "PASSWORD_TOO_COMMON")]
    assert (await login(stub, password="12345678")).access_token


async def hashing_busy(_self: Passwords, _password: str) -> str:
    raise ResourceExhausted("too many password checks at once; retry shortly", reason=BUSY_REASON)


async def database_down(_self: UserRepository, _user_id: str, _old_hash: str, _new_hash: str) -> None:
    raise OperationalError("UPDATE users", {}, Exception("database is locked"))


@pytest.mark.parametrize(
    ("target", "failure"),
    [((Passwords, "hash"), hashing_busy), ((UserRepository, "replace_password_hash"), database_down)],
    ids=["hashing-queue-full", "database-error"],
)
async def test_a_right_password_logs_in_even_when_upgrading_its_hash_fails(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: tuple[type, str],
    failure: object,
) -> None:
    """The upgrade is best effort: the old hash still works, and the next login tries again."""
    async with running(users_settings(tmp_path), clock) as (users, stub):
        user = await register(stub)
        weak = await stored_hash(users, "ann@example.com")
    async with running(users_settings(tmp_path, password_hash_time_cost=2), clock) as (users, stub):
        with monkeypatch.context() as patched:
            patched.setattr(*target, failure)
            with caplog.at_level(logging.WARNING, logger="shopmesh.users"):
                assert (await login(stub)).user_id == user.id
        assert await stored_hash(users, "ann@example.com") == weak
        assert "password hash upgrade skipped" in caplog.text
        await login(stub)
        assert ",t=2," in await stored_hash(users, "ann@example.com"), "the next login upgraded it"


class Running:
    """How many password checks run in worker threads at once, at most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


async def test_logins_whose_callers_give_up_never_run_more_hashes_at_once_than_password_hash_concurrency(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each argon2id hash holds its memory cost (64 MiB) while its thread runs, and a thread cannot be
    stopped: logins cancelled on their deadline (a client's own, which the gateway passes on) must not
    let the next ones start hashes beside theirs. A login given up while its hash runs, then seven more
    each given up after 50 ms while that hash still runs, with PASSWORD_HASH_CONCURRENCY=1."""
    running_hashes = Running()
    hashing, finish = threading.Event(), threading.Event()
    verify = Passwords._verify

    def held_verify(self: Passwords, password_hash: str | None, password: str) -> bool:
        # An argon2id check at production cost on a busy node: it lasts until the test lets it end, so the
        # later logins come while it runs however slowly the machine goes.
        with running_hashes:
            hashing.set()
            finish.wait(30)
            return verify(self, password_hash, password)

    monkeypatch.setattr(Passwords, "_verify", held_verify)
    settings = users_settings(tmp_path, password_hash_concurrency=1, password_hash_queue=32)
    request = users_pb2.LoginRequest(email="nobody@example.com", password="whatever1")
    try:
        async with running(settings, clock) as (_, stub):
            first = stub.Login(request, timeout=30)
            await eventually(hashing.is_set, "the first login's hash started")
            first.cancel()
            for _ in range(7):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Login(request, timeout=0.05)
            finish.set()
    finally:
        finish.set()
    assert running_hashes.most == 1


LOGIN_METHOD = {"grpc_type": "unary", "grpc_service": "shopmesh.users.v1.UsersService", "grpc_method": "Login"}


def login_sample(server: ChassisServer, name: str, **labels: str) -> float:
    """A Login series of the server's metrics, as the chassis exports them."""
    return server.metrics.registry.get_sample_value(name, {**LOGIN_METHOD, **labels}) or 0.0


async def test_a_login_refused_for_a_full_hashing_queue_counts_as_shed_and_a_throttled_one_does_not(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PASSWORD_HASHING_BUSY is the service out of capacity, as the chassis' GRPC_MAX_CONCURRENT_RPCS shedding is:
    counted in shopmesh_grpc_server_shed_total, which the server-errors alert and the availability SLO read
    beside the server error codes. TOO_MANY_LOGIN_ATTEMPTS, the same code, is a throttle the caller brought on
    itself: not shed."""
    held = HeldHashing()
    hashing, finish = held.hashing, held.finish

    settings = users_settings(
        tmp_path,
        password_hash_concurrency=1,
        password_hash_queue=0,
        login_failure_burst=1,
        login_failure_refill_seconds=3600,
    )
    try:
        async with serving(settings, clock) as (_, server, stub):
            user = await register(stub)
            held.hold(monkeypatch)
            holding = asyncio.ensure_future(login(stub))
            await eventually(hashing.is_set, "the first login's hash started")
            busy = await error_of(login(stub, email="bob@example.com"))
            finish.set()
            assert (await holding).user_id == user.id
            assert (await error_of(login(stub, email="carl@example.com"))).reason == "INVALID_CREDENTIALS"
            throttled = await error_of(login(stub, email="carl@example.com"))
            assert (busy.code, busy.reason, throttled.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                BUSY_REASON,
                "TOO_MANY_LOGIN_ATTEMPTS",
            )

            # The server counts a call after its status went out, so the client may see it first.
            def counts() -> tuple[float, float]:
                return (
                    login_sample(server, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED"),
                    login_sample(server, "shopmesh_grpc_server_shed_total"),
                )

            await eventually(lambda: counts() == (2, 1), "both refusals counted handled, the busy one shed")
    finally:
        finish.set()


SLOW_HASH_SECONDS = 2.5


class SlowToHash(PasswordHasher):
    """argon2 on a node where a hash takes at least SLOW_HASH_SECONDS: the hash users makes at start is its
    first measure of how long one takes."""

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        time.sleep(SLOW_HASH_SECONDS)
        return super().hash(password, salt=salt)


async def test_a_login_whose_hash_could_not_finish_before_its_deadline_is_refused_busy_not_deadline_exceeded(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one hash running and one at a time, a login with 4.5 s left would finish after two hashes of 2.5 s:
    it is refused PASSWORD_HASHING_BUSY at once, which the client can retry, though the queue has room. Queued,
    it waited out its deadline and ended DEADLINE_EXCEEDED, a server error at users and at the gateway."""
    monkeypatch.setattr(passwords_module, "PasswordHasher", SlowToHash)
    held = HeldHashing()
    settings = users_settings(tmp_path, password_hash_concurrency=1, password_hash_queue=32)
    try:
        async with serving(settings, clock) as (_, server, stub):
            held.hold(monkeypatch)
            holding = asyncio.ensure_future(login(stub, email="ann@example.com"))
            await eventually(held.hashing.is_set, "the first login's hash started")
            request = users_pb2.LoginRequest(email="bob@example.com", password=PASSWORD)
            busy = await error_of(stub.Login(request, timeout=2 * SLOW_HASH_SECONDS - 0.5))
            assert (busy.code, busy.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY_REASON)
            held.finish.set()
            assert (await error_of(holding)).reason == "INVALID_CREDENTIALS"
            await eventually(lambda: login_sample(server, "shopmesh_grpc_server_shed_total") == 1, "counted as shed")
    finally:
        held.finish.set()


async def test_a_login_refused_for_a_full_hashing_queue_has_an_error_span_that_names_its_reason(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shed, the busy login's server span is an error, as a call the chassis sheds is; its status says why by
    the reason the caller got, PASSWORD_HASHING_BUSY, not the chassis' SERVER_OVERLOADED, which sends whoever
    reads the trace to GRPC_MAX_CONCURRENT_RPCS instead of the hashing queue."""
    held = HeldHashing()
    hashing, finish = held.hashing, held.finish

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = users_settings(tmp_path, password_hash_concurrency=1, password_hash_queue=0)
    users = await build(settings, clock)
    try:
        async with (
            serve_in_process(settings, [users.binding], tracer_provider=provider) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            stub = UsersServiceStub(channel)
            await register(stub)
            held.hold(monkeypatch)
            holding = asyncio.ensure_future(login(stub))
            await eventually(hashing.is_set, "the first login's hash started")
            assert (await error_of(login(stub, email="bob@example.com"))).reason == BUSY_REASON
            finish.set()
            await holding

            def busy_spans() -> list[tuple[trace.StatusCode, str | None]]:
                return [
                    (span.status.status_code, span.status.description)
                    for span in exporter.get_finished_spans()
                    if span.kind is trace.SpanKind.SERVER
                    and (span.attributes or {}).get("rpc.grpc.status_code")
                    == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                ]

            await eventually(lambda: len(busy_spans()) == 1, "the busy login's server span")
            assert busy_spans() == [(trace.StatusCode.ERROR, BUSY_REASON)]
    finally:
        finish.set()
        provider.shutdown()
        await users.passwords.close()
        await users.password_strength.close()
        await users.database.dispose()


# --- GetUser ---------------------------------------------------------------------------------------


async def test_get_user_returns_the_registered_user(stub: UsersServiceAsyncStub) -> None:
    user = await register(stub)
    response = await stub.GetUser(users_pb2.GetUserRequest(user_id=user.id))
    assert response.user == user


async def test_get_user_of_an_unknown_id_fails_with_not_found(stub: UsersServiceAsyncStub) -> None:
    details = await error_of(stub.GetUser(users_pb2.GetUserRequest(user_id="usr_missing")))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "USER_NOT_FOUND"
    assert details.error_info is not None
    assert dict(details.error_info.metadata) == {"user_id": "usr_missing"}


@pytest.mark.parametrize(("user_id", "reason"), [("", "REQUIRED"), ("u" * 65, "TOO_LONG")])
async def test_get_user_with_an_empty_or_too_long_id_fails_with_invalid_argument(
    stub: UsersServiceAsyncStub, user_id: str, reason: str
) -> None:
    details = await error_of(stub.GetUser(users_pb2.GetUserRequest(user_id=user_id)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("user_id", reason)]


@pytest.mark.parametrize("user_id", [" ", "\n\r", "\u202e", "usr 1", "\x1b[2J"])
async def test_get_user_with_an_unprintable_id_fails_with_invalid_format(
    stub: UsersServiceAsyncStub, user_id: str
) -> None:
    """No user has such an id: refused as every service refuses it (`contract_limits.id_violations`),
    not looked up and answered USER_NOT_FOUND with the id quoted back in its metadata."""
    details = await error_of(stub.GetUser(users_pb2.GetUserRequest(user_id=user_id)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("user_id", "INVALID_FORMAT")]


# --- GetJwks ---------------------------------------------------------------------------------------


async def test_get_jwks_json_is_a_standard_jwks_of_one_ed25519_key(stub: UsersServiceAsyncStub) -> None:
    document = await jwks_document(stub)
    assert list(document) == ["keys"]
    [key] = document["keys"]
    assert set(key) == {"kid", "kty", "crv", "alg", "x", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert len(key["x"]) == 43
    assert key["kid"] == jwk_thumbprint("OKP", "Ed25519", key["x"])
    [parsed] = jwt.PyJWKSet.from_dict(document).keys
    assert (parsed.key_id, parsed.algorithm_name, parsed.public_key_use) == (key["kid"], "EdDSA", "sig")


async def test_a_restarted_service_keeps_its_key_and_still_verifies_its_earlier_tokens(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running(users_settings(tmp_path), clock) as (_, stub):
        await register(stub)
        token = (await login(stub)).access_token
        before = await published_kids(stub)
    async with running(users_settings(tmp_path), clock) as (_, stub):
        assert await published_kids(stub) == before
        assert verify_access_token(token, await jwks_document(stub))["iss"] == "shopmesh-users"


# --- an unreachable database -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving_application(
    settings: UsersSettings, application: UsersApplication
) -> AsyncIterator[UsersServiceAsyncStub]:
    """`application` served on a real gRPC socket, as wiring does, and a stub connected to it."""
    binding = ServiceBinding(DESCRIPTOR, UsersServicer(application), add_UsersServiceServicer_to_server)
    async with (
        serve_in_process(settings, [binding]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield UsersServiceStub(channel)


async def test_every_rpc_fails_with_unavailable_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = users_settings(tmp_path)
    # Nothing listens there: connecting fails at once, as when the database is down.
    database = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/users")
    strength = PasswordStrength()
    application = UsersApplication(database, passwords(settings), key_policy(settings), password_strength=strength)
    try:
        async with serving_application(settings, application) as stub:
            calls = [
                register(stub),
                login(stub),
                stub.GetUser(users_pb2.GetUserRequest(user_id="usr_1")),
                stub.GetJwks(users_pb2.GetJwksRequest()),
            ]
            for call in calls:
                details = await error_of(call)
                assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
                assert details.retry_delay_seconds is not None
    finally:
        await strength.close()
        await database.dispose()


async def test_login_refuses_a_password_longer_than_any_could_be_as_too_long_and_not_as_wrong(
    stub: UsersServiceAsyncStub,
) -> None:
    """The contract (users.proto, Login): INVALID_ARGUMENT for an empty e-mail or password, or a password of
    more than 1,024 characters as sent (violation TOO_LONG on "password"); any other wrong password, however
    long, is UNAUTHENTICATED INVALID_CREDENTIALS."""
    await register(stub, email="ann@example.com")
    details = await error_of(login(stub, email="ann@example.com", password="p" * 1025))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert violations_of(details) == [("password", "TOO_LONG")]
    details = await error_of(login(stub, email="ann@example.com", password="p" * 1024))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")


# --- the password's guessability estimate ----------------------------------------------------------


async def test_other_calls_are_answered_while_a_registers_guessability_is_estimated(tmp_path: Path) -> None:
    """zxcvbn's bindings hold the GIL for their whole estimate, so neither the event loop nor a thread may run it:
    while an estimate holds the GIL (a stand-in, for seconds: the real one's milliseconds cannot be told from a
    loaded machine's noise), GetJwks is answered on the same server."""
    times_file = str(tmp_path / "estimate-times")
    settings = users_settings(tmp_path)
    database = Database(f"sqlite:///{tmp_path / 'users.db'}")
    await migrate(database, VERSIONS, metadata)
    strength = PasswordStrength(functools.partial(holding_the_gil, times_file, 3.0))
    application = UsersApplication(database, passwords(settings), key_policy(settings), password_strength=strength)
    await application.ensure_signing_key()
    try:
        async with serving_application(settings, application) as stub:
            registering = asyncio.create_task(register(stub))
            await eventually(lambda: Path(times_file).exists(), "the estimate holding the GIL")
            await stub.GetJwks(users_pb2.GetJwksRequest(), timeout=30)
            answered = time.time()
            await asyncio.wait_for(registering, 60)
        started, stopped = held(times_file)
        assert stopped is not None
        assert answered < stopped, (
            f"GetJwks answered {answered - started:.2f} s into an estimate that held the GIL {stopped - started:.2f} s"
        )
    finally:
        await strength.close()
        await database.dispose()


@pytest.mark.parametrize(
    ("warm_up", "holding_seconds"),
    [pytest.param(wiring.WARM_UP_SECONDS, None, id="failed"), pytest.param(0.3, 3.0, id="timed-out")],
)
async def test_the_service_serves_when_its_estimating_process_does_not_warm_up(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    warm_up: float,
    holding_seconds: float | None,
) -> None:
    """The warm-up only spares the first Register the process' start: one that raises (an estimate writing to a
    directory that does not exist), or outlasts its bound, is logged once and the service reports SERVING, its
    JWKS answered; the failure is counted by its cause."""
    times_file = str(tmp_path / "estimate-times" if holding_seconds else tmp_path / "no such directory" / "times")
    estimate = functools.partial(holding_the_gil, times_file, holding_seconds or 0.01)
    monkeypatch.setattr(wiring, "PasswordStrength", functools.partial(PasswordStrength, estimate))
    monkeypatch.setattr(wiring, "WARM_UP_SECONDS", warm_up)
    with caplog.at_level(logging.WARNING, logger="shopmesh.users"):
        async with serving(users_settings(tmp_path), clock) as (users, server, stub):
            assert await health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
            assert await jwks_document(stub)
            serving_at = time.time()
            # The estimate's own failure (the directory), or the warm-up's bound.
            assert estimate_failures(users) == ({"error": 1} if holding_seconds is None else {"timeout": 1})
    if holding_seconds is not None:
        # Read once the service has closed its process, so once the warm-up has ended.
        _started, stopped = held(times_file)
        assert stopped is not None
        assert serving_at < stopped, "SERVING only once the warm-up that outlasted its bound had ended"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "did not warm up" in warnings[0].getMessage()


def estimate_failures(users: Users) -> dict[str, float]:
    """The password-strength estimates users' metrics count failed, by cause (those above 0)."""
    series = "shopmesh_users_password_strength_failures_total"
    found = {cause: users.metrics.registry.get_sample_value(series, {"cause": cause}) for cause in ESTIMATE_FAILURES}
    assert None not in found.values(), f"a cause without its series from the start: {found}"
    return {cause: value for cause, value in found.items() if value}


async def test_an_estimating_process_that_dies_at_every_start_is_counted_broken_for_the_warm_up_and_each_register(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that cannot start (a broken install, the OOM killer as zxcvbn loads) leaves users SERVING, its
    logins and JWKS answered, with one warning in the log and every Register failing: each failed estimate is
    counted (cause broken: its process died, and its replacement too), the warm-up's and each Register's, so an
    alert sees what health and logins do not."""
    # The real process, ended as it starts: its initializer, run in it, exits at once.
    monkeypatch.setattr(password_strength, "_estimating_process_started", os._exit)
    async with serving(users_settings(tmp_path), clock) as (users, server, stub):
        assert await health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert estimate_failures(users) == {"broken": 1}
        await error_of(register(stub))
        assert estimate_failures(users) == {"broken": 2}
        assert await jwks_document(stub)
