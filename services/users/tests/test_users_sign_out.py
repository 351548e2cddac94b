"""SignOut and GetTokenCutoff: a sign-out revokes every token issued so far (their iat is not after the user's
cutoff), a Login right after it, in the same second too, gets a token issued after the cutoff, repeating it
never moves the cutoff back, and only the user the gateway acts for may be signed out. The cutoff's column on
SQLite and PostgreSQL, added to a database of the previous release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import jwt
from sqlalchemy import insert

from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import migrate_to, schema_differences
from shopmesh_users.domain.tokens import build_access_claims, issued_at, next_cutoff
from shopmesh_users.migrations import VERSIONS
from shopmesh_users.store.repository import UserRepository
from shopmesh_users.store.tables import metadata, users
from shopmesh_users.wiring import Users

from .conftest import FakeClock, error_of, login, register

if TYPE_CHECKING:
    from shopmesh.users.v1.users_pb2_grpc import UsersServiceAsyncStub

T = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)


def iat_of(token: str) -> int:
    claims = jwt.decode(token, options={"verify_signature": False})
    value = claims["iat"]
    assert isinstance(value, int)
    return value


def cutoff_of(response: users_pb2.SignOutResponse | users_pb2.GetTokenCutoffResponse) -> float | None:
    if not response.HasField("tokens_valid_after"):
        return None
    return response.tokens_valid_after.ToDatetime(UTC).timestamp()


# --- the rule, pure -------------------------------------------------------------------------------------


def test_a_token_issued_in_the_second_of_a_sign_out_is_stamped_the_next_whole_second() -> None:
    cutoff = T + timedelta(seconds=0.7)
    assert issued_at(T + timedelta(seconds=0.8), cutoff) == T + timedelta(seconds=1)
    # A cutoff on a whole second: a token of that second would not be after it either.
    assert issued_at(T, T) == T + timedelta(seconds=1)
    # Past the cutoff's second, the time itself, truncated.
    assert issued_at(T + timedelta(seconds=1.2), cutoff) == T + timedelta(seconds=1)
    assert issued_at(T + timedelta(seconds=5.5), cutoff) == T + timedelta(seconds=5)
    assert issued_at(T + timedelta(seconds=0.8)) == T


def test_a_cutoff_stamped_ahead_of_this_clock_is_honoured_and_expiry_follows_the_stamp() -> None:
    # Another replica's clock 2 s ahead signed the user out: the token is stamped after its cutoff.
    claims = build_access_claims("usr_1", T, timedelta(hours=1), "jti", T + timedelta(seconds=2.3))
    assert claims.issued_at == T + timedelta(seconds=3)
    assert claims.expires_at == T + timedelta(hours=1, seconds=3)


def test_a_sign_out_never_moves_the_cutoff_back_nor_below_the_iat_a_login_stamps_now() -> None:
    assert next_cutoff(None, T) == T
    assert next_cutoff(T, T + timedelta(seconds=1)) == T + timedelta(seconds=1)
    # Out at .7, in at .8 (iat: the next whole second), out at .9: the cutoff reaches that iat.
    assert next_cutoff(T + timedelta(seconds=0.7), T + timedelta(seconds=0.9)) == T + timedelta(seconds=1)
    # A replica whose clock is behind: past the stored cutoff, as far as a Login after it stamps.
    assert next_cutoff(T + timedelta(seconds=3), T) == T + timedelta(seconds=4)
    for stored in (None, T, T + timedelta(seconds=0.7), T + timedelta(seconds=3)):
        for now in (T, T + timedelta(seconds=0.9), T + timedelta(seconds=2.5)):
            cutoff = next_cutoff(stored, now)
            assert issued_at(now, stored) <= cutoff < issued_at(now, cutoff)


# --- over gRPC ------------------------------------------------------------------------------------------


async def test_sign_out_revokes_the_tokens_issued_so_far_and_a_login_in_the_same_second_is_after_it(
    stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    user = await register(stub)
    before = (await login(stub)).access_token
    assert cutoff_of(await stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id=user.id))) is None

    clock.advance(0.7)
    signed_out = cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id)))
    assert signed_out == clock.now.timestamp()
    assert cutoff_of(await stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id=user.id))) == signed_out
    assert iat_of(before) <= signed_out

    clock.advance(0.1)  # the same whole second
    after = await login(stub)
    assert iat_of(after.access_token) > signed_out
    # The answer's expiry is the token's own.
    assert after.expires_at.seconds == jwt.decode(after.access_token, options={"verify_signature": False})["exp"]


async def test_signing_out_again_is_harmless_and_a_clock_behind_does_not_bring_tokens_back(
    stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    user = await register(stub)
    first = cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id)))
    clock.advance(2)
    second = cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id)))
    assert first is not None
    assert second == first + 2
    clock.advance(-10)
    # Past the stored cutoff: to the iat a Login after it stamps on this clock behind (its next whole second).
    behind = cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id)))
    assert behind == int(second) + 1
    assert cutoff_of(await stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id=user.id))) == behind


async def test_a_sign_out_in_the_second_of_a_login_after_a_sign_out_revokes_that_token_and_a_login_still_works(
    stub: UsersServiceAsyncStub, clock: FakeClock
) -> None:
    user = await register(stub)
    whole = clock.now  # on a whole second
    clock.now = whole + timedelta(seconds=0.7)
    await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id))
    clock.now = whole + timedelta(seconds=0.8)
    relogged = (await login(stub)).access_token
    assert iat_of(relogged) == int(whole.timestamp()) + 1  # a second ahead of the clock
    clock.now = whole + timedelta(seconds=0.9)
    second = cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=user.id)))
    assert second is not None
    assert iat_of(relogged) <= second
    clock.now = whole + timedelta(seconds=0.95)
    assert iat_of((await login(stub)).access_token) > second


async def test_only_the_user_the_gateway_acts_for_can_be_signed_out_or_read(stub: UsersServiceAsyncStub) -> None:
    """GetUser too: it answers the user's e-mail address, which bob must not read of ann's by her id."""
    ann = await register(stub)
    bob = await register(stub, email="bob@example.com", display_name="Bob")
    as_bob = (("x-user-id", bob.id),)
    for call in (
        stub.SignOut(users_pb2.SignOutRequest(user_id=ann.id), metadata=as_bob),
        stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id=ann.id), metadata=as_bob),
        stub.GetUser(users_pb2.GetUserRequest(user_id=ann.id), metadata=as_bob),
    ):
        refused = await error_of(call)
        assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "USER_MISMATCH")
    assert cutoff_of(await stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id=ann.id))) is None
    # Without the header (a consumer mailing the user, an internal tool), any user may be read.
    assert (await stub.GetUser(users_pb2.GetUserRequest(user_id=ann.id))).user.email == ann.email
    assert (await stub.GetUser(users_pb2.GetUserRequest(user_id=bob.id), metadata=as_bob)).user.id == bob.id
    assert cutoff_of(await stub.SignOut(users_pb2.SignOutRequest(user_id=bob.id), metadata=as_bob)) is not None


async def test_an_unknown_or_malformed_user_is_refused(stub: UsersServiceAsyncStub) -> None:
    unknown = await error_of(stub.SignOut(users_pb2.SignOutRequest(user_id="usr_nobody")))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    unknown = await error_of(stub.GetTokenCutoff(users_pb2.GetTokenCutoffRequest(user_id="usr_nobody")))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    empty = await error_of(stub.SignOut(users_pb2.SignOutRequest(user_id="")))
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_cutoff_is_stored_with_the_sign_outs_fraction_of_a_second(users: Users, clock: FakeClock) -> None:
    # Whole seconds would revoke a login later in the sign-out's second, or spare a token from before it.
    clock.advance(0.123456)
    user = await users.application.register("cy@example.com", "correct horse battery", "Cy")
    assert await users.application.sign_out(user.id) == clock.now
    assert await users.application.token_cutoff(user.id) == clock.now


# --- the column, on both databases -----------------------------------------------------------------------


async def test_the_cutoff_column_joins_accounts_of_the_previous_release(blank_db: Database) -> None:
    await migrate_to(blank_db, VERSIONS, "users_0003")
    previous = {c.name for c in users.columns} - {"tokens_valid_after"}
    account = {"id": "usr_1", "email": "dee@example.com", "display_name": "Dee", "password_hash": "h", "created_at": T}
    async with blank_db.transaction() as connection:
        await connection.execute(insert(users).values({k: v for k, v in account.items() if k in previous}))
    await migrate(blank_db, VERSIONS, metadata)
    assert await schema_differences(blank_db, metadata) == []

    async with blank_db.read() as connection:
        assert await UserRepository(connection).token_cutoff("usr_1") == (True, None)
        assert await UserRepository(connection).token_cutoff("usr_2") == (False, None)
    cutoff = T + timedelta(seconds=0.654321)
    async with blank_db.transaction() as connection:
        repository = UserRepository(connection)
        assert await repository.locked_token_cutoff("usr_1") == (True, None)
        await repository.set_token_cutoff("usr_1", cutoff)
    async with blank_db.read() as connection:
        stored = await UserRepository(connection).account_by_email("dee@example.com")
    assert stored is not None
    assert stored.tokens_valid_after == cutoff
