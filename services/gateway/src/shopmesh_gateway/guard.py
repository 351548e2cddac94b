"""The gateway's admission of each call: whether its deadline leaves time to answer, who the caller is,
whether it may call now, and for whom the internal calls it makes are made.

`public`, `hashes_password` and `protected` decorate the ShopService methods. All first refuse a call whose
deadline is shorter than the gateway's floor (`Guard.admit_deadline`), then rate-limit per client;
`hashes_password` (Register, Login) also takes from the address's far smaller password bucket, a token per
password hash the call will cost users, and
`protected` first verifies the bearer token and hands the handler the token's subject. All replace the
inbound call context the chassis made from the client's metadata: a client-sent `x-user-id` must never be
what the chassis' client interceptor forwards to internal services.

Decorators rather than a server interceptor: the chassis' interceptor is the innermost one and maps
domain errors to statuses, so an interceptor outside it could not answer with a domain error, and
`app.serve` takes no extra interceptors.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from shopmesh.common.v1 import access_pb2
from shopmesh_chassis import call_context, errors
from shopmesh_chassis.server_interceptor import DEADLINE_SKEW_TOLERANCE_SECONDS
from shopmesh_chassis.token_buckets import TokenBuckets
from shopmesh_gateway.sign_outs import TokenCutoffs
from shopmesh_gateway.tokens import TOKEN_INVALID, TOKEN_MISSING, TokenVerifier

AUTHORIZATION = "authorization"
FORWARDED_FOR = "x-forwarded-for"
RATE_LIMITED = "RATE_LIMITED"
# The reason (ErrorInfo and field violation) of the refusal of a call whose deadline is below the floor, and
# the violation's field: the gRPC header that carries the deadline.
DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
DEADLINE_FIELD = "grpc-timeout"
_BEARER = "bearer"

Context = Any  # grpc.aio.ServicerContext; its stubs are generic in ways the servicer base class is not
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


def _metadata_values(context: Context, key: str) -> list[str]:
    values = []
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            values.append(value if isinstance(value, str) else bytes(value).decode(errors="replace"))
    return values


def bearer_token(context: Context) -> str:
    """The token of the `authorization: Bearer <token>` header; UNAUTHENTICATED when there is none."""
    values = _metadata_values(context, AUTHORIZATION)
    # The count first: two headers are refused whatever the first holds, an empty one among them too.
    if len(values) > 1:
        raise errors.Unauthenticated("send one authorization header", reason=TOKEN_INVALID)
    if not values or not values[0].strip():
        raise errors.Unauthenticated("this method needs an authorization: Bearer <token> header", reason=TOKEN_MISSING)
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != _BEARER or not token.strip():
        raise errors.Unauthenticated("the authorization header must be: Bearer <token>", reason=TOKEN_INVALID)
    return token.strip()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# In TRUSTED_PROXIES: any peer on a Unix socket. Under `make run MESH=envoy` the gateway listens on one
# (GRPC_UNIX_SOCKET) in a folder only the stack's user can open, and its sidecar is the only peer there; such
# a peer has no IP address to match a network.
UNIX_PEERS = "unix"
TrustedProxy = Network | str


def peer_address(peer: str) -> str:
    """The IP address of a gRPC peer string ("ipv4:10.0.0.7:50412", "ipv6:[::1]:50412"), or the whole
    string for other transports."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def _forwarded_ip(entry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry as an address: `203.0.113.9`, `2001:db8::1`, `[2001:db8::1]:443`,
    `203.0.113.9:443`; None when it is none of these."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        return ipaddress.ip_address(entry)
    except ValueError:
        return None


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.7, as a dual-stack socket or proxy may write an IPv4 one) as
    its IPv4 address, so that IPv4 TRUSTED_PROXIES networks match it."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a gRPC peer (an IPv4-mapped one as IPv4), None for another transport (a unix socket)."""
    try:
        return _unmapped(ipaddress.ip_address(peer_address(peer)))
    except ValueError:
        return None


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted_proxies: Sequence[TrustedProxy]) -> bool:
    return any(ip in network for network in trusted_proxies if not isinstance(network, str))


