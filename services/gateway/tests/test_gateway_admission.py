"""The guard's pieces (bearer header, client address, acting for a user, rate limit) and the outbound
timeouts' bounds, without a server. How internal services' failures are relayed is the chassis' rule
(grpc_errors.relayed, libs/chassis/tests/test_relaying.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh.users.v1 import users_pb2
from shopmesh_chassis import call_context, errors
from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_chassis.server import MAX_METADATA_BYTES
from shopmesh_chassis.token_buckets import TokenBuckets
from shopmesh_gateway import guard as guard_module
from shopmesh_gateway.guard import (
    MAX_FORWARDED_HOPS,
    UNIX_PEERS,
    Guard,
    TrustedProxy,
    acting_for,
    address_buckets,
    bearer_token,
    client_address,
    is_trusted_proxy,
)
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.tokens import JwksCache, TokenRules, TokenVerifier
from shopmesh_gateway.transport import ShopServicer

from .gateway_keys import AUDIENCE, ISSUER, SigningKey


@dataclass
class FakeContext:
    metadata: list[tuple[str, str]] = field(default_factory=list)
    peer_address: str = "ipv4:10.1.2.3:40000"

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def peer(self) -> str:
        return self.peer_address

    def time_remaining(self) -> float | None:
        return 5.0


def test_the_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer_token(FakeContext([("authorization", "Bearer abc.def.ghi")])) == "abc.def.ghi"
    assert bearer_token(FakeContext([("authorization", "bearer  abc ")])) == "abc"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "TOKEN_MISSING"),
        ([("authorization", "  ")], "TOKEN_MISSING"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "TOKEN_INVALID"),
        ([("authorization", "Bearer")], "TOKEN_INVALID"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "TOKEN_INVALID"),
        ([("authorization", ""), ("authorization", "Bearer b")], "TOKEN_INVALID"),
        ([("authorization", " "), ("authorization", " ")], "TOKEN_INVALID"),
    ],
    ids=["absent", "blank", "other-scheme", "no-token", "two-headers", "two-headers-first-empty", "two-blank-headers"],
)
def test_a_missing_or_malformed_authorization_header_is_unauthenticated(
    metadata: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        bearer_token(FakeContext(metadata))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_the_client_address_is_the_peer_ip_without_the_port(peer: str, address: str) -> None:
    assert client_address(peer) == address


@pytest.mark.parametrize(
    ("address", "bucket", "site"),
    [
        ("203.0.113.9", "203.0.113.9", None),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64", "2001:db8:1::/48"),
        ("::ffff:203.0.113.9", "203.0.113.9", None),
        ("unix:/tmp/sock", "unix:/tmp/sock", None),
    ],
)
def test_an_ipv6_client_is_limited_by_its_64_not_by_each_address_it_can_pick(
    address: str, bucket: str, site: str | None
) -> None:
    assert address_buckets(address) == (bucket, site)


SIDECAR = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
INGRESS = [*SIDECAR, ipaddress.ip_network("10.244.0.0/16")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "address"),
    [
        # No trusted proxies: the header is the client's word and ignored.
        ("ipv4:203.0.113.9:5000", ["198.51.100.1"], [], "203.0.113.9"),
        ("ipv4:127.0.0.1:5000", ["198.51.100.1"], [], "127.0.0.1"),
        # Behind a sidecar: the address the proxy chain vouches for.
        ("ipv4:127.0.0.6:5000", ["198.51.100.1"], SIDECAR, "198.51.100.1"),
        ("ipv6:[::1]:5000", ["2001:db8::7"], SIDECAR, "2001:db8::7"),
        # Spoofed entries left of the one a trusted proxy appended are never believed.
        ("ipv4:127.0.0.6:5000", ["6.6.6.6, 198.51.100.1"], SIDECAR, "198.51.100.1"),
        ("ipv4:127.0.0.6:5000", ["6.6.6.6", "198.51.100.1"], SIDECAR, "198.51.100.1"),
        # Sidecar, then an ingress pod (trusted) that appended the real client.
        ("ipv4:127.0.0.6:5000", ["6.6.6.6, 198.51.100.1, 10.244.1.5"], INGRESS, "198.51.100.1"),
        # Ports and brackets as some proxies write them.
        ("ipv4:127.0.0.6:5000", ["198.51.100.1:4711"], SIDECAR, "198.51.100.1"),
        ("ipv4:127.0.0.6:5000", ["[2001:db8::7]:4711"], SIDECAR, "2001:db8::7"),
        # A direct client is believed as it is, whatever it sends.
        ("ipv4:203.0.113.9:5000", ["198.51.100.1"], SIDECAR, "203.0.113.9"),
        # Nothing forwarded, or garbage: the last address we can stand behind.
        ("ipv4:127.0.0.6:5000", [], SIDECAR, "127.0.0.6"),
        ("ipv4:127.0.0.6:5000", ["not-an-address"], SIDECAR, "127.0.0.6"),
        ("ipv4:127.0.0.6:5000", ["10.244.1.5"], INGRESS, "10.244.1.5"),
        # IPv4 written IPv4-mapped, by a dual-stack socket or a proxy: the same address, trusted alike.
        ("ipv6:[::ffff:127.0.0.6]:5000", ["198.51.100.1"], SIDECAR, "198.51.100.1"),
        ("ipv4:127.0.0.6:5000", ["198.51.100.1, ::ffff:10.244.1.5"], INGRESS, "198.51.100.1"),
        ("ipv4:127.0.0.6:5000", ["::ffff:198.51.100.1"], SIDECAR, "198.51.100.1"),
        # On a Unix socket (`make run MESH=envoy`: the sidecar is the socket's only peer): vouched for by
        # `unix` alone, never by a network; what it vouches for is walked as from any trusted proxy.
        ("unix:", ["6.6.6.6, 198.51.100.1"], [UNIX_PEERS], "198.51.100.1"),
        ("unix:", ["198.51.100.1, 127.0.0.1"], [*SIDECAR, UNIX_PEERS], "198.51.100.1"),
        ("unix:", [], [UNIX_PEERS], "unix:"),
        ("unix:", ["not-an-address"], [UNIX_PEERS], "unix:"),
        ("unix:", ["198.51.100.1"], SIDECAR, "unix:"),
        ("unix:", ["198.51.100.1"], [], "unix:"),
        # `unix` trusts no IP peer.
        ("ipv4:127.0.0.6:5000", ["198.51.100.1"], [UNIX_PEERS], "127.0.0.6"),
    ],
)
def test_the_client_address_is_the_first_one_no_trusted_proxy_vouches_for(
    peer: str, forwarded: list[str], trusted: list[TrustedProxy], address: str
) -> None:
    assert client_address(peer, forwarded, trusted) == address


async def test_clients_behind_a_trusted_sidecar_get_a_bucket_each() -> None:
    verifier = TokenVerifier(JwksCache(StaticKeys(SigningKey()).jwks), TokenRules(ISSUER, AUDIENCE))
    guard = Guard(
        verifier,
        TokenBuckets(rate=0.001, burst=1, max_keys=100),
        SIDECAR,
        password_buckets=unlimited(),
        password_site_buckets=unlimited(),
    )
    via_sidecar = "ipv4:127.0.0.6:5000"
    guard.admit_anonymous(FakeContext([("x-forwarded-for", "198.51.100.1")], via_sidecar))
    guard.admit_anonymous(FakeContext([("x-forwarded-for", "198.51.100.2")], via_sidecar))
    with pytest.raises(errors.ResourceExhausted):
        # The same client again, whatever it puts left of what the sidecar vouches for.
        guard.admit_anonymous(FakeContext([("x-forwarded-for", "1.1.1.1, 198.51.100.1")], via_sidecar))


@pytest.mark.parametrize("hop", ["::1", "127.0.0.1"])
def test_a_long_forwarded_for_header_is_walked_no_further_than_a_proxy_chain_can_be(
    hop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a trusted sidecar with no ingress in front (docs/kubernetes.md), X-Forwarded-For is the client's
    to write, up to the metadata the server takes (256 KiB; 60 KiB through the HTTP edge). Admission walks
    it on the event loop before any rate limit: parsing every entry that looks like a trusted proxy, one
    request of "::1,::1,..." held the gateway (and every other client's call) for half a second of CPU. The
    walk reads MAX_FORWARDED_HOPS entries at most, and the client who wrote the rest gets the bucket of the
    trusted address where it stopped, not one of its choosing."""
    parsed: list[str] = []
    parse = guard_module._forwarded_ip

    def counting(entry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        parsed.append(entry)
        return parse(entry)

    monkeypatch.setattr(guard_module, "_forwarded_ip", counting)
    forwarded = "203.0.113.9," + ",".join([hop] * ((MAX_METADATA_BYTES - 1024) // (len(hop) + 1)))
    assert client_address("ipv4:127.0.0.6:5000", [forwarded], SIDECAR) == hop
    assert len(parsed) == MAX_FORWARDED_HOPS
    # Split over several headers, the entries are read from the last header leftwards all the same.
    parsed.clear()
    assert client_address("ipv4:127.0.0.6:5000", ["198.51.100.7", ",".join([hop] * 3), hop], SIDECAR) == (
        "198.51.100.7"
    )
    assert parsed == [hop] * 4 + ["198.51.100.7"]


def test_trusted_proxies_are_read_as_networks_and_a_bad_one_stops_startup() -> None:
    settings = load_settings(GatewaySettings, trusted_proxies="127.0.0.0/8, ::1/128,10.0.0.7")
    assert [str(n) for n in settings.trusted_proxy_networks] == ["127.0.0.0/8", "::1/128", "10.0.0.7/32"]
    # Parsed once, not on each call the gateway asks whether its peer is a trusted proxy.
    assert settings.trusted_proxy_networks is settings.trusted_proxy_networks
    # Unlike an internal service's server, the gateway's asks them whose "sampled" to follow.
    assert settings.trace_decision_callback() == settings.follows_trace_decision_of
    assert load_settings(GatewaySettings).trusted_proxy_networks == ()
    with pytest.raises(ConfigError) as caught:
        load_settings(GatewaySettings, trusted_proxies="127.0.0.0/8,localhost")
    assert "TRUSTED_PROXIES=" in str(caught.value)
    assert "'localhost' is not a network (e.g. 127.0.0.0/8, ::1/128, 10.0.0.7) nor 'unix'" in str(caught.value)


@pytest.mark.parametrize(
    ("trusted_proxies", "peer", "follows"),
    [
        ("unix", "unix:", True),
        ("unix", "ipv4:127.0.0.1:5000", False),
        ("127.0.0.0/8", "unix:", False),
        ("", "unix:", False),
        ("127.0.0.0/8, unix", "ipv4:127.0.0.1:5000", True),
    ],
)
def test_a_peer_on_a_unix_socket_is_a_trusted_proxy_only_when_trusted_proxies_lists_unix(
    trusted_proxies: str, peer: str, follows: bool
) -> None:
    """Under `make run MESH=envoy` the gateway listens on a Unix socket that only its sidecar reaches: trusted
    as `unix`, the sidecar's decision on a trace is followed (else every traced call was drawn again at the
    ratio, and most left only the edge's span), and the clients it vouches for get a bucket each."""
    settings = load_settings(GatewaySettings, trusted_proxies=trusted_proxies)
    assert settings.follows_trace_decision_of(peer) is follows
    assert is_trusted_proxy(peer, settings.trusted_proxy_networks) is follows


def test_acting_for_replaces_a_client_sent_user_id_and_caller() -> None:
    spoofing = FakeContext([("x-user-id", "usr_victim"), ("x-caller", "orders"), ("traceparent", "00-ab-cd-01")])
    with acting_for(spoofing, "usr_alice"):
        current = call_context.current()
        assert current is not None
        assert (current.user_id, current.caller) == ("usr_alice", None)
    with acting_for(spoofing, None):
        current = call_context.current()
        assert current is not None
        assert current.user_id is None
    assert call_context.current() is None


class StaticKeys:
    def __init__(self, key: SigningKey) -> None:
        self._key = key

    async def jwks(self) -> Sequence[Mapping[str, str]]:
        return [self._key.jwk]


def unlimited() -> TokenBuckets:
    return TokenBuckets(rate=1e9, burst=10**9, max_keys=100)


def guard_with(key: SigningKey, burst: int, password_burst: int = 1) -> Guard:
    verifier = TokenVerifier(JwksCache(StaticKeys(key).jwks), TokenRules(ISSUER, AUDIENCE))
    # A stopped clock: no bucket refills between a test's calls, however slowly a loaded machine runs them
    # (the retry hint of an empty bucket is then exactly 1 / rate).
    return Guard(
        verifier,
        TokenBuckets(rate=0.001, burst=burst, max_keys=100, clock=lambda: 0.0),
        password_buckets=TokenBuckets(rate=0.001, burst=password_burst, max_keys=100, clock=lambda: 0.0),
        password_site_buckets=unlimited(),
    )


async def test_users_are_limited_by_their_id_and_anonymous_callers_by_their_address() -> None:
    key = SigningKey()
    guard = guard_with(key, burst=1)
    alice = FakeContext([("authorization", f"Bearer {key.token('usr_alice')}")])
    assert await guard.admit_user(alice) == "usr_alice"
    with pytest.raises(errors.ResourceExhausted) as caught:
        await guard.admit_user(FakeContext(alice.metadata, peer_address="ipv4:10.9.9.9:1"))
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after_seconds == pytest.approx(1000.0)
    guard.admit_anonymous(FakeContext())
    with pytest.raises(errors.ResourceExhausted):
        guard.admit_anonymous(FakeContext(peer_address="ipv4:10.1.2.3:40001"))


async def test_password_hashing_calls_take_a_far_smaller_bucket_of_the_address_besides_the_ordinary_one() -> None:
    """users hashes a few passwords at a time behind a short queue that every client shares: limited by the
    ordinary bucket alone, one address filled it and everybody else's login was refused
    PASSWORD_HASHING_BUSY."""
    guard = guard_with(SigningKey(), burst=5, password_burst=2)
    mallory, ada = FakeContext(), FakeContext(peer_address="ipv4:10.7.7.7:40001")
    guard.admit_password_hashing(mallory)
    guard.admit_password_hashing(mallory)
    with pytest.raises(errors.ResourceExhausted) as caught:
        guard.admit_password_hashing(mallory)
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after_seconds == pytest.approx(1000.0)
    guard.admit_password_hashing(ada)
    # Each hashing call, the refused one too, was also an ordinary call of the address: 3 of its 5.
    guard.admit_anonymous(mallory)
    guard.admit_anonymous(mallory)
    with pytest.raises(errors.ResourceExhausted):
        guard.admit_anonymous(mallory)


async def test_failed_authentications_count_against_the_address() -> None:
    guard = guard_with(SigningKey(), burst=2)
    with pytest.raises(errors.Unauthenticated):
        await guard.admit_user(FakeContext([("authorization", "Bearer forged")]))
    with pytest.raises(errors.Unauthenticated):
        await guard.admit_user(FakeContext())
    with pytest.raises(errors.ResourceExhausted):
        await guard.admit_user(FakeContext([("authorization", "Bearer forged")]))


async def test_calls_whose_token_cannot_be_checked_yet_count_against_the_address() -> None:
    """The gateway started while users was unreachable: no key set yet, so every protected call fetches it
    (JwksCache skips the 30 s minimum interval until a first set arrives) and fails UNAVAILABLE. Such
    calls were not rate-limited at all (neither the user's bucket, unknown, nor the address's), so one
    client could send protected calls, and with them key-set fetches, as fast as it liked."""
    fetches = 0

    async def users_down() -> Sequence[Mapping[str, str]]:
        nonlocal fetches
        fetches += 1
        raise errors.Unavailable("users is down")

    verifier = TokenVerifier(JwksCache(users_down), TokenRules(ISSUER, AUDIENCE))
    guard = Guard(
        verifier,
        TokenBuckets(rate=0.001, burst=2, max_keys=100),
        password_buckets=unlimited(),
        password_site_buckets=unlimited(),
    )
    forged = FakeContext([("authorization", f"Bearer {SigningKey().token('usr_mallory')}")])
    outcomes = []
    for _ in range(10):
        try:
            await guard.admit_user(forged)
        except errors.DomainError as error:
            outcomes.append(type(error).__name__)
    assert "ResourceExhausted" in outcomes, f"10 calls from one address, burst 2: {outcomes}, {fetches} fetches"


@pytest.mark.parametrize(
    "variable",
    [
        "catalog_timeout_seconds",
        "inventory_timeout_seconds",
        "recommendations_timeout_seconds",
        "users_timeout_seconds",
        "orders_timeout_seconds",
        "orders_read_timeout_seconds",
        "orders_cancel_timeout_seconds",
        "notifications_timeout_seconds",
    ],
)
@pytest.mark.parametrize("value", [float("inf"), 1e10])
def test_an_outbound_timeout_no_call_can_have_is_refused_at_startup(variable: str, value: float) -> None:
    """Review finding: CLIENT_DEFAULT_TIMEOUT_SECONDS was bounded (inf / 1e10 made every outbound call fail at
    once with DEADLINE_EXCEEDED), but the gateway's per-dependency timeouts, passed as `timeout=` to the same
    kind of call, still take inf and 1e10: gRPC then answers DEADLINE_EXCEEDED at once on every call."""
    with pytest.raises(ConfigError, match=variable.upper()):
        load_settings(GatewaySettings, **{variable: value})


@pytest.mark.parametrize(
    "variable", ["rate_limit_per_second", "password_rate_limit_per_second", "password_site_rate_limit_per_second"]
)
@pytest.mark.parametrize("value", ["1e-300", "0", "inf", "nan", "1e300"])
def test_a_rate_no_bucket_can_refill_at_is_refused_at_startup(variable: str, value: str) -> None:
    """Audit finding: RATE_LIMIT_PER_SECOND=1e-300 was taken, and every call it then limited was INTERNAL (its
    RetryInfo, 1e300 s, no Duration can hold)."""
    with pytest.raises(ConfigError, match=f"^invalid configuration: {variable.upper()}="):
        load_settings(GatewaySettings, **{variable: value})


# users' places for a password hash: PASSWORD_HASH_CONCURRENCY (2) running + PASSWORD_HASH_QUEUE (32) waiting,
# shared by every shopper (docs/auth.md, "Login throttling").
USERS_HASHING_PLACES = 34


def guard_of_default_limits() -> Guard:
    """A Guard with the gateway's default buckets, on a stopped clock: nothing refills between the calls."""
    settings = GatewaySettings()

    def buckets(rate: float, burst: int) -> TokenBuckets[str]:
        return TokenBuckets(rate, burst, settings.rate_limit_max_clients, clock=lambda: 0.0)

    return Guard(
        TokenVerifier(JwksCache(StaticKeys(SigningKey()).jwks), TokenRules(ISSUER, AUDIENCE)),
        buckets(settings.rate_limit_per_second, settings.rate_limit_burst),
        password_buckets=buckets(settings.password_rate_limit_per_second, settings.password_rate_limit_burst),
        password_site_buckets=buckets(
            settings.password_site_rate_limit_per_second, settings.password_site_rate_limit_burst
        ),
    )


def hashing_calls_admitted(guard: Guard, peers: Sequence[str], each: int) -> int:
    admitted, refusals = 0, set()
    for peer in peers:
        for _ in range(each):
            try:
                guard.admit_password_hashing(FakeContext(peer_address=peer))
            except errors.ResourceExhausted as refused:
                refusals.add(refused.reason)
            else:
                admitted += 1
    assert refusals <= {"RATE_LIMITED"}
    return admitted


def test_one_ipv6_site_cannot_take_most_of_users_hashing_places_with_the_64s_of_its_56() -> None:
    """Tunnel brokers give a /48 free and ISPs a /56: a password bucket per /64 alone gave one customer 256
    (or 65,536) buckets of 5 hashing calls each, enough to fill users' 34 places, and every other shopper's
    Login and Register failed PASSWORD_HASHING_BUSY."""
    guard = guard_of_default_limits()
    site = ipaddress.ip_network("2001:db8:abcd:ef00::/56")
    peers = [f"ipv6:[{subnet[1]}]:40000" for subnet in site.subnets(new_prefix=64)]
    admitted = hashing_calls_admitted(guard, peers, each=6)
    assert 0 < admitted < USERS_HASHING_PLACES / 2, f"{admitted} hashing calls of one /48 admitted at once"
    assert hashing_calls_admitted(guard, ["ipv6:[2001:db8:abce::1]:40000"], each=1) == 1, "another /48 is not"


def test_an_ipv6_64_keeps_its_own_password_bucket_within_its_48() -> None:
    guard = guard_of_default_limits()
    burst = GatewaySettings().password_rate_limit_burst
    assert hashing_calls_admitted(guard, ["ipv6:[2001:db8:1:2::1]:40000", "ipv6:[2001:db8:1:2::2]:1"], 4) == burst


def test_ipv4_addresses_keep_a_password_bucket_each_with_no_wider_one() -> None:
    """IPv4 addresses are scarce and shared (NAT): neighbours in a /24 are other customers."""
    guard = guard_of_default_limits()
    burst = GatewaySettings().password_rate_limit_burst
    peers = [f"ipv4:10.1.2.{host}:40000" for host in range(1, 21)]
    assert hashing_calls_admitted(guard, peers, each=burst + 1) == 20 * burst


def test_a_64_refused_by_its_full_48_keeps_its_own_password_tokens() -> None:
    """Both buckets must admit; a /64 whose calls the /48 refuses has not had users hash anything, so those
    calls do not spend the /64's own tokens (a neighbour filling the /48 would otherwise drain them too)."""
    site_clock = [0.0]
    guard = Guard(
        TokenVerifier(JwksCache(StaticKeys(SigningKey()).jwks), TokenRules(ISSUER, AUDIENCE)),
        unlimited(),
        password_buckets=TokenBuckets(rate=0.001, burst=2, max_keys=100, clock=lambda: 0.0),
        password_site_buckets=TokenBuckets(rate=1.0, burst=1, max_keys=100, clock=lambda: site_clock[0]),
    )
    neighbour, mine = "ipv6:[2001:db8:7:1::1]:1", "ipv6:[2001:db8:7:2::1]:1"
    assert hashing_calls_admitted(guard, [neighbour], each=1) == 1
    assert hashing_calls_admitted(guard, [mine], each=3) == 0, "the /48 is full"
    for _ in range(2):
        site_clock[0] += 1.0
        assert hashing_calls_admitted(guard, [mine], each=1) == 1, "the /64's two tokens are still there"
    site_clock[0] += 1.0
    assert hashing_calls_admitted(guard, [mine], each=1) == 0, "and now spent"


class CountingUsers:
    """Stands in for the users client: every login reaching it is wrong, and counted."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    async def login(self, request: users_pb2.LoginRequest) -> users_pb2.LoginResponse:
        self.logins.append(request.password)
        raise errors.Unauthenticated("invalid e-mail or password", reason="INVALID_CREDENTIALS")


async def logins_reaching_users(peers: Sequence[str], password: str, each: int) -> int:
    """How many of `each` logins from every one of `peers`, all at once, the gateway's default limits let
    through to users."""
    users = CountingUsers()
    nothing = cast(Any, None)  # Login calls users only
    servicer = ShopServicer(
        guard_of_default_limits(),
        users=cast(Any, users),
        catalog=nothing,
        orders=nothing,
        notifications=nothing,
        product_pages=nothing,
        checkout=nothing,
    )
    for peer in peers:
        for i in range(each):
            request = shop_pb2.LoginRequest(email=f"guess-{i}@example.com", password=password)
            with pytest.raises((errors.Unauthenticated, errors.ResourceExhausted)) as refused:
                await servicer.Login(request, FakeContext(peer_address=peer))
            assert refused.value.reason in ("INVALID_CREDENTIALS", "RATE_LIMITED")
    return len(users.logins)


# NFKC changes it (U+FF50, a full-width p): users checks it normalized and as sent, two argon2 checks a login.
CHECKED_TWICE = "\uff50assword-guess"


async def test_an_address_gets_half_as_many_logins_users_checks_twice_as_plain_ones() -> None:
    """users checks a password that NFKC changes twice, for an unknown e-mail too (so that both take as long).
    Counted as one hash a login, one full-width letter gave each address twice the hashing its password bucket
    allows: four IPv4 addresses, not eight, kept users' hashing full."""
    burst = GatewaySettings().password_rate_limit_burst
    address = ["ipv4:203.0.113.9:40000"]
    assert await logins_reaching_users(address, "password-guess", each=2 * burst) == burst
    assert await logins_reaching_users(address, CHECKED_TWICE, each=2 * burst) == burst // 2


async def test_an_ipv6_site_gets_half_as_many_logins_users_checks_twice_as_plain_ones() -> None:
    """The /48's bucket is charged per hash too: one /48 held half of users' hashing, not a quarter."""
    site = ipaddress.ip_network("2001:db8:abcd:ef00::/56")
    peers = [f"ipv6:[{subnet[1]}]:40000" for subnet in site.subnets(new_prefix=64)][:16]
    plain = await logins_reaching_users(peers, "password-guess", each=2)
    assert plain == GatewaySettings().password_site_rate_limit_burst
    assert await logins_reaching_users(peers, CHECKED_TWICE, each=2) == plain // 2


async def test_a_64_refused_by_its_full_48_gets_back_every_token_of_a_login_checked_twice() -> None:
    site_clock = [0.0]
    guard = Guard(
        TokenVerifier(JwksCache(StaticKeys(SigningKey()).jwks), TokenRules(ISSUER, AUDIENCE)),
        unlimited(),
        password_buckets=TokenBuckets(rate=0.001, burst=4, max_keys=100, clock=lambda: 0.0),
        password_site_buckets=TokenBuckets(rate=1.0, burst=2, max_keys=100, clock=lambda: site_clock[0]),
    )
    neighbour, mine = (
        FakeContext(peer_address="ipv6:[2001:db8:7:1::1]:1"),
        FakeContext(peer_address="ipv6:[2001:db8:7:2::1]:1"),
    )
    guard.admit_password_hashing(neighbour, hashes=2)
    with pytest.raises(errors.ResourceExhausted):
        guard.admit_password_hashing(mine, hashes=2)
    for _ in range(2):
        site_clock[0] += 2.0
        guard.admit_password_hashing(mine, hashes=2)  # the /64's four tokens are all still there
    site_clock[0] += 2.0
    with pytest.raises(errors.ResourceExhausted):
        guard.admit_password_hashing(mine, hashes=1)
