"""The simulated shoppers report what the gateway answered and, with --strict, fail on a server fault; they
confirm the total they saw when they place an order, and confirm a changed one once."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.common.v1 import money_pb2
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.orders.v1 import orders_pb2
from shopmesh.users.v1 import users_pb2
from shopmesh_chassis.errors import FailedPrecondition, ResourceExhausted
from shopmesh_chassis.grpc_errors import to_grpc_status, to_rpc_status
from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_chassis.testing import free_port
from shopmesh_platform import shoppers
from shopmesh_platform.http_client import HttpCallError
from shopmesh_platform.shoppers import (
    MAX_RETRY_WAIT_SECONDS,
    MAX_RETRY_WAITS_PER_CALL,
    RETRY_JITTER,
    Shopper,
    Tally,
    arguments,
    main,
    server_fault,
)
from shopmesh_platform.stack import Stack
from shopmesh_platform.topology import LOCAL_HOST, LOCAL_HTTP_PORT

FAST = ["--shoppers", "2", "--duration", "1", "--think", "0.01,0.05", "--report-every", "0.5"]


def ran(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_strict_shoppers_fail_when_the_gateway_answers_with_server_faults() -> None:
    # A gateway that implements nothing: every call is UNIMPLEMENTED, a fault of the server's own.
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop_pb2_grpc.ShopServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        lenient = await asyncio.to_thread(ran, "--target", target, *FAST)
        strict = await asyncio.to_thread(ran, "--target", target, *FAST, "--strict")
        as_json = await asyncio.to_thread(ran, "--target", target, *FAST, "--json")
    finally:
        await server.stop(None)
    assert lenient[0] == 0
    assert "UNIMPLEMENTED" in lenient[1]
    # --json: one document on stdout, the progress lines on stderr.
    answers = json.loads(as_json[1])
    assert answers["Register"]["UNIMPLEMENTED"] >= 2
    assert all(set(codes) == {"UNIMPLEMENTED"} for codes in answers.values())
    assert " calls (" in as_json[2]
    assert strict[0] == 1
    assert re.fullmatch(r"error: [1-9][0-9]* call\(s\) got a server fault\n", strict[2]), strict[2]


def test_an_unreachable_gateway_given_by_hand_is_said_in_one_line_without_make_run_advice() -> None:
    """`--target` names some gateway, not make run's: "is `make run` running?" was wrong advice there, as
    shopmesh-deadletters gives none for a --nats-url of the user's."""
    target = f"127.0.0.1:{free_port()}"
    code, _, err = ran("--target", target, *FAST, "--connect-timeout", "0.5")
    assert code == 1
    assert err == f"error: cannot reach the gateway at {target}\n"


def test_an_unreachable_http_api_given_by_hand_is_said_in_one_line_without_make_run_advice() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = ran("--http", url, *FAST, "--connect-timeout", "0.5")
    assert code == 1
    assert err == f"error: cannot reach the HTTP/JSON API at {url}\n"


