"""Access-token verification against a cached key set, with keys made in the test and a fake clock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import jwt
import pytest

from shopmesh_chassis import errors
from shopmesh_gateway.coalesced import FAILED_FETCH_BACKOFF_SECONDS
from shopmesh_gateway.tokens import (
    MAX_TOKEN_CHARS,
    NOT_BEFORE_LEEWAY_SECONDS,
    STALE_KEYS_WAIT_SECONDS,
    JwksCache,
    TokenRules,
    TokenVerifier,
)

from .gateway_keys import AUDIENCE, ISSUER, SigningKey, tampered


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeUsers:
    """GetJwks as users serves it; `down` makes it UNAVAILABLE."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    async def jwks(self) -> Sequence[Mapping[str, str]]:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.down:
            raise errors.Unavailable("users is down")
        return [key.jwk for key in self.keys]


@pytest.fixture
def key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def users(key: SigningKey) -> FakeUsers:
    return FakeUsers(key)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(users: FakeUsers, clock: FakeClock) -> TokenVerifier:
    cache = JwksCache(users.jwks, max_age_seconds=300, min_refetch_interval_seconds=30, clock=clock)
    return TokenVerifier(cache, TokenRules(ISSUER, AUDIENCE, leeway_seconds=5))


async def reason_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(errors.Unauthenticated) as caught:
        await verifier.subject(token)
    return caught.value.reason


async def test_a_valid_token_yields_its_subject(verifier: TokenVerifier, key: SigningKey) -> None:
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice"


async def test_an_expired_token_is_token_expired(verifier: TokenVerifier, key: SigningKey) -> None:
    assert await reason_of(verifier, key.token(expires_in=-60)) == "TOKEN_EXPIRED"


async def test_a_token_expired_within_the_leeway_still_passes(verifier: TokenVerifier, key: SigningKey) -> None:
    assert await verifier.subject(key.token("usr_alice", expires_in=-2)) == "usr_alice"


@pytest.mark.parametrize("users_ahead", [4, 6, 50])
async def test_a_fresh_token_from_users_whose_clock_is_ahead_passes(
    verifier: TokenVerifier, key: SigningKey, users_ahead: int
) -> None:
    """A gateway replica more than JWT_LEEWAY_SECONDS behind users refused the token users had just issued
    TOKEN_INVALID ("not yet valid (iat)"), and its client threw it away and logged in again, to be refused
    alike, in a loop (the clock audit's finding: failing so on the old code at 6 and 50 s). nbf and iat take
    a minute's tolerance: a token stamped ahead is a clock off, and accepting it extends no token's life."""
    now = int(time.time()) + users_ahead
    assert await verifier.subject(key.token(iat=now, nbf=now, exp=now + 3600)) == "usr_alice"


async def test_a_token_not_valid_for_more_than_the_not_before_leeway_is_token_invalid(
    verifier: TokenVerifier, key: SigningKey
) -> None:
    later = int(time.time() + NOT_BEFORE_LEEWAY_SECONDS) + 60
    assert await reason_of(verifier, key.token(nbf=later)) == "TOKEN_INVALID"
    assert await reason_of(verifier, key.token(iat=later)) == "TOKEN_INVALID"
    assert await reason_of(verifier, key.token(iat="yesterday")) == "TOKEN_INVALID"


async def test_the_longer_tolerance_of_nbf_and_iat_leaves_exp_to_the_leeway(
    verifier: TokenVerifier, key: SigningKey
) -> None:
    assert await reason_of(verifier, key.token(expires_in=-6)) == "TOKEN_EXPIRED"


async def test_a_tampered_payload_is_token_invalid(verifier: TokenVerifier, key: SigningKey) -> None:
    forged = tampered(key.token("usr_alice"), iss=ISSUER, aud=AUDIENCE, sub="usr_admin", exp=9_999_999_999)
    assert await reason_of(verifier, forged) == "TOKEN_INVALID"


async def test_a_token_signed_by_another_key_under_a_known_kid_is_token_invalid(
    verifier: TokenVerifier, key: SigningKey
) -> None:
    impostor = SigningKey(kid=key.kid)
    assert await reason_of(verifier, impostor.token()) == "TOKEN_INVALID"


