"""Simulated shoppers against the gateway, to watch the system work: dashboards, traces, logs, e-mails.

    python -m shopmesh_platform.shoppers [--target 127.0.0.1:50050 | --http [http://127.0.0.1:8080]]
                                         [--shoppers 5] [--duration 60]

Each shopper registers and logs in once, then does what a customer does, pausing between steps (`--think`, 0.5
to 2 s): browses a page of products, searches, opens a product page, and now and then places an order (one
card in ten is declined), reads it back and lists its e-mails. An order carries the total the shopper saw (the
price it last read times the quantity) as expected_total; refused PRICE_CHANGED, it agrees to the new total
the answer names, once, and places the order again. Through the public API only, as a front-end would (a plain
channel; every call has a deadline), or with `--http` over the HTTP/JSON edge in front of the gateway, each
call on its `google.api.http` route (`http_client`). Given no address, either mode reads the running local
stack's from `.data/stack.json` (any ports, `--free-ports` too) and says which it used. It is traffic, not a
benchmark (`make bench-checkout` measures). Every `--report-every` seconds and at the end (Ctrl-C or SIGTERM ends it
early: the end is then, and the exit status 130 or 143) it prints what each method answered: its status code, or
PRICE_CHANGED for a checkout refused at a total that was no longer the current one (a FAILED_PRECONDITION the client
acts on, told apart from a declined card). A refusal that asks to come back later (RESOURCE_EXHAUSTED or UNAVAILABLE
with a RetryInfo: the gateway's password bucket refusing sign-ups from one address) is waited out, jittered, and the
step asked again. The summary says apart from the answers why the shoppers waited: per cause (the status code and
ErrorInfo reason: RESOURCE_EXHAUSTED RATE_LIMITED, a dependency's UNAVAILABLE, or a DEADLINE_EXCEEDED they waited
out to the end), how many calls waited and how long in all. Exit 1 when the gateway cannot be reached (in one line,
which asks whether `make run` runs only for make run's own address, taken as no running stack named one, and says
that the running stack runs no gateway, or no edge, when it took make run's past one started without it), or, with
`--strict`, when any call got a server fault (UNKNOWN, INTERNAL, DATA_LOSS, UNIMPLEMENTED): a client's mistake, a
declined card or a changed price is an answer, a fault is a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, TypeVar, cast

import aiohttp
import grpc
from google.rpc import error_details_pb2
from tabulate import tabulate

from shopmesh.common.v1 import money_pb2
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.orders.v1 import orders_pb2
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.interrupts import Interrupted, run_interruptible
from shopmesh_chassis.local_stack import LocalAddress, local_address

from .arguments import seconds, whole_number
from .http_client import HttpCallError, HttpShop
from .topology import LOCAL_HOST, LOCAL_HTTP_PORT, SERVICES

if TYPE_CHECKING:
    # Only the .pyi declares the async stub's type; at run time the stub class serves both.
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub

T = TypeVar("T")

SERVER_FAULTS = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
)
# The outcome tallied for a checkout refused because its expected_total is no longer the current total.
PRICE_CHANGED = "PRICE_CHANGED"
# Answers that, with a RetryInfo, ask the shopper to come back later (the gateway's per-address password bucket
# refuses sign-ups RATE_LIMITED; a service whose dependency is away answers DEPENDENCY_UNAVAILABLE): a client
# waits as asked and takes the same step again, rather than count a refusal it was told how to avoid.
COME_BACK_LATER = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
# A longer wait asked for is an outage, not a pause: the answer is tallied as it is and the shopper moves on.
MAX_RETRY_WAIT_SECONDS = 30.0
# Each wait is the one asked for stretched by up to this share, so that shoppers refused together do not all
# come back in the same instant and meet the same empty bucket.
RETRY_JITTER = 0.25
# Waits one call takes at most before its answer is tallied: a bucket that stays empty (another client draining
# it, a dependency away for good) must not hold a shopper on one step, even in a run with no end.
MAX_RETRY_WAITS_PER_CALL = 5


def server_fault(outcome: str) -> bool:
    """Whether an answer, as tallied (a status code's name, or PRICE_CHANGED), is the server's fault, not the
    caller's."""
    return outcome in {code.name for code in SERVER_FAULTS}


GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
SEARCHES = ("coffee", "knife", "lamp", "charger", "kettle", "bag")
PASSWORD = "shopper password 1234"


@dataclass(frozen=True)
class Checkout:
    """One order a shopper tried to place and what the gateway answered: what a test checks the shop's
    orders and stock against."""

    user_id: str
    product_id: str
    quantity: int
    declined_card: bool
    code: str  # the last answer, as tallied: "OK" when placed, else the status code's name or PRICE_CHANGED
    order_id: str  # the placed order's; empty unless OK
    expected_total_minor: int  # the total the shopper last confirmed and sent, in minor units
    price_changed: bool  # refused PRICE_CHANGED first, then placed again at the total that answer named


def _error_info(error: grpc.aio.AioRpcError | HttpCallError) -> error_details_pb2.ErrorInfo | None:
    return details_of(error).error_info if isinstance(error, grpc.aio.AioRpcError) else error.error_info


def _retry_delay(error: grpc.aio.AioRpcError | HttpCallError) -> float | None:
    return details_of(error).retry_delay_seconds if isinstance(error, grpc.aio.AioRpcError) else error.retry_delay


def wait_cause(error: grpc.aio.AioRpcError | HttpCallError) -> str:
    """Why a call waited, as the answer said: its status code and its ErrorInfo's reason, when it has one
    (RESOURCE_EXHAUSTED RATE_LIMITED, the gateway's bucket; RESOURCE_EXHAUSTED PASSWORD_HASHING_BUSY, users'
    queue; DEADLINE_EXCEEDED, no answer in time)."""
    info = _error_info(error)
    reason = info.reason if info is not None else ""
    return f"{error.code().name} {reason}" if reason else error.code().name


@dataclass
class Waits:
    """The calls that waited for one cause: by method, how many times (a call waits out a RetryInfo up to
    MAX_RETRY_WAITS_PER_CALL times) and how long in all."""

    calls: Counter[str] = field(default_factory=Counter)
    times: int = 0
    seconds: float = 0.0


class Tally:
    """What each method answered, by status code, and every checkout tried."""

    def __init__(self) -> None:
        self.answers: Counter[tuple[str, str]] = Counter()
        self.checkouts: list[Checkout] = []
        # Why the shoppers waited (`wait_cause`): a RetryInfo's wait, taken, or a call's whole deadline, which
        # ran out before an answer came (users hashing behind a long queue, under load, looks like that).
        self.causes: dict[str, Waits] = {}
        # The calls that waited, for one cause or several (each cause counts them apart).
        self.calls_waited = 0
        # When the shoppers set out (time.monotonic); None until they do.
        self.started: float | None = None

    def elapsed(self) -> float:
        """Seconds since the shoppers set out (0 before)."""
        return 0.0 if self.started is None else time.monotonic() - self.started

    async def call(
        self,
        method: str,
        call: Callable[[], Awaitable[T]],
        wait: Callable[[float], Awaitable[float | None]] | None = None,
    ) -> T | None:
        result, _, _ = await self.answer(method, call, wait)
        return result

    async def answer(
        self,
        method: str,
        call: Callable[[], Awaitable[T]],
        wait: Callable[[float], Awaitable[float | None]] | None = None,
    ) -> tuple[T | None, str, error_details_pb2.ErrorInfo | None]:
        """The result (None on an error), the outcome as tallied (the status code's name, or PRICE_CHANGED) and
        the error's ErrorInfo, if it had one. An answer asking to come back later (COME_BACK_LATER with a
        RetryInfo) is not tallied while `wait` takes the delay asked for (it answers the seconds it waited, or
        None when it will not wait): the call is made again, and the wait counted, up to MAX_RETRY_WAITS_PER_CALL
        times. A call that ran out of its deadline is counted as a wait too, for the time it took."""
        waited_for: set[str] = set()  # a call counts once per cause, however often it waited for it
        for attempt in range(1, MAX_RETRY_WAITS_PER_CALL + 2):
            started = time.monotonic()
            try:
                result = await call()
            except (grpc.aio.AioRpcError, HttpCallError) as error:
                cause = wait_cause(error)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._waited(method, cause, time.monotonic() - started, waited_for)
                delay = _retry_delay(error) if error.code() in COME_BACK_LATER else None
                waited = None
                if wait is not None and delay is not None and attempt <= MAX_RETRY_WAITS_PER_CALL:
                    waited = await wait(delay)
                if waited is not None:
                    self._waited(method, cause, waited, waited_for)
                    continue
                return None, self._tallied(method, error), _error_info(error)
            self.answers[method, "OK"] += 1
            return result, "OK", None
        raise AssertionError("unreachable: the last attempt never waits")

    def _waited(self, method: str, cause: str, seconds: float, waited_for: set[str]) -> None:
        """Count a wait of the call that already waited for `waited_for` (which it joins)."""
        if not waited_for:
            self.calls_waited += 1
        waits = self.causes.setdefault(cause, Waits())
        if cause not in waited_for:
            waits.calls[method] += 1
            waited_for.add(cause)
        waits.times += 1
        waits.seconds += seconds

    def _tallied(self, method: str, error: grpc.aio.AioRpcError | HttpCallError) -> str:
        info = _error_info(error)
        changed = (
            error.code() == grpc.StatusCode.FAILED_PRECONDITION and info is not None and info.reason == PRICE_CHANGED
        )
        outcome = PRICE_CHANGED if changed else error.code().name
        self.answers[method, outcome] += 1
        return outcome

    @property
    def faults(self) -> int:
        return sum(n for (_, code), n in self.answers.items() if server_fault(code))

    @property
    def total(self) -> int:
        return sum(self.answers.values())

    def line(self, elapsed: float) -> str:
        codes: Counter[str] = Counter()
        for (_, code), n in self.answers.items():
            codes[code] += n
        said = ", ".join(f"{code} {n}" for code, n in codes.most_common())
        waited = f"; {self.calls_waited} calls waited" if self.calls_waited else ""
        calls = f"{self.total} calls ({self.total / max(elapsed, 1e-9):.1f}/s)"
        return f"{elapsed:5.0f} s  {calls}: {said or 'none yet'}{waited}"

    def waited(self) -> str:
        """Why the shoppers waited: a line per cause, the longest wait first, with the calls that waited for it
        (by method) and how long in all ("" when none). A RetryInfo's wait was taken, then the call made again;
        a deadline was waited out to the end, and that answer tallied."""
        lines = []
        for cause, waits in sorted(self.causes.items(), key=lambda item: (-item[1].seconds, item[0])):
            calls = waits.calls.total()
            each = ", ".join(f"{method} {n}" for method, n in sorted(waits.calls.items()))
            how = (
                "to the deadline, unanswered"
                if cause.startswith(grpc.StatusCode.DEADLINE_EXCEEDED.name)
                else "as RetryInfo asked, then asked again"
            )
            lines.append(
                f"  {cause}: {calls} call(s) waited {waits.seconds:.1f} s in all, {waits.times} time(s), {how} ({each})"
            )
        return "\n".join(["waited, by cause:", *lines]) if lines else ""

    def by_method(self) -> dict[str, dict[str, int]]:
        answers: dict[str, dict[str, int]] = {}
        for (method, code), n in self.answers.items():
            answers.setdefault(method, {})[code] = n
        return answers

    def table(self) -> str:
        methods = sorted({method for method, _ in self.answers})
        codes = sorted({code for _, code in self.answers}, key=lambda c: (c != "OK", c))
        rows = [(m, *(self.answers[m, c] for c in codes)) for m in methods]
        return tabulate(rows, headers=("METHOD", *codes), tablefmt="plain")


class Shopper:
    def __init__(
        self, stub: ShopServiceAsyncStub, tally: Tally, rng: random.Random, think: tuple[float, float]
    ) -> None:
        self._stub = stub
        self._tally = tally
        self._rng = rng
        self._think = think
        self._auth: tuple[tuple[str, str], ...] = ()
        self._user_id = ""
        # Each product's price as the shopper last read it (a page of products, a product page): what it
        # expects to pay.
        self._prices: dict[str, money_pb2.Money] = {}
        self._orders: list[str] = []
        # When the run stops (time.monotonic()): no wait a RetryInfo asks for is taken past it.
        self._until = math.inf

    async def run(self, until: float) -> None:
        self._until = until
        await self._sign_up()
        while time.monotonic() < until:
            step = self._rng.choices(
                (self._browse, self._search, self._look, self._buy, self._check), weights=(3, 2, 4, 2, 1)
            )[0]
            await step()
            await asyncio.sleep(self._rng.uniform(*self._think))

    async def _wait(self, delay: float) -> float | None:
        """Wait as a RetryInfo asked, jittered, and answer how long; None, at once, when the jittered wait is longer
        than MAX_RETRY_WAIT_SECONDS or would end past the run's stop. Cancelled with the shopper (Ctrl-C)."""
        pause = delay * self._rng.uniform(1, 1 + RETRY_JITTER)
        if pause > MAX_RETRY_WAIT_SECONDS or time.monotonic() + pause > self._until:
            return None
        await asyncio.sleep(pause)
        return pause

    async def _sign_up(self) -> None:
        email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
        register = shop_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Shopper")
        registered = await self._tally.call("Register", lambda: self._stub.Register(register, timeout=10), self._wait)
        if registered is not None:
            self._user_id = registered.user.id
        login_request = shop_pb2.LoginRequest(email=email, password=PASSWORD)
        login = await self._tally.call("Login", lambda: self._stub.Login(login_request, timeout=10), self._wait)
        if login is not None:
            self._auth = (("authorization", f"Bearer {login.access_token}"),)

    async def _browse(self) -> None:
        page = await self._tally.call(
            "ListProducts",
            lambda: self._stub.ListProducts(shop_pb2.ListProductsRequest(page_size=10), timeout=10),
            self._wait,
        )
        if page is not None:
            self._prices = {p.id: p.price for p in page.products} or self._prices

    async def _search(self) -> None:
        request = shop_pb2.SearchProductsRequest(query=self._rng.choice(SEARCHES), page_size=10)
        await self._tally.call("SearchProducts", lambda: self._stub.SearchProducts(request, timeout=10), self._wait)

    async def _look(self) -> None:
        if not self._prices:
            await self._browse()
            return
        request = shop_pb2.GetProductPageRequest(product_id=self._rng.choice(list(self._prices)))
        page = await self._tally.call(
            "GetProductPage", lambda: self._stub.GetProductPage(request, timeout=10), self._wait
        )
        if page is not None:
            self._prices[request.product_id] = page.product.price

    async def _buy(self) -> None:
        if not self._prices or not self._auth:
            await self._browse()
            return
        declined = self._rng.random() < 0.1
        item = orders_pb2.CartItem(product_id=self._rng.choice(list(self._prices)), quantity=self._rng.randint(1, 2))
        price = self._prices[item.product_id]
        request = shop_pb2.PlaceOrderRequest(
            items=[item],
            currency=price.currency,
            shipping_address=orders_pb2.ShippingAddress(
                full_name="Sam Shopper", street="1 Market Street", city="Springfield", postal_code="12345", country="US"
            ),
            card=payments_pb2.PaymentCard(
                number=DECLINED_CARD if declined else GOOD_CARD, exp_month=12, exp_year=2031, cvv="123"
            ),
            # The total the shopper saw for its cart: it agrees to pay that, not whatever the price is by now.
            expected_total=money_pb2.Money(amount_minor=price.amount_minor * item.quantity, currency=price.currency),
        )
        metadata = (*self._auth, ("idempotency-key", str(uuid.uuid4())))
        placed, code, info = await self._tally.answer(
            "PlaceOrder", lambda: self._stub.PlaceOrder(request, metadata=metadata, timeout=30), self._wait
        )
        current = info.metadata.get("current_total_minor", "") if info is not None else ""
        price_changed = code == PRICE_CHANGED and current.isdigit()
        if price_changed:
            # As a person would: read the new total, agree to it once, and place the order again. The same key:
            # nothing was recorded under it, and a retry of this attempt must not place a second order.
            request.expected_total.amount_minor = int(current)
            placed, code, _ = await self._tally.answer(
                "PlaceOrder", lambda: self._stub.PlaceOrder(request, metadata=metadata, timeout=30), self._wait
            )
        order_id = placed.order.id if placed is not None else ""
        self._tally.checkouts.append(
            Checkout(
                self._user_id,
                item.product_id,
                item.quantity,
                declined,
                code,
                order_id,
                request.expected_total.amount_minor,
                price_changed,
            )
        )
        if order_id:
            self._orders.append(order_id)

    async def _check(self) -> None:
        if not self._orders:
            await self._browse()
            return
        request = shop_pb2.GetOrderRequest(order_id=self._rng.choice(self._orders))
        await self._tally.call(
            "GetOrder", lambda: self._stub.GetOrder(request, metadata=self._auth, timeout=10), self._wait
        )
        mail = shop_pb2.ListNotificationsRequest(page_size=10)
        await self._tally.call(
            "ListNotifications",
            lambda: self._stub.ListNotifications(mail, metadata=self._auth, timeout=10),
            self._wait,
        )


async def shop(args: argparse.Namespace, out: TextIO, tally: Tally | None = None) -> Tally:
    """Shop as `args` say into `tally` (a new one by default), which holds what was answered so far if this is
    cancelled (`main`: Ctrl-C)."""
    tally = Tally() if tally is None else tally
    if args.http:
        async with aiohttp.ClientSession(args.http) as session:
            try:
                async with asyncio.timeout(args.connect_timeout), session.get("/healthz") as ready:
                    ready.raise_for_status()
            except (TimeoutError, aiohttp.ClientError):
                raise ConnectionError(f"cannot reach the HTTP/JSON API at {args.http}{args.unreachable_hint}") from None
            # HttpShop answers the stub's calls (same names, requests, metadata, timeout and replies).
            return await crowd(cast("ShopServiceAsyncStub", HttpShop(session)), args, out, tally)
    async with grpc.aio.insecure_channel(args.target) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        except TimeoutError:
            raise ConnectionError(f"cannot reach the gateway at {args.target}{args.unreachable_hint}") from None
        return await crowd(shop_pb2_grpc.ShopServiceStub(channel), args, out, tally)


async def crowd(stub: ShopServiceAsyncStub, args: argparse.Namespace, out: TextIO, tally: Tally) -> Tally:
    """Every shopper at once until the duration is over, a progress line every report period."""
    rng = random.Random(args.seed)
    tally.started = time.monotonic()
    until = tally.started + args.duration
    shoppers = [Shopper(stub, tally, random.Random(rng.random()), args.think) for _ in range(args.shoppers)]
    tasks = [asyncio.create_task(s.run(until)) for s in shoppers]
    try:
        while True:
            _, pending = await asyncio.wait(tasks, timeout=args.report_every)
            if not pending:
                break
            print(tally.line(tally.elapsed()), file=out, flush=True)
    finally:
        # Cancelled (Ctrl-C): the shoppers stop before the channel they call on closes under them.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        task.result()  # a shopper's own bug surfaces here, not as a silent gap in the traffic
    return tally


def base_url(value: str) -> str:
    """http(s)://host:port, nothing after it (the routes are absolute paths)."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise argparse.ArgumentTypeError(f"{value!r}: want http://HOST:PORT (the edge's base URL, no path)")
    return f"{parts.scheme}://{parts.netloc}"


def think_range(value: str) -> tuple[float, float]:
    low, _, high = value.partition(",")
    pause = (float(low), float(high or low))
    if not 0 <= pause[0] <= pause[1] < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r}: want MIN,MAX seconds with 0 <= MIN <= MAX (finite)")
    return pause


LOCAL_GATEWAY = f"{LOCAL_HOST}:{SERVICES['gateway'].grpc_port}"
LOCAL_HTTP_URL = f"http://{LOCAL_HOST}:{LOCAL_HTTP_PORT}"
# `--http` given without a URL: not a string, which argparse would pass through `base_url` like a typed one.
_STACKS_EDGE = object()


def arguments(argv: Sequence[str] | None = None, err: TextIO = sys.stderr) -> argparse.Namespace:
    """The command line's settings, as `shop` takes them."""
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.shoppers", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=None,
        help=f"the gateway (default: the running local stack's, named by .data/stack.json, else {LOCAL_GATEWAY})",
    )
    parser.add_argument(
        "--http",
        nargs="?",
        default=None,
        const=_STACKS_EDGE,
        type=base_url,
        metavar="URL",
        help="shop over the HTTP/JSON edge at URL instead (without URL: the running local stack's, named by "
        f".data/stack.json, else {LOCAL_HTTP_URL})",
    )
    parser.add_argument("--shoppers", type=whole_number(1), default=5, help="how many at once (default %(default)s)")
    parser.add_argument("--duration", type=seconds(zero=True), default=60.0, help="seconds (default %(default)s)")
    parser.add_argument("--think", type=think_range, default=(0.5, 2.0), help="pause between steps: MIN,MAX seconds")
    parser.add_argument("--report-every", type=seconds(), default=10.0, help="seconds between progress lines")
    parser.add_argument("--connect-timeout", type=seconds(), default=10.0, help="seconds to reach the gateway")
    parser.add_argument("--seed", type=int, default=None, help="repeat the same choices")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any call got a server fault")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print the answers as JSON ({"METHOD": {"CODE": n}}, CODE a status or PRICE_CHANGED), progress to stderr',
    )
    args = parser.parse_args(argv)
    # What `shop` adds to the line saying the address does not answer: nothing for one the user gave.
    args.unreachable_hint = ""
    if args.http is _STACKS_EDGE:
        edge = local_http_url(err)
        args.http, args.unreachable_hint = edge.address, unreachable_hint(edge, "HTTP/JSON edge", "--http URL")
    if args.target is None and args.http:
        args.target = LOCAL_GATEWAY  # not called: the edge is
    elif args.target is None:
        gateway = local_gateway(err)
        args.target, args.unreachable_hint = gateway.address, unreachable_hint(gateway, "gateway", "--target")
    return args