def _trusted_peer(
    peer: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, trusted_proxies: Sequence[TrustedProxy]
) -> bool:
    if ip is None:
        # Another transport: a Unix socket's peer when UNIX_PEERS says so, else nobody to trust.
        return UNIX_PEERS in trusted_proxies and urllib.parse.unquote(peer).startswith("unix:")
    return _trusted(ip, trusted_proxies)


def is_trusted_proxy(peer: str, trusted_proxies: Sequence[TrustedProxy]) -> bool:
    """Whether the gRPC peer is one of the proxies in front of the gateway: by its IP address, or on a Unix
    socket when TRUSTED_PROXIES lists `unix` (never another non-IP transport)."""
    return _trusted_peer(peer, _peer_ip(peer), trusted_proxies)


# Proxies in front of the gateway, at most: more entries than this are never read. The header is the client's
# to fill (256 KiB of metadata over gRPC), and every entry walked is parsed on the event loop before the
# rate limit applies: unbounded, one request of `::1,::1,...` held the loop for half a second of CPU. A
# walk that ends on a trusted proxy after this many hops takes that proxy's address as the client's.
MAX_FORWARDED_HOPS = 16


def _last_entries(values: Sequence[str], count: int) -> list[str]:
    """The last `count` comma-separated entries of the X-Forwarded-For values, in order; what lies further
    left is not split, let alone parsed."""
    entries: list[str] = []
    for value in reversed(values):
        wanted = count - len(entries)
        if wanted <= 0:
            break
        entries[:0] = value.rsplit(",", wanted)[-wanted:]
    return entries


def client_address(peer: str, forwarded_for: Sequence[str] = (), trusted_proxies: Sequence[TrustedProxy] = ()) -> str:
    """Who the client is, for rate limiting: the peer's address, unless the peer is a trusted proxy.

    Behind a sidecar or an ingress every call comes from the proxy, and limiting per peer would put all
    clients in one bucket. So, as RFC 7239 advises, X-Forwarded-For is walked from the right, past each
    trusted proxy, to the first address no trusted proxy vouches for. Entries further left are whatever
    the client wrote and are never believed; without trusted proxies the header is ignored entirely."""
    ip = _peer_ip(peer)
    trusted = _trusted_peer(peer, ip, trusted_proxies)
    if ip is None and not trusted:
        return peer_address(peer)  # not an IP transport, and not a trusted socket: nobody to trust
    hops = _last_entries(forwarded_for, MAX_FORWARDED_HOPS)
    while hops and trusted:
        forwarded = _forwarded_ip(hops.pop())
        if forwarded is None:
            break  # a malformed entry: stop at the last proxy we trust rather than guess
        ip = _unmapped(forwarded)
        trusted = _trusted(ip, trusted_proxies)
    # A trusted socket that vouched for nobody (no header, or a malformed one): the socket's peer it is.
    return peer_address(peer) if ip is None else str(ip)


# One IPv6 subscriber gets a /64 at least (RFC 6177) and may use any address in it.
IPV6_CLIENT_PREFIX = 64
# And often far more: ISPs hand out /56s, tunnel brokers a /48 free, every /64 of it the customer's to pick. The
# password-hashing admission limits a /48 as a whole too, besides each /64 (Guard.admit_password_hashing).
IPV6_SITE_PREFIX = 48


def address_buckets(address: str) -> tuple[str, str | None]:
    """The rate-limit buckets of a client address: its own, the address itself but for IPv6 its /64, since a
    client holding a /64 would otherwise have 2^64 buckets to itself (an IPv4-mapped address is its IPv4 one);
    and its IPv6 /48, None for IPv4 and other transports, whose addresses are scarce and shared: neighbours
    are other customers, not one with many."""
    try:
        ip = _unmapped(ipaddress.ip_address(address))
    except ValueError:
        return address, None
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), None
    return _network(ip, IPV6_CLIENT_PREFIX), _network(ip, IPV6_SITE_PREFIX)