async def test_a_token_of_an_unpublished_key_is_token_invalid(verifier: TokenVerifier) -> None:
    assert await reason_of(verifier, SigningKey().token()) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "someone-else"},
        {"aud": "another-audience"},
        {"exp": None},
        {"sub": None},
        {"sub": ""},
        {"sub": "u" * 65},
        {"nbf": 9_999_999_999},
        {"iat": None},
        {"exp": str(int(time.time()) + 3600)},
    ],
    ids=[
        "issuer",
        "audience",
        "no-exp",
        "no-sub",
        "empty-sub",
        "long-sub",
        "not-yet-valid",
        "no-iat",
        "exp-as-a-string",
    ],
)
async def test_tokens_with_wrong_or_missing_claims_are_token_invalid(
    verifier: TokenVerifier, key: SigningKey, claims: dict[str, object]
) -> None:
    assert await reason_of(verifier, key.token(**claims)) == "TOKEN_INVALID"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_time_claim_that_is_a_json_boolean_is_token_invalid_not_a_number(
    verifier: TokenVerifier, key: SigningKey, claim: str
) -> None:
    """JSON true is a Python bool, an int: PyJWT read an exp of true as 1 and refused it TOKEN_EXPIRED."""
    with pytest.raises(errors.Unauthenticated) as caught:
        await verifier.subject(key.token(**{claim: True}))
    assert caught.value.reason == "TOKEN_INVALID"
    assert f"its {claim} is not a number" in str(caught.value)


async def test_a_token_of_another_algorithm_is_token_invalid(verifier: TokenVerifier, key: SigningKey) -> None:
    hs256 = jwt.encode({"sub": "usr_alice"}, "s" * 32, algorithm="HS256", headers={"kid": key.kid})
    assert await reason_of(verifier, hs256) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "headers",
    [
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIBszCCAVmgAwIBAgIUQ"]},
        {"typ": "at+jwt"},
        {"typ": None},
        {"cty": "JWT"},
    ],
    ids=["jku", "x5u", "x5c", "typ-at+jwt", "no-typ", "cty"],
)
async def test_a_token_signed_with_the_real_key_whose_header_is_not_users_is_token_invalid(
    verifier: TokenVerifier, key: SigningKey, headers: dict[str, object]
) -> None:
    assert await reason_of(verifier, key.token(headers=headers)) == "TOKEN_INVALID"


async def test_a_token_carrying_its_own_key_in_a_jwk_header_is_token_invalid(
    verifier: TokenVerifier, key: SigningKey
) -> None:
    # The real key, even: the gateway verifies with users' published keys alone, and says so.
    assert await reason_of(verifier, key.token(headers={"jwk": key.jwk})) == "TOKEN_INVALID"


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
async def test_malformed_tokens_are_token_invalid(verifier: TokenVerifier, garbage: str) -> None:
    assert await reason_of(verifier, garbage) == "TOKEN_INVALID"


async def test_the_key_set_is_fetched_once_and_cached(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers
) -> None:
    for _ in range(5):
        await verifier.subject(key.token())
    assert users.fetches == 1


async def test_concurrent_first_verifications_share_one_fetch(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers
) -> None:
    await asyncio.gather(*(verifier.subject(key.token()) for _ in range(10)))
    assert users.fetches == 1


