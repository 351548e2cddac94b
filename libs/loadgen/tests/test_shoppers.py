"""The shoppers (Locust, as its own process: importing Locust here would patch this process for gevent) against a
small stand-in of the edge on a real socket, which records what they ask and can refuse the first sign-up."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PRODUCT = {"id": "prod_a", "name": "A", "category": "kitchen", "price": {"amountMinor": "100", "currency": "USD"}}


EXPIRY_GRACE_SECONDS = 5.0


@dataclass
class Edge:
    """The public API's routes the shoppers use, answered at once; `first_sign_up` is the status of the first
    POST /v1/users (200, or an error as users or the gateway sends it). With a `token_lifetime` (seconds), each
    login gets a token of its own that expires then, and a signed-in route refuses an expired or unknown one 401
    as the gateway does, past `EXPIRY_GRACE_SECONDS`: the steps a loaded machine's shopper takes between its
    renewal check and its requests are not what its tests are about (`logins` says when each login came)."""

    first_sign_up: int = 200
    available: int = 90
    recommendations_degraded: bool = False
    token_lifetime: float | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    orders: Iterator[int] = field(default_factory=itertools.count)
    # Each token issued, with when it expires (time.time()), and each signed-in request's token and answer.
    tokens: dict[str, float] = field(default_factory=dict)
    signed_in: list[tuple[str, int]] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)
    # Set at the shopper's first login, and at its first signed-in request with a token of a later login.
    logged_in: threading.Event = field(default_factory=threading.Event)
    renewed: threading.Event = field(default_factory=threading.Event)
    # Set once the shopper has read the product's page, then checked out, then looked at its orders, and moved
    # on from that look (its next request is no follow-up of it): by then any cancellation it meant to send at
    # that look has come. `_order_looked_at` is where the shopper is on that way.
    looked_at_an_order_after_its_page: threading.Event = field(default_factory=threading.Event)
    _order_looked_at: str = ""
    # Set at the second product page asked for: by then the first one's answer is in Locust's stats.
    pages_read: threading.Event = field(default_factory=threading.Event)

    def _follow(self, method: str, path: str) -> None:
        if (method, path) == ("POST", "/v1/login"):
            self.logged_in.set()
        if path == "/v1/products/prod_a" and self.requests.count(("GET", path)) >= 2:
            self.pages_read.set()
        stage = self._order_looked_at
        if stage == "" and path == "/v1/products/prod_a":
            self._order_looked_at = "page read"
        elif stage == "page read" and (method, path) == ("POST", "/v1/orders"):
            self._order_looked_at = "ordered"
        elif stage == "ordered" and (method, path) == ("GET", "/v1/orders"):
            self._order_looked_at = "looked"
        elif stage == "looked" and not path.startswith("/v1/orders/"):
            self.looked_at_an_order_after_its_page.set()

    def answer(self, method: str, path: str, authorization: str = "") -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append((method, path))
            self._follow(method, path)
            sign_ups = self.requests.count(("POST", "/v1/users"))
            order = next(self.orders) if (method, path) == ("POST", "/v1/orders") else 0
            if self.token_lifetime is not None:
                if (method, path) == ("POST", "/v1/login"):
                    self.logins.append(time.time())
                    token, expires_at = f"token-{len(self.tokens)}", self.logins[-1] + self.token_lifetime
                    self.tokens[token] = expires_at
                    moment = datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z")
                    return 200, {"accessToken": token, "tokenType": "Bearer", "expiresAt": moment}
                if path.startswith(("/v1/orders", "/v1/notifications")):
                    token = authorization.removeprefix("Bearer ")
                    good = time.time() < self.tokens.get(token, 0.0) + EXPIRY_GRACE_SECONDS
                    self.signed_in.append((token, 200 if good else 401))
                    if token != "token-0":
                        self.renewed.set()
                    if not good:
                        return 401, {"code": 16, "message": "token expired", "details": []}
        if (method, path) == ("POST", "/v1/users"):
            if sign_ups == 1 and self.first_sign_up == 503:
                return 503, {"code": 14, "message": "users unavailable", "details": []}
            if sign_ups == 1 and self.first_sign_up == 409:
                return 409, {"code": 6, "message": "email already registered", "details": []}
            return 200, {"user": {"id": "usr_1"}}
        if (method, path) == ("POST", "/v1/login"):
            return 200, {"accessToken": "token"}
        if (method, path) == ("POST", "/v1/orders"):
            return 200, {"order": {"id": f"ord_{order}", "state": "ORDER_STATE_CONFIRMED"}}
        if path.startswith("/v1/orders/") and path.endswith(":cancel"):
            return 200, {"order": {"id": path.split("/")[3].removesuffix(":cancel"), "state": "ORDER_STATE_CANCELLED"}}
        if path == "/v1/products/prod_a":
            page = {"product": PRODUCT, "availability": {"availableQuantity": self.available}}
            # As the gateway's JSON has it: proto3 leaves a false field out.
            return 200, {**page, "recommendationsDegraded": True} if self.recommendations_degraded else page
        if path in ("/v1/products", "/v1/products:search"):
            return 200, {"products": [PRODUCT]}
        return 200, {}

    def sent(self, method: str, path: str) -> list[int]:
        """The positions of the requests of `method` on `path` (a prefix when it ends with '*')."""
        with self.lock:
            return [
                i
                for i, (m, p) in enumerate(self.requests)
                if m == method and (p.startswith(path[:-1]) if path.endswith("*") else p == path)
            ]


@contextlib.contextmanager
def serving(edge: Edge) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            status, body = edge.answer(self.command, self.path.split("?")[0], self.headers.get("authorization", ""))
            out = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:  # the standard library's names
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def shop_until(edge: Edge, host: str, seen: threading.Event, *options: str) -> dict[tuple[str, str], dict[str, Any]]:
    """One shopper with no pause between steps until the edge has `seen` what the test asks about (at most 90 s),
    then stopped as an operator stops Locust (SIGTERM: its stats printed all the same): Locust's stats by
    (method, name). Not for a fixed few seconds: a loaded machine fit a few dozen steps in 3 s, at times only the
    sign-up, not always the ones the test is about."""
    command = [
        *(sys.executable, "-m", "shopmesh_loadgen", "--host", host, "--headless", "--users", "1"),
        *("--spawn-rate", "1", "--run-time", "120s", "--stop-timeout", "5", "--think", "0,0.01", "--json"),
        *options,
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert seen.wait(90), f"not seen in 90 s of shopping: {edge.requests[-40:]}"
        finally:
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=60)
    assert stdout, stderr[-3000:]
    return {(entry["method"], entry["name"]): entry for entry in json.loads(stdout)}


def test_a_shopper_whose_sign_up_failed_signs_up_again_before_it_logs_in() -> None:
    """It never signed up again: every signed-in step then sent a login that failed, for the pod's life."""
    edge = Edge(first_sign_up=503)
    with serving(edge) as host:
        shop_until(edge, host, edge.logged_in)
    sign_ups, logins = edge.sent("POST", "/v1/users"), edge.sent("POST", "/v1/login")
    assert len(sign_ups) == 2, edge.requests[:20]
    assert logins, edge.requests[:20]
    assert logins[0] > sign_ups[1], edge.requests[:20]