def _network(ip: ipaddress.IPv6Address, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# chassis-candidate: the chassis' server interceptor takes `x-user-id` from any caller, which is right
# behind the mesh and wrong at the edge; an edge service needs a supported way to say whom it acts for.
@contextlib.contextmanager
def acting_for(context: Context, user_id: str | None) -> Iterator[None]:
    """The chassis' inbound call context made anew from the verified user id alone (and the deadline):
    nothing the client sent as `x-user-id` or `x-caller` is what internal calls then carry."""
    asserted = [] if user_id is None else [(call_context.USER_ID, user_id)]
    token = call_context.enter(context.time_remaining(), asserted)
    try:
        yield
    finally:
        call_context.leave(token)


def deadline_floor(latency_threshold_seconds: float) -> float:
    """The shortest deadline the gateway admits for a latency threshold (MIN_CLIENT_DEADLINE_SECONDS, the
    latency SLO's): the threshold plus the chassis' DEADLINE_SKEW_TOLERANCE_SECONDS; 0 (no threshold): no floor.

    Not the threshold alone: every service's chassis counts a caller's own cancel that leaves it at most the
    tolerance of its deadline as DEADLINE_EXCEEDED (`cancelled_call_code`), a server error. With the floor at
    the threshold, a client sending 0.3 s and cancelling after 0.21 s was counted DEADLINE_EXCEEDED by the
    gateway and by catalog behind it (whose deadline is the gateway's, read later, so it ends no sooner),
    though answered within the latency SLO: anyone could spend the availability budget and page. With the
    tolerance added, a call any of them counts DEADLINE_EXCEEDED, its deadline passed or its client cancelling
    in the deadline's last stretch, had at least the threshold of its deadline run: a latency miss too.
    Raising the floor here, not narrowing the chassis' rule: a service behind the gateway knows no SLO
    threshold, and the rule is for its loaded servers' misses (see the constant)."""
    if latency_threshold_seconds <= 0:
        return 0.0
    return latency_threshold_seconds + DEADLINE_SKEW_TOLERANCE_SECONDS


class Guard:
    def __init__(
        self,
        verifier: TokenVerifier,
        buckets: TokenBuckets[str],
        trusted_proxies: Sequence[TrustedProxy] = (),
        *,
        password_buckets: TokenBuckets[str],
        password_site_buckets: TokenBuckets[str],
        latency_threshold_seconds: float = 0.0,
        cutoffs: TokenCutoffs | None = None,
    ) -> None:
        """`cutoffs`: the users' sign-outs, which revoke their earlier tokens (None: not checked, for tests of
        the rest of the admission; the wiring always gives them)."""
        self._verifier = verifier
        self.cutoffs = cutoffs
        self._min_deadline_seconds = deadline_floor(latency_threshold_seconds)
        self._buckets = buckets
        self._password_buckets = password_buckets
        self._password_site_buckets = password_site_buckets
        self._trusted_proxies = tuple(trusted_proxies)

    def admit_deadline(self, context: Context) -> None:
        """INVALID_ARGUMENT for a call with less time left than the floor (`deadline_floor`), before any work.
        A deadline that runs out while the gateway works is counted DEADLINE_EXCEEDED, here and in each service
        it called, and that is a server error the availability SLO and ShopmeshServerErrors count: any client
        could page on-call by sending deadlines shorter than any answer takes."""
        remaining = context.time_remaining()
        # grpcio gives None, or an enormous number, for a call without a deadline: neither is below the floor.
        if remaining is None or remaining >= self._min_deadline_seconds:
            return
        floor_ms = round(self._min_deadline_seconds * 1000)
        raise errors.InvalidArgument(
            f"the call's deadline is too short: send a deadline ({DEADLINE_FIELD}) of at least {floor_ms} ms",
            [
                errors.FieldViolation(
                    DEADLINE_FIELD,
                    f"must leave at least {floor_ms} ms when the gateway gets the call",
                    DEADLINE_TOO_SHORT,
                )
            ],
            reason=DEADLINE_TOO_SHORT,
            metadata={"min_deadline_ms": str(floor_ms)},
        )

    def limit(self, client: str, buckets: TokenBuckets[str] | None = None, tokens: int = 1) -> None:
        retry_after = (self._buckets if buckets is None else buckets).take(client, tokens)
        if retry_after > 0:
            raise errors.ResourceExhausted(
                "too many requests; retry later", reason=RATE_LIMITED, retry_after_seconds=retry_after
            )

    def _client_address(self, context: Context) -> str:
        forwarded = _metadata_values(context, FORWARDED_FOR) if self._trusted_proxies else []
        return client_address(context.peer(), forwarded, self._trusted_proxies)

    def _address(self, context: Context) -> str:
        bucket, _ = address_buckets(self._client_address(context))
        return f"addr:{bucket}"

    def admit_anonymous(self, context: Context) -> None:
        self.limit(self._address(context))

    def admit_password_hashing(self, context: Context, hashes: int = 1) -> None:
        """A call that has users hash a password `hashes` times: one of the address's ordinary tokens, then
        `hashes` of its password bucket's. users hashes a few at a time behind a short queue, shared by every
        client, so the ordinary bucket alone let one address fill that queue and every other shopper's login
        was refused PASSWORD_HASHING_BUSY. Per hash, not per call: a Login that users checks twice (its
        password changed by NFKC, `password_checks`) counted as one gave every address twice its share.

        An IPv6 client takes as many of its /48's password bucket as well: per /64 alone, a customer with a
        /56 (or a tunnel broker's free /48) had 256 (or 65,536) buckets and filled users' places by itself.
        The /64's tokens are given back when the /48 refuses, so that a site's full bucket does not drain it."""
        bucket, site = address_buckets(self._client_address(context))
        client = f"addr:{bucket}"
        self.limit(client)
        self.limit(client, self._password_buckets, hashes)
        if site is None:
            return
        try:
            self.limit(f"site:{site}", self._password_site_buckets, hashes)
        except errors.ResourceExhausted:
            self._password_buckets.give_back(client, hashes)
            raise

    async def admit_user(self, context: Context) -> str:
        try:
            token = await self._verifier.verify(bearer_token(context))
        except (errors.Unauthenticated, errors.Unavailable):
            # Failed attempts count against the address, so guessing tokens is rate-limited too; and so are
            # calls whose token cannot be checked yet (no key set fetched so far), which no user bucket
            # limits, the user being unknown. Charged after the verification, not before, though before
            # would refuse a flood of forged tokens unparsed once the address is spent: a shopper's calls
            # take from their own bucket only, so shoppers behind one NAT or proxy do not share its address's,
            # and anonymous browsing from that address cannot lock its signed-in shoppers out. What a refused
            # forgery costs is bounded instead, by MAX_TOKEN_CHARS (tokens.py).
            self.admit_anonymous(context)
            raise
        user = f"user:{token.subject}"
        # The user's bucket first, so that a flooding user is refused at once, before any wait for users (up
        # to USERS_TIMEOUT_SECONDS failing closed with users hanging) holds a gateway handler per call.
        self.limit(user)
        if self.cutoffs is not None:
            # Only calls the user's bucket admits ask users, at most once per user per TTL, coalesced, and not
            # for the retry interval after a failure (TokenCutoffs). Failing closed, users unable to say is no
            # fault of the token's: the user's token stays spent, not the address's, which shoppers behind a
            # NAT would spend.
            try:
                await self.cutoffs.refuse_revoked(token.subject, token.issued_at)
            except errors.Unauthenticated:
                # A revoked token is a failed one, charged to the address as the others are. Charged to its
                # user, a copy that leaked after the sign-out kept the user, signed in again,
                # RESOURCE_EXHAUSTED until it expired.
                self._buckets.give_back(user)
                self.admit_anonymous(context)
                raise
        return token.subject


class Guarded(Protocol):
    guard: Guard


ServicerT = TypeVar("ServicerT", bound=Guarded)
Handler = Callable[[ServicerT, RequestT, Context], Awaitable[ResponseT]]
UserHandler = Callable[[ServicerT, RequestT, Context, str], Awaitable[ResponseT]]


# The handler attribute where `public`, `hashes_password` and `protected` record the access they enforce (an
# `access_pb2.Access`), so that a test can hold each handler to its method's `(shopmesh.common.v1.access)` option:
# calls alone do not show a public method that was wrongly made `@protected` unless a test happens to call it
# without a token.
ACCESS_ATTRIBUTE = "shopmesh_access"


# The handler attribute `hashes_password` sets: the chart's latency SLO leaves those methods out (their argon2
# is ~0.5 s by design), and a test holds helm/gateway's `slo.latency.excludedMethods` to them.
HASHES_PASSWORD_ATTRIBUTE = "shopmesh_hashes_password"


def hashes_a_password(handler: Callable[..., Any]) -> bool:
    """Whether `handler` is decorated `hashes_password`."""
    return bool(getattr(handler, HASHES_PASSWORD_ATTRIBUTE, False))


def _enforcing(handler: Callable[..., Any], access: access_pb2.Access.ValueType) -> None:
    setattr(handler, ACCESS_ATTRIBUTE, access)


def access_of(handler: Callable[..., Any]) -> access_pb2.Access.ValueType:
    """The access `handler`'s guard enforces: ACCESS_UNSPECIFIED when no guard decorates it."""
    access: access_pb2.Access.ValueType = getattr(handler, ACCESS_ATTRIBUTE, access_pb2.ACCESS_UNSPECIFIED)
    return access


def public(
    method: Handler[ServicerT, RequestT, ResponseT],
) -> Handler[ServicerT, RequestT, ResponseT]:
    return _anonymous(method, lambda guard, _, context: guard.admit_anonymous(context))


def hashes_password(
    hashes: Callable[[RequestT], int],
) -> Callable[[Handler[ServicerT, RequestT, ResponseT]], Handler[ServicerT, RequestT, ResponseT]]:
    """`public`, for a method that has users hash a password `hashes(request)` times: limited by the client's
    password buckets too, by that many tokens."""

    def decorate(method: Handler[ServicerT, RequestT, ResponseT]) -> Handler[ServicerT, RequestT, ResponseT]:
        handler = _anonymous(
            method, lambda guard, request, context: guard.admit_password_hashing(context, hashes(request))
        )
        setattr(handler, HASHES_PASSWORD_ATTRIBUTE, True)
        return handler

    return decorate


def _anonymous(
    method: Handler[ServicerT, RequestT, ResponseT], admit: Callable[[Guard, RequestT, Context], None]
) -> Handler[ServicerT, RequestT, ResponseT]:
    """`method` for callers without a token, admitted by `admit` (which limits by the client's address)."""

    @functools.wraps(method)
    async def handler(self: ServicerT, request: RequestT, context: Context) -> ResponseT:
        self.guard.admit_deadline(context)
        admit(self.guard, request, context)
        with acting_for(context, None):
            return await method(self, request, context)

    _enforcing(handler, access_pb2.ACCESS_PUBLIC)
    return handler


def protected(
    method: UserHandler[ServicerT, RequestT, ResponseT],
) -> Handler[ServicerT, RequestT, ResponseT]:
    """The handler gets the verified user id as its last argument."""

    @functools.wraps(method)
    async def handler(self: ServicerT, request: RequestT, context: Context) -> ResponseT:
        self.guard.admit_deadline(context)
        # Fetching the key set is an internal call too: made for nobody, like a public method's.
        with acting_for(context, None):
            # The sign-out cutoff's fetch likewise.
            user_id = await self.guard.admit_user(context)
        with acting_for(context, user_id):
            return await method(self, request, context, user_id)

    _enforcing(handler, access_pb2.ACCESS_AUTHENTICATED)
    return handler
