"""A login's throttle attempt is spent once its password has been checked, over a real gRPC socket on a real
SQLite (or PostgreSQL) database with real argon2 hashing.

A password that NFKC normalizing changes (one letter in full width) is checked twice: normalized, then as sent
(accounts registered before passwords were normalized hold a hash of that form). The first check answering
"wrong" already tells a guesser the guess is wrong: a right one returns its token at once. Were the attempt
given back when the second check is cut (the caller's deadline or cancellation, its hashing busy), each guess
would be checked against the account for free, however small the e-mail's bucket."""

from __future__ import annotations

import asyncio
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_users.passwords import Passwords

from .conftest import PASSWORD, FakeClock, register, running, users_settings

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub

LoginRpc: TypeAlias = "grpc.aio.UnaryUnaryCall[users_pb2.LoginRequest, users_pb2.LoginResponse]"
# The call, to cancel it, and what its caller got.
LoginCall: TypeAlias = "tuple[LoginRpc, asyncio.Task[str]]"

BURST = 3
GUESSES = 3 * BURST
WAIT_SECONDS = 30  # a bound on every wait, far above what any step takes


def full_width(guess: str) -> str:
    """The same password once normalized, but not as sent: its first character (ASCII) in full width."""
    return chr(ord(guess[0]) - 0x21 + 0xFF01) + guess[1:]


@dataclass
class SecondCheckGate:
    """Holds each check of a password as sent (the second one) before it asks for a hashing turn, until the
    test opens the gate; records every check that answered, and with which password."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    open: asyncio.Event = field(default_factory=asyncio.Event)
    answered: list[str] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        verify = Passwords.verify

        async def gated_verify(passwords: Passwords, password_hash: str | None, password: str) -> bool:
            if unicodedata.normalize("NFKC", password) != password:
                self.reached.set()
                await asyncio.wait_for(self.open.wait(), WAIT_SECONDS)
            matched = await verify(passwords, password_hash, password)
            self.answered.append(password)
            return matched

        monkeypatch.setattr(Passwords, "verify", gated_verify)

    def reset(self) -> None:
        self.reached.clear()
        self.open.clear()

    def wrong_guesses_checked(self) -> int:
        """Wrong guesses checked (normalized) against the account: what the throttle must bound."""
        return sum(1 for password in self.answered if password.startswith("wrong guess"))


async def _reached_or_done(gate: SecondCheckGate, call: asyncio.Task[str]) -> bool:
    """Whether the login reached its second check (else it ended before: refused, or checked once)."""
    reached = asyncio.ensure_future(gate.reached.wait())
    done, _ = await asyncio.wait({reached, call}, timeout=WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    assert done, "the login neither reached its second check nor ended"
    return gate.reached.is_set()


async def _outcome(rpc: LoginRpc) -> str:
    """How the login ended for its caller: OK, the error's reason, or its code when it has none."""
    try:
        await asyncio.wait_for(rpc, WAIT_SECONDS)
    except grpc.aio.AioRpcError as error:
        return details_of(error).reason or error.code().name
    except asyncio.CancelledError:
        if not rpc.cancelled():
            raise
        return "CANCELLED"
    return "OK"


def _login(stub: UsersServiceAsyncStub, email: str, password: str) -> LoginCall:
    rpc = stub.Login(users_pb2.LoginRequest(email=email, password=password))
    return rpc, asyncio.ensure_future(_outcome(rpc))


async def test_a_login_cancelled_during_the_check_as_sent_keeps_the_attempt_its_first_check_spent(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller who cancels (or whose deadline passes) once the normalized check has answered: with the attempt
    given back, every wrong guess written with one full-width letter was checked and none throttled."""
    gate = SecondCheckGate()
    settings = users_settings(tmp_path, login_failure_burst=BURST, login_failure_refill_seconds=3600)
    async with running(settings, clock) as (_, stub):
        await register(stub)
        gate.install(monkeypatch)
        outcomes: list[str] = []
        for n in range(GUESSES):
            gate.reset()
            rpc, outcome = _login(stub, "ann@example.com", full_width(f"wrong guess {n:02d}"))
            if await _reached_or_done(gate, outcome):
                rpc.cancel()  # the server's handler is cancelled, as on the caller's deadline
            outcomes.append(await outcome)
        checked = gate.wrong_guesses_checked()
        # The right password is refused too: the cancelled logins did not refill the bucket.
        right_outcome = await _login(stub, "ann@example.com", PASSWORD)[1]
    assert checked == BURST
    assert outcomes == ["CANCELLED"] * BURST + ["TOO_MANY_LOGIN_ATTEMPTS"] * (GUESSES - BURST)
    assert right_outcome == "TOO_MANY_LOGIN_ATTEMPTS"


async def test_a_login_whose_check_as_sent_finds_the_hashing_busy_keeps_the_attempt_its_first_check_spent(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under hashing load the second check is refused PASSWORD_HASHING_BUSY after the first answered "wrong":
    with the attempt given back, a guesser keeping the hashing queue full had every guess checked for free."""
    gate = SecondCheckGate()
    # One hashing place and no queue: a login holding that place makes the next check busy.
    settings = users_settings(
        tmp_path,
        login_failure_burst=BURST,
        login_failure_refill_seconds=3600,
        password_hash_concurrency=1,
        password_hash_queue=0,
    )
    occupant_hashing, occupant_finish = threading.Event(), threading.Event()
    verify = Passwords._verify

    def held_for_the_occupant(passwords: Passwords, password_hash: str | None, password: str) -> bool:
        if password == "occupant password":
            occupant_hashing.set()
            occupant_finish.wait(WAIT_SECONDS)
        return verify(passwords, password_hash, password)

    async with running(settings, clock) as (_, stub):
        await register(stub)
        gate.install(monkeypatch)
        monkeypatch.setattr(Passwords, "_verify", held_for_the_occupant)
        outcomes: list[str] = []
        for n in range(GUESSES):
            gate.reset()
            occupant_hashing.clear()
            occupant_finish.clear()
            _, outcome = _login(stub, "ann@example.com", full_width(f"wrong guess {n:02d}"))
            if await _reached_or_done(gate, outcome):
                # Another e-mail's login (a bucket of its own) takes the one hashing place between the two checks.
                _, occupant = _login(stub, f"occupant{n}@example.com", "occupant password")
                await asyncio.to_thread(occupant_hashing.wait, WAIT_SECONDS)
                assert occupant_hashing.is_set(), "the other login's check did not start"
                gate.open.set()
                outcomes.append(await outcome)
                occupant_finish.set()
                assert await occupant == "INVALID_CREDENTIALS"
            else:
                outcomes.append(await outcome)
        checked = gate.wrong_guesses_checked()
    assert checked == BURST
    assert outcomes == ["PASSWORD_HASHING_BUSY"] * BURST + ["TOO_MANY_LOGIN_ATTEMPTS"] * (GUESSES - BURST)