def test_a_sign_up_answered_already_exists_counts_as_signed_up() -> None:
    """A 409 for the shopper's own new address means an earlier try got through: it logs in, signs up no more,
    and Locust does not count the 409 as a failure."""
    edge = Edge(first_sign_up=409)
    with serving(edge) as host:
        stats = shop_until(edge, host, edge.logged_in)
    assert len(edge.sent("POST", "/v1/users")) == 1
    assert edge.sent("POST", "/v1/login")
    assert stats["POST", "/v1/users"]["num_failures"] == 0


@pytest.mark.parametrize(
    ("share", "available", "cancelling"),
    [("1", 90, True), ("0", 90, False), ("0", 5, True)],
    ids=["share-1", "share-0", "share-0-low-stock"],
)
def test_shoppers_cancel_their_confirmed_orders_at_the_cancel_share_and_all_of_them_when_stock_runs_low(
    share: str, available: int, cancelling: bool
) -> None:
    """Every confirmed order stayed sold, and a pod shopping for days sold the seeded stock out; cancelled, an
    order is restocked. At share 1 each is cancelled (at a later look at the orders), at 0 none while the stock
    its page showed is ample, and each while it is below LOW_STOCK."""
    edge = Edge(available=available)
    with serving(edge) as host:
        stats = shop_until(edge, host, edge.looked_at_an_order_after_its_page, "--cancel-share", share)
    placed, cancelled = edge.sent("POST", "/v1/orders"), edge.sent("POST", "/v1/orders/*")
    assert placed, edge.requests[:20]
    assert bool(cancelled) is cancelling, edge.requests[:40]
    if cancelling:
        assert stats["POST", "/v1/orders/{order_id}:cancel"]["num_failures"] == 0
        assert cancelled[0] > placed[0]


def test_a_shopper_renews_its_token_before_it_expires() -> None:
    """Kept until the gateway refused it, every shopper's token expired in the same seconds (all log in at the
    run's start): each signed-in step then failed 401 or logged in again, in one burst. The shopper logs in again
    before expiry (at 60 to 90 % of the lifetime, here 7.2 to 10.8 s, or MIN_RENEWAL_SECONDS, 10 s, whichever is
    later), sends the new token from then on and is refused nothing. (Kept until refused, the token went on past
    its expiry and the grace, was refused 401, and only then was a login sent.)"""
    edge = Edge(token_lifetime=12)
    with serving(edge) as host:
        shop_until(edge, host, edge.renewed)
    logins = edge.sent("POST", "/v1/login")
    assert len(logins) >= 2, edge.requests[-20:]
    assert edge.logins[1] < edge.tokens["token-0"] + EXPIRY_GRACE_SECONDS
    assert [status for _, status in edge.signed_in if status != 200] == [], edge.signed_in[-20:]
    used = [token for token, _ in edge.signed_in]
    assert used[0] == "token-0"
    assert used[-1] != "token-0", used[-20:]


@pytest.mark.parametrize(
    ("degraded", "counted_as", "not_as"),
    [
        (True, "/v1/products/{product_id} (recommendations degraded)", "/v1/products/{product_id}"),
        (False, "/v1/products/{product_id}", "/v1/products/{product_id} (recommendations degraded)"),
    ],
    ids=["degraded", "whole"],
)
def test_product_pages_served_without_recommendations_are_counted_apart_as_successes(
    degraded: bool, counted_as: str, not_as: str
) -> None:
    """A whole run with recommendations delayed answered every page 200 with recommendationsDegraded, and Locust's
    report was that of a healthy shop. Such a page is the shop's answer (the storefront shows it without
    recommendations), so no failure, but its own row in Locust's table, with its own count and response times."""
    edge = Edge(recommendations_degraded=degraded)
    with serving(edge) as host:
        stats = shop_until(edge, host, edge.pages_read)
    assert stats["GET", counted_as]["num_requests"] >= 1, sorted(stats)
    assert stats["GET", counted_as]["num_failures"] == 0
    assert ("GET", not_as) not in stats, sorted(stats)