async def test_the_key_set_is_refetched_once_it_is_five_minutes_old(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    await verifier.subject(key.token())
    clock.now += 299
    await verifier.subject(key.token())
    assert users.fetches == 1
    clock.now += 1
    await verifier.subject(key.token())
    assert users.fetches == 2


async def test_an_unknown_kid_refetches_at_most_every_30_seconds(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    await verifier.subject(key.token())
    stranger = SigningKey()
    for _ in range(5):
        assert await reason_of(verifier, stranger.token()) == "TOKEN_INVALID"
    assert users.fetches == 1, "the set fetched a moment ago is not fetched again"
    clock.now += 30
    for _ in range(5):
        await reason_of(verifier, stranger.token())
    assert users.fetches == 2


async def test_a_rotated_in_key_is_picked_up_by_the_refetch_on_its_unknown_kid(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    await verifier.subject(key.token())
    clock.now += 31
    rotated = SigningKey()
    users.keys.insert(0, rotated)
    assert await verifier.subject(rotated.token("usr_bob")) == "usr_bob"
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice", "the older key stays usable"


async def test_known_keys_keep_verifying_while_users_is_down(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    await verifier.subject(key.token())
    users.down = True
    clock.now += 600
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice"
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice"
    assert users.fetches == 2, "a failed refetch is not retried on every request"


async def test_without_any_key_set_an_unreachable_users_service_is_unavailable(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers
) -> None:
    users.down = True
    with pytest.raises(errors.Unavailable):
        await verifier.subject(key.token())
    users.down = False
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice", "recovers without waiting"


async def test_published_keys_that_cannot_verify_eddsa_are_ignored(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers
) -> None:
    rsa_like = {**SigningKey().jwk, "kty": "RSA"}
    broken = {**SigningKey().jwk, "x": "not base64url of 32 bytes"}

    async def jwks() -> Sequence[Mapping[str, str]]:
        return [rsa_like, broken, key.jwk]

    users.jwks = jwks  # type: ignore[method-assign]
    cache = JwksCache(users.jwks)
    strict = TokenVerifier(cache, TokenRules(ISSUER, AUDIENCE))
    assert await strict.subject(key.token("usr_alice")) == "usr_alice"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens PyJWT is asked to read, header or whole, from now on."""
    seen: list[str] = []
    read_header, decode = jwt.get_unverified_header, jwt.decode

    def counting_header(token: str) -> dict[str, object]:
        seen.append(token)
        return read_header(token)

    def counting_decode(token: str, *args: object, **kwargs: object) -> dict[str, object]:
        seen.append(token)
        return decode(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "get_unverified_header", counting_header)
    monkeypatch.setattr(jwt, "decode", counting_decode)
    return seen


def around(key: SigningKey, bound: int) -> tuple[str, str]:
    """The longest token `key` signs for usr_alice within `bound` characters, and the shortest beyond it (a
    filler claim makes them up; base64url never ends a part on some lengths, so each is within 2 of the bound)."""
    filler = max(0, (bound - len(key.token(filler=""))) * 3 // 4 - 4)
    within = key.token(filler="x" * filler)
    while len(beyond := key.token(filler="x" * (filler + 1))) <= bound:
        filler, within = filler + 1, beyond
    return within, beyond


async def test_a_token_over_the_length_bound_is_token_invalid_without_being_parsed(
    verifier: TokenVerifier, key: SigningKey, parses: list[str]
) -> None:
    """gRPC metadata takes 256 KiB; PyJWT read such a token whole (~40 ms of the event loop) before the
    address's rate limit could refuse it. Signed by a published key, it even verified."""
    within, beyond = around(key, MAX_TOKEN_CHARS)
    assert await verifier.subject(within) == "usr_alice", f"a token of {len(within)} characters verifies"
    parses.clear()
    assert await reason_of(verifier, beyond) == "TOKEN_INVALID"
    assert await reason_of(verifier, around(key, 200_000)[1]) == "TOKEN_INVALID"
    assert parses == []


class HangingUsers(FakeUsers):
    """GetJwks that, once `hang` is set, is in flight until the test sets `answer`."""

    def __init__(self, *keys: SigningKey) -> None:
        super().__init__(*keys)
        self.hang = False
        self.answer = asyncio.Event()
        self.hanging = asyncio.Event()

    async def jwks(self) -> Sequence[Mapping[str, str]]:
        if self.hang:
            self.fetches += 1
            self.hanging.set()
            await self.answer.wait()
            return [key.jwk for key in self.keys]
        return await super().jwks()


async def test_a_cached_kid_is_verified_while_a_refetch_due_to_age_hangs_and_not_once_it_answers(
    key: SigningKey, clock: FakeClock
) -> None:
    users = HangingUsers(key)
    verifier = TokenVerifier(
        JwksCache(users.jwks, max_age_seconds=300, min_refetch_interval_seconds=30, clock=clock),
        TokenRules(ISSUER, AUDIENCE),
    )
    await verifier.subject(key.token())
    users.hang, users.keys = True, [SigningKey()]  # revoke-keys, learnt by a refetch that hangs
    clock.now += 300
    for _ in range(3):
        # Bounds a hang only: the refetch is never answered while these wait.
        assert await asyncio.wait_for(verifier.subject(key.token("usr_alice")), timeout=30) == "usr_alice"
    assert users.fetches == 2, "one refetch at a time"
    users.answer.set()
    await asyncio.wait_for(_refused(verifier, key), timeout=30)


async def _refused(verifier: TokenVerifier, key: SigningKey) -> None:
    """Returns once a token of `key` is refused; the refetch's answer is a few loop turns away."""
    while True:
        try:
            await verifier.subject(key.token())
        except errors.Unauthenticated:
            return
        await asyncio.sleep(0)


async def test_an_unknown_kid_waits_for_the_refetch_it_needs_however_long_it_hangs(
    key: SigningKey, clock: FakeClock
) -> None:
    users = HangingUsers(key)
    verifier = TokenVerifier(JwksCache(users.jwks, clock=clock), TokenRules(ISSUER, AUDIENCE))
    await verifier.subject(key.token())
    rotated = SigningKey()
    users.hang, users.keys = True, [rotated, key]
    clock.now += 300  # past the max age too: the kid's being unknown decides
    verifying = asyncio.ensure_future(verifier.subject(rotated.token("usr_bob")))
    await asyncio.wait_for(users.hanging.wait(), timeout=30)
    # Well past STALE_KEYS_WAIT_SECONDS, on the wall clock that bound runs on: gave up after it, the call
    # would be answered TOKEN_INVALID now, its kid unknown to the keys cached.
    done, _ = await asyncio.wait((verifying,), timeout=10 * STALE_KEYS_WAIT_SECONDS)
    assert not done, "a call whose kid is unknown gave up on the refetch that could know its key"
    users.answer.set()
    assert await verifying == "usr_bob"


async def test_past_the_hard_max_age_tokens_are_unavailable_until_users_gives_a_key_set(
    key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    cache = JwksCache(
        users.jwks, max_age_seconds=300, min_refetch_interval_seconds=30, hard_max_age_seconds=900, clock=clock
    )
    verifier = TokenVerifier(cache, TokenRules(ISSUER, AUDIENCE))
    await verifier.subject(key.token())
    users.down = True
    clock.now += 899
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice", "stale keys serve up to the hard age"
    clock.now += 1
    for _ in range(2):
        with pytest.raises(errors.Unavailable):
            await verifier.subject(key.token("usr_alice"))
    users.down = False
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice", "recovers at users' first answer"


async def test_past_the_hard_max_age_refusing_every_token_is_logged_once_as_it_begins_and_once_as_it_ends(
    key: SigningKey, users: FakeUsers, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the hard age every signed-in call that finds no fetch running starts one: a warning per failed
    fetch was a warning per call through a users outage. One says the gateway refuses every token, one that
    it verifies again; another outage past the hard age is said again."""
    cache = JwksCache(
        users.jwks, max_age_seconds=300, min_refetch_interval_seconds=30, hard_max_age_seconds=900, clock=clock
    )
    verifier = TokenVerifier(cache, TokenRules(ISSUER, AUDIENCE))
    await verifier.subject(key.token())
    caplog.set_level(logging.INFO, logger="shopmesh.gateway.tokens")
    for _ in range(2):
        users.down = True
        clock.now += 900
        fetches = users.fetches
        for _ in range(5):
            with pytest.raises(errors.Unavailable):
                await verifier.subject(key.token("usr_alice"))
        assert users.fetches - fetches == 5, "each call past the hard age asks users (the breaker caps them)"
        users.down = False
        assert await verifier.subject(key.token("usr_alice")) == "usr_alice"
        await verifier.subject(key.token("usr_alice"))
    said = [record.getMessage() for record in caplog.records if "JWKS_HARD_MAX_AGE_SECONDS" in record.getMessage()]
    assert sum("refusing every token" in message for message in said) == 2, said
    assert (
        said
        == [
            "could not refetch the key set, past JWKS_HARD_MAX_AGE_SECONDS; refusing every token until a fetch "
            "succeeds",
            "refetched the key set past JWKS_HARD_MAX_AGE_SECONDS; verifying tokens again",
        ]
        * 2
    )


async def test_a_new_key_verifies_a_second_after_a_failed_refetch_once_users_answers_again(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    """users publishes a key ahead of signing with it; the refetch due to age that should have learnt it
    failed (a users replica restarting). Held to JWKS_MIN_REFETCH_INTERVAL_SECONDS, the unknown kid's refetch
    waited 30 s and every fresh login's token was refused TOKEN_INVALID meanwhile, users answering again."""
    await verifier.subject(key.token())
    clock.now = 1
    rotated = SigningKey()
    users.keys.insert(0, rotated)  # published now, signing from t=301
    clock.now = 300
    users.down = True
    assert await verifier.subject(key.token("usr_alice")) == "usr_alice", "the refetch due to age fails"
    users.down = False
    clock.now = 301
    assert await verifier.subject(rotated.token("usr_bob")) == "usr_bob"


async def test_after_a_failed_fetch_an_unknown_kid_waits_no_longer_than_the_configured_refetch_interval(
    users: FakeUsers, key: SigningKey, clock: FakeClock
) -> None:
    """JWKS_MIN_REFETCH_INTERVAL_SECONDS may be set below the second a failed fetch holds an unknown kid to
    (the e2e key-revocation test runs at 1 s): "sooner after a failure" must not become later than that."""
    verifier = TokenVerifier(
        JwksCache(users.jwks, max_age_seconds=300, min_refetch_interval_seconds=0.2, clock=clock),
        TokenRules(ISSUER, AUDIENCE),
    )
    await verifier.subject(key.token())
    rotated = SigningKey()
    users.keys.insert(0, rotated)
    clock.now = 300
    users.down = True
    await verifier.subject(key.token("usr_alice"))  # the refetch due to age fails
    users.down = False
    clock.now += 0.5
    assert await verifier.subject(rotated.token("usr_bob")) == "usr_bob"


async def test_an_unknown_kid_is_unavailable_while_the_key_set_cannot_be_fetched_and_asks_users_once_a_second(
    verifier: TokenVerifier, key: SigningKey, users: FakeUsers, clock: FakeClock
) -> None:
    """After a failed fetch the gateway cannot know whether an unknown kid is users' newest key: it answers
    UNAVAILABLE with a retry hint, not TOKEN_INVALID, which would send a shopper back to log in. A flood of
    unknown kids meanwhile costs users one fetch per FAILED_FETCH_BACKOFF_SECONDS, not one per token."""
    await verifier.subject(key.token())
    users.down = True
    clock.now = 300
    await verifier.subject(key.token())  # the refetch due to age fails
    fetches = users.fetches
    for _ in range(5):
        with pytest.raises(errors.Unavailable) as caught:
            await verifier.subject(SigningKey().token())
        assert caught.value.retry_after_seconds == pytest.approx(FAILED_FETCH_BACKOFF_SECONDS)
    assert users.fetches == fetches, "no fetch within the backoff"
    clock.now += FAILED_FETCH_BACKOFF_SECONDS / 2
    with pytest.raises(errors.Unavailable) as caught:
        await verifier.subject(SigningKey().token())
    assert caught.value.retry_after_seconds == pytest.approx(FAILED_FETCH_BACKOFF_SECONDS / 2)
    clock.now += FAILED_FETCH_BACKOFF_SECONDS / 2
    with pytest.raises(errors.Unavailable):
        await verifier.subject(SigningKey().token())
    assert users.fetches == fetches + 1, "one more fetch once the backoff is over, which fails too"
    users.down = False
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert await reason_of(verifier, SigningKey().token()) == "TOKEN_INVALID", "users answered: truly unknown"
    for _ in range(5):
        clock.now += FAILED_FETCH_BACKOFF_SECONDS
        assert await reason_of(verifier, SigningKey().token()) == "TOKEN_INVALID"
    assert users.fetches == fetches + 2, "once a fetch succeeds, unknown kids wait the 30 s interval again"
