"""NATS_URL: its servers, its credentials, and how a log line may show it.

NATS_URL takes a server or a cluster's servers comma-separated, each with an optional user part: a token
(`nats://s3cret@nats:4222`) or a user and password (`nats://shop:s3cret@nats:4222`), percent-encoded
(`nats://to%2Fken@nats:4222`) as in any URL. nats-py would read the user part itself, without decoding it:
a token holding '/', '?' or '#' ends the URL's authority there, and the token is taken for the host (the
error then names a DNS failure). So the chassis decodes the user part and hands nats-py the credentials as
options of their own, and the servers without them. No nats import: config.py validates NATS_URL with this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

# What ends a URL's user part or splits it, unless percent-encoded (':' splits user and password once).
_RESERVED = "/?#@"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOW = (
    "percent-encode a token, user or password holding '/', '?', '#', '@', ':' or '%' "
    "('/' as %2F, '?' %3F, '#' %23, '@' %40, ':' %3A, '%' %25)"
)


# The schemes nats-py connects with, in two families it refuses to mix in one pool (TCP, WebSocket).
_TCP_SCHEMES = frozenset({"nats", "tls"})
_WEBSOCKET_SCHEMES = frozenset({"ws", "wss"})


class InvalidNatsUrl(ValueError):
    """A NATS_URL that names no server to connect to, or whose credentials cannot be read as meant; `problem`
    says why, without the secret."""

    def __init__(self, url: str, problem: str, *, name: str = "NATS_URL") -> None:
        self.problem = problem
        super().__init__(f"{name} {shown_nats_url(url)}: {problem}")


@dataclass(frozen=True)
class NatsTarget:
    """Where to connect (servers without a user part) and with what, decoded (None: not given)."""

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def connect_options(self) -> dict[str, Any]:
        """nats.connect's servers and credentials: decoded and apart, not left in the servers' URLs, where
        nats-py would send a user part as it is written."""
        return {"servers": list(self.servers), "user": self.user, "password": self.password, "token": self.token}


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS_URL, as given. A cluster is given as NATS' own clients take it, comma-separated
    (`nats://a:4222,nats://b:4222`); nats-py reads one string as one server."""
    return [server.strip() for server in url.split(",") if server.strip()]


def parse_nats_url(url: str, *, name: str = "NATS_URL") -> NatsTarget:
    """The servers of `url` and its credentials, decoded. Raises InvalidNatsUrl (naming `name`) when it names
    no server, a server nats-py cannot reach (another scheme than nats, tls, ws or wss, no host, a port out of
    range, TCP and WebSocket servers mixed), or when a user part holds a raw reserved character or a '%' that
    escapes nothing: read as nats-py would, it would be another token or host than meant. Credentials may be
    given on one server or on each, the same on each: nats-py sends one set to every server of its pool (also
    to those a cluster tells it about)."""
    servers: list[str] = []
    credentials: set[tuple[str | None, str | None, str | None]] = set()
    for server in nats_servers(url):
        scheme, separator, rest = _split_scheme(server)
        # The user part ends at the last '@': what a URL parser would stop at before is in it, and refused.
        userinfo, at, hosts = rest.rpartition("@")
        servers.append(f"{scheme}{separator}{hosts}")
        _check_server(url, scheme, hosts, name=name)
        if not at:
            continue
        if any(char in userinfo for char in _RESERVED) or userinfo.count(":") > 1 or _BAD_ESCAPE.search(userinfo):
            raise InvalidNatsUrl(url, f"a user part holds a reserved character as it is: {_HOW}", name=name)
        user, colon, password = userinfo.partition(":")
        if colon:
            credentials.add((unquote(user), unquote(password), None))
        else:
            credentials.add((None, None, unquote(user)))
    if len(credentials) > 1:
        raise InvalidNatsUrl(
            url, "its servers give different credentials; give the same credentials on each, or on one", name=name
        )
    if not servers:
        # nats-py, given no server, retries an empty pool for ever at full speed, deaf to SIGTERM.
        raise InvalidNatsUrl(url, "names no server (e.g. nats://nats:4222)", name=name)
    schemes = {_split_scheme(server)[0] or "nats" for server in servers}
    if schemes & _TCP_SCHEMES and schemes & _WEBSOCKET_SCHEMES:
        raise InvalidNatsUrl(
            url, "mixes TCP (nats, tls) and WebSocket (ws, wss) servers, which nats-py refuses", name=name
        )
    given = credentials.pop() if credentials else (None, None, None)
    return NatsTarget(tuple(servers), user=given[0], password=given[1], token=given[2])


def _check_server(url: str, scheme: str, hosts: str, *, name: str) -> None:
    # What nats-py would fail on at each reconnect, for ever and as a DNS error (`http://nats:4222` is read as
    # the host "http"), refused at start instead. Without a scheme nats-py takes nats://.
    if scheme not in _TCP_SCHEMES | _WEBSOCKET_SCHEMES | {""}:
        raise InvalidNatsUrl(url, f"a server's scheme {scheme!r} is not one of nats, tls, ws or wss", name=name)
    try:
        parts = urlsplit(f"nats://{hosts}")
        port = parts.port
    except ValueError as exc:
        raise InvalidNatsUrl(url, f"a server's host and port cannot be read: {exc}", name=name) from None
    if not parts.hostname:
        raise InvalidNatsUrl(url, "a server names no host (e.g. nats://nats:4222)", name=name)
    if port == 0:
        raise InvalidNatsUrl(url, "a server's port is 0, which nothing listens on", name=name)


def shown_nats_url(url: str) -> str:
    """`url` as a log line may show it: each server's user part masked whole, since NATS reads a user part
    without a colon as a token (`nats://s3cret@nats:4222`), and a `user:password` pair as credentials."""
    return ",".join(_shown_server(server) for server in nats_servers(url))


def _shown_server(server: str) -> str:
    # Everything before the last '@' of the authority is the user part: a token from `openssl rand -base64`
    # holds '/', '+' or '=', which a URL parser takes for the end of the authority (and so finds no user).
    scheme, separator, rest = _split_scheme(server)
    if "@" not in rest:
        return server
    return f"{scheme}{separator}***@{rest.rpartition('@')[2]}"


def _split_scheme(server: str) -> tuple[str, str, str]:
    # At the first "://": a raw "://" in a password must not move the scheme into the user part's place.
    scheme, separator, rest = server.partition("://")
    return (scheme, separator, rest) if separator else ("", "", server)
