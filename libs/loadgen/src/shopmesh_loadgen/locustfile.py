"""Shoppers on the public HTTP/JSON API, through the edge (docs/http-api.md), for Locust.

    locust -f libs/loadgen/src/shopmesh_loadgen/locustfile.py --host http://127.0.0.1:8080 --headless -u 10 -r 2
    python -m shopmesh_loadgen ...   (the same, with this file, after checking that the edge answers)

Each shopper signs up and logs in (again before its token expires), then does what a shop's visitors mostly do:
opens product pages (the gateway's composed page: catalog, stock and recommendations), browses the catalogue by
page and category, searches,
and now and then checks out what it looked at (one card in ten declined, `--declined-share`), reads its orders and
its e-mails, and cancels most of its confirmed orders some steps later (`--cancel-share`, nine in ten; all of them
while the stock it last saw of one of their products was low): CancelOrder restocks through the cancellation saga,
and without it a pod shopping for days sold the seeded stock out (two products at 0 after 8 minutes at 20 shoppers,
then every checkout of them INSUFFICIENT_STOCK). A shopper whose sign-up failed (users starting, its waits run out)
signs up again before its next signed-in step; a 409 ALREADY_EXISTS (an earlier try got through and its answer was
lost) counts as signed up. A checkout carries an idempotency key and the total the shopper saw; refused
PRICE_CHANGED it agrees to the new total once and checks out again under the same key, as the storefront does. An
answer the shop states as the checkout's outcome (FAILED_PRECONDITION: a declined card, too little stock, a changed
price) is a success in Locust's stats, as it is for the storefront; a 5xx, a malformed request's 400 or anything
unexpected is a failure. A "come back later" (429 with a RetryInfo: the gateway's rate limits, users' hashing
queue) is waited out as asked and the same request sent again. A shopper logs in again at a random point of its
token's lifetime (60 to 90 % of it, from the login answer's `expiresAt`), so that shoppers who started together do
not renew together; a token refused all the same (401) is renewed by logging in again once.
Requests are named by route (`/v1/products/{product_id}`), so Locust's stats group them. A product page the gateway
served without its recommendations (`recommendationsDegraded`) is a success, as the storefront shows it, but counted
in a row of its own, `/v1/products/{product_id} (recommendations degraded)`, with its own count and response times:
degradation shows in the report, not in the exit status, which stays about failures. A failure's text in Locust's
error report is the HTTP status and the ErrorInfo's reason, and the dependency it names ("503
DEPENDENCY_UNAVAILABLE (inventory)").
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from locust import HttpUser, events, task
from locust.argument_parser import LocustArgumentParser

from shopmesh_loadgen.answers import Refusal, refusal
from shopmesh_loadgen.credentials import Credentials

PASSWORD = "load generator password 1234"
GOOD_CARD = "4242424242424242"
# docs/storefront.md's test card that payments declines: the order is cancelled CARD_DECLINED.
DECLINED_CARD = "4000000000000002"
SEARCHES = ("coffee", "knife", "lamp", "charger", "kettle", "bag", "book", "wool")
PAGE_SIZE = 12
# A RetryInfo asking for longer is an outage, not a pause: the answer counts as it is.
MAX_RETRY_WAIT_SECONDS = 30.0
MAX_RETRY_WAITS = 3
# Waits are stretched by up to this share, so that shoppers refused together do not all come back at once.
RETRY_JITTER = 0.25
# Gives way to a request's answer, which a gateway waiting on a saga takes up to its own 30 s bound to send.
REQUEST_TIMEOUT_SECONDS = 35.0
# The orders a shopper remembers, to read one back, and at most as many waiting for their cancellation.
RECENT_ORDERS = 20
# Below this many units (as the product page last showed them) an order of the product is always cancelled: the
# share alone only slows the drain (nine in ten cancelled still sells a tenth for good), this keeps a floor.
LOW_STOCK = 20
CANCEL_REASON = "changed my mind (load generator)"
# Appended to the route's name of a product page served without its recommendations, which Locust then counts
# in a row of its own.
DEGRADED = "(recommendations degraded)"

Settles = Callable[[Refusal], bool]
# What a 200's body adds to the request's name in Locust's stats ("": nothing).
Variant = Callable[[dict[str, Any]], str]


def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--think",
        type=str,
        default="1,5",
        env_var="LOCUST_THINK",
        help="MIN,MAX seconds a shopper pauses between steps (default 1,5)",
    )
    parser.add_argument(
        "--declined-share",
        type=float,
        default=0.1,
        env_var="LOCUST_DECLINED_SHARE",
        help="share of checkouts paid with a card that is declined (default 0.1)",
    )
    parser.add_argument(
        "--cancel-share",
        type=float,
        default=0.9,
        env_var="LOCUST_CANCEL_SHARE",
        help="share of confirmed orders the shopper cancels some steps later, which restocks them (default 0.9)",
    )


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]  # Locust leaves it unannotated


def think_range(value: str) -> tuple[float, float]:
    low, _, high = value.partition(",")
    pause = (float(low), float(high or low))
    if not 0 <= pause[0] <= pause[1]:
        raise ValueError(f"--think {value!r}: want MIN,MAX seconds with 0 <= MIN <= MAX")
    return pause


def never(_: Refusal) -> bool:
    return False


def page_variant(page: dict[str, Any]) -> str:
    """DEGRADED for a product page the gateway served without its recommendations (they failed or missed their
    share of the page's time): a 200 the storefront shows, so a success, but counted apart; otherwise a run with
    recommendations down reads as a healthy one."""
    return DEGRADED if page.get("recommendationsDegraded") is True else ""


def checkout_settled(refused: Refusal) -> bool:
    return refused.settles_checkout


def signed_up(refused: Refusal) -> bool:
    """409 ALREADY_EXISTS for the shopper's own new address: an earlier sign-up got through, its answer did not."""
    return refused.already_exists


def cancellation_settled(refused: Refusal) -> bool:
    """The order cannot be cancelled (FAILED_PRECONDITION: cancelled already), or the cancellation is accepted and
    completes on its own (503 naming the order, docs/http-api.md)."""
    return refused.settles_checkout or refused.accepted_for_later


def cancels(share: float, draw: float, stock_seen: list[int | None]) -> bool:
    """Whether a confirmed order is to be cancelled: a `share` of them (`draw` uniform in [0, 1)), and every one
    with a product the shopper last saw below LOW_STOCK."""
    return draw < share or any(seen is not None and seen < LOW_STOCK for seen in stock_seen)


class Shopper(HttpUser):
    """A visitor of the shop: signed up once, then browsing, searching, reading product pages, sometimes buying."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._think = think_range(options.think if options is not None else "1,5")
        self._declined_share: float = options.declined_share if options is not None else 0.1
        self._cancel_share: float = options.cancel_share if options is not None else 0.9
        self._email = f"load-{uuid.uuid4().hex[:12]}@example.com"
        self._credentials = Credentials()
        self._registered = False
        # Each product's stock as its page last showed it.
        self._stock: dict[str, int] = {}
        # Each product's price as the shopper last read it (id: the Money in JSON): what it expects to pay.
        self._prices: dict[str, dict[str, str]] = {}
        self._categories: set[str] = set()
        self._orders: list[str] = []
        # Confirmed orders to cancel at the shopper's next look at its orders, each with its idempotency key.
        self._to_cancel: list[tuple[str, str]] = []
        self._signed_in()

    def wait_time(self) -> float:
        return random.uniform(*self._think)

    @task(15)
    def product_page(self) -> None:
        if not self._prices:
            self.browse()
            return
        product_id = random.choice(list(self._prices))
        page, _ = self._send(
            "GET",
            f"/v1/products/{product_id}",
            name="/v1/products/{product_id}",
            params={"maxRecommendations": 4},
            signed_in=False,
            variant=page_variant,
        )
        if page is not None:
            self._remember([page.get("product", {})])
            available = page.get("availability", {}).get("availableQuantity", 0)
            if isinstance(available, int):
                self._stock[product_id] = available

    @task(10)
    def browse(self) -> None:
        params: dict[str, str | int] = {"pageSize": PAGE_SIZE}
        if self._categories and random.random() < 0.5:
            params["category"] = random.choice(sorted(self._categories))
        page, _ = self._send("GET", "/v1/products", params=params, signed_in=False)
        if page is not None:
            self._remember(page.get("products", []))
            token = page.get("nextPageToken", "")
            if token and random.random() < 0.3:
                following, _ = self._send("GET", "/v1/products", params={**params, "pageToken": token}, signed_in=False)
                if following is not None:
                    self._remember(following.get("products", []))

    @task(5)
    def search(self) -> None:
        params = {"query": random.choice(SEARCHES), "pageSize": PAGE_SIZE}
        found, _ = self._send("GET", "/v1/products:search", params=params, signed_in=False)
        if found is not None:
            self._remember(found.get("products", []))

    @task(3)
    def checkout(self) -> None:
        if not self._prices or not self._signed_in():
            self.browse()
            return
        first = random.choice(list(self._prices))
        currency = self._prices[first]["currency"]
        same_currency = [p for p, price in self._prices.items() if price["currency"] == currency and p != first]
        cart = [first, *random.sample(same_currency, min(len(same_currency), random.randint(0, 2)))]
        lines = [(product_id, random.randint(1, 2)) for product_id in cart]
        total = sum(int(self._prices[product_id]["amountMinor"]) * quantity for product_id, quantity in lines)
        declined = random.random() < self._declined_share
        order: dict[str, Any] = {
            "items": [{"productId": product_id, "quantity": quantity} for product_id, quantity in lines],
            "currency": currency,
            "shippingAddress": {
                "fullName": "Load Shopper",
                "street": "1 Market Street",
                "city": "Springfield",
                "postalCode": "12345",
                "country": "US",
            },
            "card": {"number": DECLINED_CARD if declined else GOOD_CARD, "expMonth": 12, "expYear": 2031, "cvv": "123"},
            # The total the shopper saw: it agrees to pay that, not whatever the prices are by now.
            "expectedTotal": {"amountMinor": str(total), "currency": currency},
        }
        # One key for the checkout and its retries: a retry must not place a second order.
        key = {"idempotency-key": f"load-{uuid.uuid4().hex}"}
        placed, refused = self._send("POST", "/v1/orders", json=order, headers=key, settles=checkout_settled)
        new_total = refused.new_total_minor if refused is not None else None
        if new_total is not None:
            # As the storefront: tell the shopper the new total; it agrees once, under the same key (nothing was
            # recorded under it).
            order["expectedTotal"]["amountMinor"] = str(new_total)
            placed, _ = self._send("POST", "/v1/orders", json=order, headers=key, settles=checkout_settled)
        placed_order = placed.get("order", {}) if placed is not None else {}
        order_id = placed_order.get("id", "")
        if order_id:
            # The latest few, as a customer's order list shows first: a pod shops for days.
            self._orders = [*self._orders[-(RECENT_ORDERS - 1) :], order_id]
        stock_seen = [self._stock.get(product_id) for product_id in cart]
        if placed_order.get("state") == "ORDER_STATE_CONFIRMED" and cancels(
            self._cancel_share, random.random(), stock_seen
        ):
            self._to_cancel = [*self._to_cancel[-(RECENT_ORDERS - 1) :], (order_id, f"load-{uuid.uuid4().hex}")]

    @task(2)
    def orders(self) -> None:
        if not self._signed_in():
            return
        self._send("GET", "/v1/orders", params={"pageSize": 10})
        if self._orders:
            order_id = random.choice(self._orders)
            self._send("GET", f"/v1/orders/{order_id}", name="/v1/orders/{order_id}")
        waiting, self._to_cancel = self._to_cancel, []
        for order_id, key in waiting:
            cancelled, refused = self._send(
                "POST",
                f"/v1/orders/{order_id}:cancel",
                name="/v1/orders/{order_id}:cancel",
                json={"reason": CANCEL_REASON},
                headers={"idempotency-key": key},
                settles=cancellation_settled,
            )
            if cancelled is None and refused is not None and not cancellation_settled(refused):
                # Not recorded, as far as the answer says: tried again at the next look, under the same key.
                self._to_cancel.append((order_id, key))

    @task(1)
    def notifications(self) -> None:
        if self._signed_in():
            self._send("GET", "/v1/notifications", params={"pageSize": 10})

    def _remember(self, products: list[dict[str, Any]]) -> None:
        for product in products:
            price = product.get("price", {})
            if product.get("id") and price.get("currency"):
                self._prices[product["id"]] = {
                    "amountMinor": str(price.get("amountMinor", "0")),
                    "currency": price["currency"],
                }
            if product.get("category"):
                self._categories.add(product["category"])

    def _signed_in(self) -> bool:
        """Whether the shopper holds a token, renewed first when it is due; one whose sign-up or login was refused
        (its waits ran out, users was starting) tries again, signing up first until that gets through: logging in
        without an account only fails."""
        if not self._registered:
            self._sign_up()
        if self._registered and self._credentials.due():
            self._log_in()
        return bool(self._credentials.token)

    def _sign_up(self) -> None:
        account = {"email": self._email, "password": PASSWORD, "displayName": "Load Shopper"}
        registered, refused = self._send("POST", "/v1/users", json=account, signed_in=False, settles=signed_up)
        self._registered = registered is not None or (refused is not None and refused.already_exists)

    def _log_in(self) -> None:
        login, _ = self._send("POST", "/v1/login", json={"email": self._email, "password": PASSWORD}, signed_in=False)
        self._credentials.logged_in(login)

    def _send(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        signed_in: bool = True,
        settles: Settles = never,
        variant: Variant | None = None,
    ) -> tuple[dict[str, Any] | None, Refusal | None]:
        """One call of the API, named by its route (`name`, else the path, then what `variant` finds in a 200's
        body), and its answer: the JSON body on success, else the refusal. An error is a failure in Locust's
        stats unless `settles` takes it for the shop's answer, or it is a "come back later" (waited out, then sent
        again) or, on a call with the token, an expired token (logged in again, then sent again)."""
        renewed = False
        pause = 0.0
        for attempt in range(MAX_RETRY_WAITS + 1):
            sent = dict(headers or {})
            if signed_in:
                sent["authorization"] = f"Bearer {self._credentials.token}"
            with self.client.request(
                method,
                path,
                name=name or path,
                params=params,
                json=json,
                headers=sent,
                timeout=REQUEST_TIMEOUT_SECONDS,
                catch_response=True,
            ) as response:
                try:
                    body = response.json() if response.content else None
                except ValueError:
                    body = None
                if response.status_code == 200 and isinstance(body, dict):
                    suffix = "" if variant is None else variant(body)
                    if suffix:
                        # The name is only known from the answer; Locust reports the request on leaving the block
                        # from this dict (typed read-only, a plain dict in the pinned 2.47), so it is renamed here.
                        cast(dict[str, Any], response.request_meta)["name"] = f"{name or path} {suffix}"
                    return body, None
                refused = refusal(response.status_code, body)
                delay = refused.retry_delay
                if response.status_code == 200:
                    response.failure("200 without a JSON object")
                    return None, refused
                if settles(refused):
                    response.success()
                    return None, refused
                if response.status_code == 429 and delay is not None and delay <= MAX_RETRY_WAIT_SECONDS:
                    if attempt < MAX_RETRY_WAITS:
                        # The documented answer to a client coming too fast, which a shop's page waits out.
                        response.success()
                        pause = delay * random.uniform(1, 1 + RETRY_JITTER)
                    else:
                        response.failure(f"{refused}: still refused after {MAX_RETRY_WAITS} waits")
                        return None, refused
                elif response.status_code == 401 and signed_in and not renewed and attempt < MAX_RETRY_WAITS:
                    # The token expired: the page signs the shopper in again and repeats the request.
                    response.success()
                    renewed = True
                    self._credentials.refused()
                    self._log_in()
                    continue
                else:
                    response.failure(str(refused) if response.status_code else f"no answer: {response.error}")
                    return None, refused
            time.sleep(pause)
        # Every attempt ends in a return but a wait or a renewal, and the last attempt neither waits nor renews.
        raise AssertionError("unreachable: the last attempt answers")
