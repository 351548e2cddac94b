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
from urllib.parse import unquote

# What ends a URL's user part or splits it, unless percent-encoded (':' splits user and password once).
_RESERVED = "/?#@"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOW = (
    "percent-encode a token, user or password holding '/', '?', '#', '@', ':' or '%' "
    "('/' as %2F, '?' %3F, '#' %23, '@' %40, ':' %3A, '%' %25)"
)


class InvalidNatsUrl(ValueError):
    """A NATS_URL whose credentials cannot be read as meant; `problem` says why, without the secret."""

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
    """The servers of `url` and its credentials, decoded. Raises InvalidNatsUrl (naming `name`) when a user
    part holds a raw reserved character or a '%' that escapes nothing: read as nats-py would, it would be
    another token or host than meant. Credentials may be given on one server or on each, the same on each:
    nats-py sends one set to every server of its pool (also to those a cluster tells it about)."""
    servers: list[str] = []
    credentials: set[tuple[str | None, str | None, str | None]] = set()
    for server in nats_servers(url):
        scheme, separator, rest = _split_scheme(server)
        # The user part ends at the last '@': what a URL parser would stop at before is in it, and refused.
        userinfo, at, hosts = rest.rpartition("@")
        servers.append(f"{scheme}{separator}{hosts}")
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
    given = credentials.pop() if credentials else (None, None, None)
    return NatsTarget(tuple(servers), user=given[0], password=given[1], token=given[2])


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