def test_without_a_running_stack_a_default_gateway_that_does_not_answer_is_said_to_be_make_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make shoppers` with no stack running said only "cannot reach the gateway at 127.0.0.1:50050", and not
    that it took make run's port because no launcher's .data/stack.json was there. make run's gateway moved to a
    free port: nothing else may answer there."""
    local = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(shoppers, "LOCAL_GATEWAY", local)
    monkeypatch.chdir(tmp_path)
    code, _, err = ran(*FAST, "--connect-timeout", "0.5")
    assert code == 1
    assert err.splitlines() == [
        f"the gateway at {local}: make run's, as no local stack runs: no launcher's .data/stack.json is here",
        f"error: cannot reach the gateway at {local} (is `make run` running?)",
    ]


@pytest.mark.parametrize("mode", ["gateway", "HTTP/JSON edge"])
def test_a_default_that_does_not_answer_past_a_stack_running_without_it_is_blamed_on_that_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """`make run RUN_ARGS="--services catalog,inventory"` runs a stack without the gateway: `make shoppers` took
    make run's default and, when it did not answer, asked "is `make run` running?", although the line before had
    named the running stack that runs none. make run's addresses move to free ports: nothing may answer there."""
    monkeypatch.chdir(tmp_path)
    gateway, edge = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(shoppers, "LOCAL_GATEWAY", gateway)
    monkeypatch.setattr(shoppers, "LOCAL_HTTP_URL", edge)
    stack = LocalStack(stack_file(Path(".data")), os.getpid(), "nats://127.0.0.1:1")  # no gateway, no edge
    write_stack_file(stack)
    http = ["--http"] if mode != "gateway" else []
    code, _, err = ran(*http, *FAST, "--connect-timeout", "0.5")
    assert code == 1
    expected = {
        "gateway": [
            f"{stack.said()} runs no gateway (--services); using {gateway}",
            f"error: cannot reach the gateway at {gateway} (the local stack runs no gateway: start it, or give "
            "--target)",
        ],
        "HTTP/JSON edge": [
            f"{stack.said()} runs no HTTP/JSON edge (--http-port 0, or no gateway); using {edge}",
            f"error: cannot reach the HTTP/JSON API at {edge} (the local stack runs no HTTP/JSON edge: start it, or "
            "give --http URL)",
        ],
    }[mode]
    assert err.splitlines() == expected


@pytest.mark.parametrize("stack", ["edge", "no-edge", "none"])
def test_http_without_a_url_shops_at_the_running_stacks_edge_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: str
) -> None:
    """`--http` wanted a URL even when .data/stack.json named the running stack's edge (on any port under
    --free-ports), which the gRPC mode reads for the gateway: it is read the same way now, and said on stderr;
    without an edge there, make run's own port, said too."""
    monkeypatch.chdir(tmp_path)
    edge = f"http://127.0.0.1:{free_port()}"
    local = f"http://{LOCAL_HOST}:{LOCAL_HTTP_PORT}"
    said = ""
    if stack != "none":
        path = stack_file(Path(".data"))
        write_stack_file(
            LocalStack(path, os.getpid(), "nats://127.0.0.1:1", http_url=edge if stack == "edge" else None)
        )
        said = f"the local stack of {path} (launcher pid {os.getpid()})"
    out, err = io.StringIO(), io.StringIO()
    args = arguments(["--http", *FAST], err)
    expected = {
        "edge": (edge, f"the HTTP/JSON edge at {edge}: {said}\n"),
        # In the one shape of every tool's line (local_stack.local_address), as the gateway's.
        "no-edge": (local, f"{said} runs no HTTP/JSON edge (--http-port 0, or no gateway); using {local}\n"),
        "none": (
            local,
            f"the HTTP/JSON edge at {local}: make run's, as no local stack runs: no launcher's .data/stack.json is "
            "here\n",
        ),
    }[stack]
    assert (args.http, err.getvalue()) == expected
    if stack == "edge":
        # Nothing listens at the edge it named: the usual one line, at that address, and no "is `make run`
        # running?", which the line above just said it is.
        assert main(["--http", *FAST, "--connect-timeout", "0.5"], out, err) == 1
        assert err.getvalue().endswith(f"error: cannot reach the HTTP/JSON API at {edge}\n")


def test_an_http_url_with_a_path_or_no_scheme_is_refused_before_anything_runs() -> None:
    for url in ("127.0.0.1:8080", "http://127.0.0.1:8080/api", "ftp://127.0.0.1:8080"):
        with pytest.raises(SystemExit) as exited:
            main(["--http", url, *FAST])
        assert exited.value.code == 2, url


@pytest.mark.parametrize("shoppers", ["0", "-3"])
async def test_a_crowd_of_no_shoppers_is_refused_as_a_usage_error_not_a_traceback(shoppers: str) -> None:
    # `make shoppers SHOPPERS_ARGS="--shoppers 0"` against a running gateway.
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop_pb2_grpc.ShopServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        argv = ["--target", f"127.0.0.1:{port}", "--duration", "1", "--shoppers", shoppers]
        with pytest.raises(SystemExit) as exited:
            await asyncio.to_thread(main, argv, io.StringIO(), io.StringIO())
    finally:
        await server.stop(None)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "option", [("--report-every", "0"), ("--report-every", "-1"), ("--report-every", "nan"), ("--think", "0,inf")]
)
def test_a_period_that_never_ends_or_never_waits_is_refused_before_anything_runs(option: tuple[str, str]) -> None:
    # A report period of 0 spun on asyncio.wait without sleeping; nan or inf never report or never stop.
    with pytest.raises(SystemExit) as exited:
        main([*FAST, *option], io.StringIO(), io.StringIO())
    assert exited.value.code == 2, option


class PricedGateway(shop_pb2_grpc.ShopServiceServicer):
    """A gateway whose catalog lists the kettle at 25.00 while orders price it at `prices` (one per PlaceOrder
    call, the last one kept): it refuses an expected_total that is not the current total as orders does."""

    LISTED = 2500

    def __init__(self, *prices: int) -> None:
        self._prices = list(prices)
        self.placed: list[tuple[str, int, str]] = []  # (idempotency key, expected total, currency) per call

    async def Register(self, request: Any, context: Any) -> shop_pb2.RegisterResponse:
        return shop_pb2.RegisterResponse(user=users_pb2.User(id="usr_shopper", email=request.email))

    async def Login(self, request: Any, context: Any) -> shop_pb2.LoginResponse:
        return shop_pb2.LoginResponse(access_token="token", user_id="usr_shopper")

    async def ListProducts(self, request: Any, context: Any) -> shop_pb2.ListProductsResponse:
        price = money_pb2.Money(amount_minor=self.LISTED, currency="USD")
        return shop_pb2.ListProductsResponse(products=[catalog_pb2.Product(id="prod_kettle", price=price)])

    async def PlaceOrder(self, request: Any, context: Any) -> shop_pb2.PlaceOrderResponse:
        key = dict(context.invocation_metadata())["idempotency-key"]
        self.placed.append((key, request.expected_total.amount_minor, request.expected_total.currency))
        price = self._prices.pop(0) if len(self._prices) > 1 else self._prices[0]
        total = price * sum(item.quantity for item in request.items)
        if request.expected_total.amount_minor != total:
            refused = FailedPrecondition(
                "the prices changed",
                reason="PRICE_CHANGED",
                metadata={"current_total_minor": str(total), "currency": "USD"},
            )
            await context.abort_with_status(to_grpc_status(to_rpc_status(refused, "shopmesh.orders")))
        return shop_pb2.PlaceOrderResponse(order=orders_pb2.Order(id=f"ord_{len(self.placed)}"))


async def checkout_against(gateway: PricedGateway) -> Tally:
    """One shopper signs up, browses and places one order (a card that is not declined: the seed's first draw)."""
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tally = Tally()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            shopper = Shopper(shop_pb2_grpc.ShopServiceStub(channel), tally, random.Random(3), (0.0, 0.0))
            await shopper._sign_up()
            await shopper._browse()
            await shopper._buy()
    finally:
        await server.stop(None)
    return tally


async def test_a_shopper_sends_the_total_it_saw_and_is_placed_at_once_when_the_price_held() -> None:
    gateway = PricedGateway(PricedGateway.LISTED)
    tally = await checkout_against(gateway)
    [checkout] = tally.checkouts
    assert (checkout.code, checkout.price_changed, checkout.declined_card) == ("OK", False, False)
    assert [(total, currency) for _, total, currency in gateway.placed] == [(2500 * checkout.quantity, "USD")]
    assert checkout.expected_total_minor == 2500 * checkout.quantity
    assert tally.by_method()["PlaceOrder"] == {"OK": 1}


async def test_a_shopper_refused_price_changed_confirms_the_new_total_once_and_places_the_same_order_again() -> None:
    gateway = PricedGateway(3000)
    tally = await checkout_against(gateway)
    [checkout] = tally.checkouts
    assert (checkout.code, checkout.order_id, checkout.price_changed) == ("OK", "ord_2", True)
    # The stale total, then the one the refusal named, under the same key (nothing was recorded under it).
    [(first_key, seen, _), (second_key, confirmed, _)] = gateway.placed
    assert (seen, confirmed, second_key) == (2500 * checkout.quantity, 3000 * checkout.quantity, first_key)
    assert checkout.expected_total_minor == confirmed
    # A changed price is an answer the client acted on, tallied as itself: no server fault.
    assert tally.by_method()["PlaceOrder"] == {"PRICE_CHANGED": 1, "OK": 1}
    assert tally.faults == 0
    assert "PRICE_CHANGED" in tally.table()


async def test_a_shopper_whose_price_changed_again_gives_up_after_one_confirmation() -> None:
    gateway = PricedGateway(3000, 3500)
    tally = await checkout_against(gateway)
    [checkout] = tally.checkouts
    assert (checkout.code, checkout.order_id, checkout.price_changed) == ("PRICE_CHANGED", "", True)
    assert len(gateway.placed) == 2
    assert tally.by_method()["PlaceOrder"] == {"PRICE_CHANGED": 2}
    assert tally.faults == 0


def test_price_changed_as_tallied_is_no_server_fault() -> None:
    assert not server_fault("PRICE_CHANGED")
    assert server_fault("INTERNAL")
    assert not server_fault("FAILED_PRECONDITION")


# One sign-up at a time from an address, one more every 0.25 s: three shoppers signing up at once (a Register and
# a Login each) are refused RATE_LIMITED, with RetryInfo, four times out of six at least. The per-address bucket of
# every call answers RATE_LIMITED too: roomy, so that its refusals of the shoppers' browsing (waited out as fast
# as catalog's absence answers) are not counted as the password bucket's.
TINY_PASSWORD_BUCKET = {
    "PASSWORD_RATE_LIMIT_BURST": "1",
    "PASSWORD_RATE_LIMIT_PER_SECOND": "4",
    "RATE_LIMIT_BURST": "100000",
    "RATE_LIMIT_PER_SECOND": "100000",
}


async def test_shoppers_refused_by_the_gateways_password_bucket_wait_as_asked_and_all_sign_up(tmp_path: Path) -> None:
    """Against a real gateway (and users) from one address, as `make shoppers --target` against a cluster: the
    gateway's per-address password bucket refuses most sign-ups RATE_LIMITED with the wait to take. Shoppers
    tallied the refusal and, without an account, never shopped; now each waits as asked and signs up, and the
    summary counts the waits."""
    async with Stack.for_tests(tmp_path, services=["users", "gateway"], env={"gateway": TINY_PASSWORD_BUCKET}) as stack:
        # Room for six hashes after the refills on a loaded machine; catalog is not running, so the rest of the
        # run is the shoppers waiting out the gateway's DEPENDENCY_UNAVAILABLE.
        argv = ["--target", stack.address("gateway"), "--shoppers", "3", "--duration", "8", "--think", "0.01,0.05"]
        code, out, err = await asyncio.to_thread(ran, *argv, "--seed", "5", "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert (answers["Register"], answers["Login"]) == ({"OK": 3}, {"OK": 3}), answers
    waited = re.search(
        r"^  RESOURCE_EXHAUSTED RATE_LIMITED: \d+ call\(s\) waited .* s in all, (\d+) time\(s\), as RetryInfo asked, "
        r"then asked again \((.*)\)$",
        err,
        re.MULTILINE,
    )
    assert waited is not None, err
    signing_up = dict(entry.rsplit(" ", 1) for entry in waited[2].split(", "))
    assert set(signing_up) <= {"Register", "Login"}, err
    assert int(waited[1]) >= 3, err


async def test_a_step_refused_again_and_again_with_a_retry_info_is_tallied_after_a_bounded_number_of_waits() -> None:
    """A bucket that stays empty must not hold a shopper on one step, even in a run with no end (waits that
    always fit): the call is made MAX_RETRY_WAITS_PER_CALL + 1 times, then its refusal is tallied."""
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise HttpCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate limited", retry_delay=0.02)

    async def waited(delay: float) -> float:
        return delay

    tally = Tally()
    # Bounded so that the old, unbounded loop fails here instead of hanging the run.
    result, outcome, _ = await asyncio.wait_for(tally.answer("Register", refused, waited), timeout=10)
    assert (result, outcome, calls) == (None, "RESOURCE_EXHAUSTED", MAX_RETRY_WAITS_PER_CALL + 1)
    # The summary the user reads: one call, which waited as often as it may. Waits of 0.02 s add up to an even
    # hundredth, never on the edge where the summary's one decimal rounds.
    waited_s = MAX_RETRY_WAITS_PER_CALL * 0.02
    assert tally.waited() == (
        "waited, by cause:\n"
        f"  RESOURCE_EXHAUSTED: 1 call(s) waited {waited_s:.1f} s in all, {MAX_RETRY_WAITS_PER_CALL} time(s), "
        "as RetryInfo asked, then asked again (Register 1)"
    )
    assert tally.answers["Register", "RESOURCE_EXHAUSTED"] == 1


class _MostJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_wait_the_jitter_stretches_past_the_longest_is_not_taken() -> None:
    """The cap holds for the wait taken, jitter included: a delay just under it, stretched past it, is not
    waited (the refusal is tallied at once)."""
    shopper = Shopper(
        shop_pb2_grpc.ShopServiceStub(grpc.aio.insecure_channel("127.0.0.1:1")), Tally(), _MostJitter(), (0.0, 0.0)
    )
    delay = MAX_RETRY_WAIT_SECONDS / (1 + RETRY_JITTER) + 1
    assert delay < MAX_RETRY_WAIT_SECONDS
    assert await asyncio.wait_for(shopper._wait(delay), timeout=5) is None


# Short enough for any run, long enough to be a wait taken (well inside --duration, jitter included).
RETRY_SECONDS = 0.01


class RefusingGateway(shop_pb2_grpc.ShopServiceServicer):
    """A gateway that refuses each sign-up for a reason of its own before it answers: Register twice from its
    rate limit (RESOURCE_EXHAUSTED RATE_LIMITED), Login once from users' full hashing queue (RESOURCE_EXHAUSTED
    PASSWORD_HASHING_BUSY), both with a RetryInfo, then Login runs out of its deadline (DEADLINE_EXCEEDED, as
    the gateway answers when users does not within its budget). Everything else: UNIMPLEMENTED."""

    def __init__(self) -> None:
        self._register_refusals = 2
        self._login_answers = ["PASSWORD_HASHING_BUSY", "DEADLINE_EXCEEDED"]

    async def Register(self, request: Any, context: Any) -> shop_pb2.RegisterResponse:
        if self._register_refusals:
            self._register_refusals -= 1
            await self._refuse(context, "RATE_LIMITED", "shopmesh.gateway")
        return shop_pb2.RegisterResponse(user=users_pb2.User(id="usr_shopper", email=request.email))

    async def Login(self, request: Any, context: Any) -> shop_pb2.LoginResponse:
        answer = self._login_answers.pop(0) if self._login_answers else "DEADLINE_EXCEEDED"
        if answer == "PASSWORD_HASHING_BUSY":
            await self._refuse(context, answer, "shopmesh.users")
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "users did not answer within the gateway's budget")
        raise AssertionError("abort raises")

    @staticmethod
    async def _refuse(context: Any, reason: str, domain: str) -> None:
        refused = ResourceExhausted("come back later", reason=reason, retry_after_seconds=RETRY_SECONDS)
        await context.abort_with_status(to_grpc_status(to_rpc_status(refused, domain)))


async def test_the_summary_says_per_cause_how_many_calls_waited_and_how_long() -> None:
    """The summary said only that shoppers waited as RetryInfo asked, by method: not whether the gateway's rate
    limit, users' hashing queue or a deadline ran out under load held them. Now a line per cause, from the
    status code and ErrorInfo reason of the answer: how many calls waited, how many times, how long in all."""
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(RefusingGateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        argv = ["--target", f"127.0.0.1:{port}", "--shoppers", "1", "--duration", "2", "--think", "0.01,0.05"]
        code, out, err = await asyncio.to_thread(ran, *argv, "--seed", "5", "--json")
    finally:
        await server.stop(None)
    assert code == 0, err
    # A deadline waited out is an answer; the refusals waited out are not.
    answers = json.loads(out)
    assert (answers["Register"], answers["Login"]) == ({"OK": 1}, {"DEADLINE_EXCEEDED": 1}), answers
    lines = err.splitlines()
    assert "waited, by cause:" in lines, err
    cause_line = r"  ([A-Z_ ]+): (\d+) call\(s\) waited \d+\.\d s in all, (\d+) time\(s\), (.*)"
    causes = {
        match[1]: match.groups()[1:]
        for line in lines[lines.index("waited, by cause:") + 1 :]
        if (match := re.fullmatch(cause_line, line))
    }
    assert causes == {
        # One call, Register, refused twice: one call that waited two times.
        "RESOURCE_EXHAUSTED RATE_LIMITED": ("1", "2", "as RetryInfo asked, then asked again (Register 1)"),
        "RESOURCE_EXHAUSTED PASSWORD_HASHING_BUSY": ("1", "1", "as RetryInfo asked, then asked again (Login 1)"),
        "DEADLINE_EXCEEDED": ("1", "1", "to the deadline, unanswered (Login 1)"),
    }, err


async def test_the_progress_line_counts_a_call_that_waited_for_two_causes_once() -> None:
    """The progress line's "N calls waited" summed each cause's calls, so a call refused by the rate limit and
    then run out of its deadline was two calls that waited."""
    answers = [
        HttpCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate limited", retry_delay=0.01),
        HttpCallError(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "no answer in time"),
    ]

    async def refused() -> None:
        raise answers.pop(0)

    async def waited(delay: float) -> float:
        return delay

    tally = Tally()
    result, outcome, _ = await asyncio.wait_for(tally.answer("Login", refused, waited), timeout=10)
    assert (result, outcome) == (None, "DEADLINE_EXCEEDED")
    assert set(tally.causes) == {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, tally.causes
    assert tally.line(1.0).endswith("; 1 calls waited"), tally.line(1.0)