def unreachable_hint(local: LocalAddress, what: str, option: str) -> str:
    """The advice for a `local` address that does not answer. Starting `make run` only for make run's own address,
    taken as no running stack named one: the running stack's own (named on stderr) gets none, and make run's
    taken past a stack started without `what` (its `runs no` line on stderr) is that stack's to start, or
    `option`'s to name."""
    if local.stack_runs_without_it:
        return f" (the local stack runs no {what}: start it, or give {option})"
    return " (is `make run` running?)" if local.took_make_runs_default else ""


def local_http_url(err: TextIO) -> LocalAddress:
    """The running local stack's HTTP/JSON edge (`--free-ports` gives it any port), else make run's; said on `err`
    either way, as the one line that tells the user where the shoppers went."""
    return local_address(
        err,
        "the HTTP/JSON edge",
        lambda stack: stack.http_url,
        LOCAL_HTTP_URL,
        runs_no="HTTP/JSON edge (--http-port 0, or no gateway)",
        without="make run's",
    )


def local_gateway(err: TextIO) -> LocalAddress:
    """The running local stack's gateway (`--free-ports` gives it any port), else make run's; said on `err` either
    way, so that a default gateway that does not answer is not taken for the running stack's."""
    return local_address(
        err,
        "the gateway",
        lambda stack: stack.gateway,
        LOCAL_GATEWAY,
        runs_no="gateway (--services)",
        without="make run's",
    )


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = arguments(argv, err)
    tally = Tally()
    interrupted = None
    try:
        run_interruptible(shop(args, err if args.json else out, tally))
    except ConnectionError as exc:
        print(f"error: {exc}", file=err)
        return 1
    except Interrupted as stop:
        # Ctrl-C before the duration was over: what the shoppers had been answered is still the point.
        interrupted = stop
        print(f"{stop}: the tally of {tally.elapsed():.0f} s", file=err)
    if args.json:
        print(json.dumps(tally.by_method(), sort_keys=True), file=out)
    else:
        took = args.duration if interrupted is None else tally.elapsed()
        print(
            f"{tally.total} calls in {took:.0f} s by {args.shoppers} shopper(s):",
            tally.table(),
            sep="\n",
            file=out,
        )
    if tally.causes:
        # Beside the answers, not among them: a refusal waited out was no answer the shopper kept. With --json,
        # on stderr with the progress, so that stdout stays the answers alone.
        print(tally.waited(), file=err if args.json else out)
    if interrupted is not None:
        return interrupted.exit_status
    if args.strict and tally.faults:
        print(f"error: {tally.faults} call(s) got a server fault", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
