"""Every RPC of every service keeps the wire conventions (docs/contracts.md) for any request a client can
send: generated requests, from nonsense to almost right, go over real gRPC to the whole stack started by
the same launcher as `make run`, once on SQLite and once on PostgreSQL.

For each answer that is not OK, the test demands what a client, a mesh and an on-call engineer rely on:
no INTERNAL / UNKNOWN (a client mistake is never the server's fault), trailers-only (no initial
metadata: the status travels in the only HEADERS frame, where a mesh sees it), `google.rpc.Status`
details matching the status code, an ErrorInfo with an UPPER_SNAKE_CASE reason in a `shopmesh.*`
domain, field violations for INVALID_ARGUMENT that name a real field of the request (or the metadata
key at fault), and nothing of the server's internals in the message. Two conventions about calls in
sequence are checked for every RPC they apply to: duplicates of an IDEMPOTENT call sent at once end in
one outcome, and paging through a list gives each item once. When the run is over every service still
runs and answers its health check.

Hypothesis draws the requests (tests/contract/requests.py). The draws are fixed (`derandomize`), so CI
is repeatable; `CONTRACT_EXAMPLES=1200 CONTRACT_RANDOM=1 pytest tests/contract` explores further.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2_grpc
from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.db import create_postgres_engine, is_sqlite
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.pagination import INVALID_PAGE_TOKEN, MAX_PAGE_SIZE
from shopmesh_chassis.testing import eventually, health_status
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_platform.stack import Stack, postgres_env
from shopmesh_platform.topology import SERVICES

from .conventions import call, contract_methods, error_contract_violations, unary
from .exemplars import exemplar
from .requests import messages, mutations

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "40"))
RANDOM = os.environ.get("CONTRACT_RANDOM") == "1"
ENV = {
    # The gateway's rate limit would answer most of the generated calls RESOURCE_EXHAUSTED (a correct
    # answer, tested in the gateway's own tests) and keep them from reaching anything else.
    "gateway": {
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "PASSWORD_RATE_LIMIT_PER_SECOND": "100000",
        "PASSWORD_RATE_LIMIT_BURST": "100000",
    },
    # argon2id at its cheapest: the conventions concern the answers, which the costs do not change (the same
    # hash and verify code runs), while at the default 64 MiB x 3 passes each of the hundreds of generated
    # Register and Login calls spent up to half a second of CPU hashing on a loaded machine.
    "users": {
        "PASSWORD_HASH_TIME_COST": "1",
        "PASSWORD_HASH_MEMORY_KIB": "8",
        "PASSWORD_HASH_PARALLELISM": "1",
    },
}
PASSWORD = "correct horse battery staple"
REUSED_KEY = "contract-reused-key"
METHODS = contract_methods()
# The test card payments declines (docs/storefront.md).
DECLINED_CARD = "4000000000000002"


@dataclass(frozen=True)
class Known:
    """Values that exist in the running stack, so that generated requests also reach real entities."""

    strings: tuple[str, ...]
    user_id: str
    access_token: str
    # Placeholders of the exemplars (tests/contract/exemplars.py).
    values: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def stack(module_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The whole stack on SQLite files (`make run`) and on PostgreSQL (Kubernetes), which refuses what
    SQLite takes (a NUL in a text value, for one): a client mistake must not reach either as INTERNAL."""
    env = {name: dict(values) for name, values in ENV.items()}
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        for name, values in postgres_env(server).items():
            env.setdefault(name, {}).update(values)
    async with Stack.for_tests(module_dir / request.param, env=env) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def known(stack: Stack) -> Known:
    found = await entities(stack)
    return await with_a_second_page_of_every_list(stack, found)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def signing_out(stack: Stack) -> Known:
    """A user of its own for the SignOut calls: each one that succeeds revokes its user's tokens, and the
    other RPCs' calls (paging through the known user's orders, for one) need the known user's token to work."""
    return await entities(stack)


def is_sign_out(method: MethodDescriptor) -> bool:
    return method.name == "SignOut"


async def entities(stack: Stack) -> Known:
    """A new user with a token, an order, its payment, a reservation, the catalog's ids; the order and
    the reservation are made from the exemplars, as valid requests."""
    by_name = {method.full_name: method for _, method in METHODS}
    email = f"contract-{uuid.uuid4().hex[:8]}@example.com"
    async with grpc.aio.insecure_channel(stack.address("catalog")) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        first_page = await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=3))
        categories = (await catalog.ListCategories(catalog_pb2.ListCategoriesRequest())).categories
        # The category the exemplars search "coffee" in: one where that finds something to page through.
        coffee = await catalog.SearchProducts(catalog_pb2.SearchProductsRequest(query="coffee", page_size=1))
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        await shop.Register(shop_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Contract"))
        login = await shop.Login(shop_pb2.LoginRequest(email=email, password=PASSWORD))
        values = {
            "run": uuid.uuid4().hex[:12],
            "password": PASSWORD,
            "email": email,
            "user": login.user_id,
            "product": first_page.products[0].id,
            "product_price": str(first_page.products[0].price.amount_minor),
            "other_product": first_page.products[1].id,
            "category": coffee.products[0].category,
            "page_token": first_page.next_page_token,
        }
        placed = await shop.PlaceOrder(
            exemplar(by_name["shopmesh.gateway.v1.ShopService.PlaceOrder"], values),
            metadata=(("authorization", f"Bearer {login.access_token}"), *idempotency_metadata(str(uuid.uuid4()))),
            timeout=30,
        )
    async with grpc.aio.insecure_channel(stack.address("payments")) as channel:
        payments = payments_pb2_grpc.PaymentsServiceStub(channel)
        paid = await payments.ListPayments(payments_pb2.ListPaymentsRequest(order_id=placed.order.id))
    async with grpc.aio.insecure_channel(stack.address("inventory")) as channel:
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        reserved = await inventory.Reserve(
            exemplar(by_name["shopmesh.inventory.v1.InventoryService.Reserve"], values),
            metadata=idempotency_metadata(str(uuid.uuid4())),
        )
    values |= {"order": placed.order.id, "payment": paid.payments[0].id, "reservation": reserved.reservation.id}
    strings = (
        *(value for name, value in values.items() if name not in ("run", "password", "product_price")),
        reserved.reservation.order_id,
        *(p.id for p in first_page.products[2:]),
        *(c.id for c in categories),
    )
    return Known(strings=strings, user_id=login.user_id, access_token=login.access_token, values=values)


async def with_a_second_page_of_every_list(stack: Stack, known: Known) -> Known:
    """`known` with two items in every list an exemplar pages through, so that a page of one has a next
    page token to check, whatever ran before: a second order of the user (two orders, and in time two
    notifications, one for each confirmation) and an order payments holds two payments for, a declined
    card's and then a captured one (`{charged_order}`). That order is payments' alone: orders never
    placed it, so no saga rechecks or refunds it, and it is none of the known user's orders."""
    by_name = {method.full_name: method for _, method in METHODS}
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        await shop.PlaceOrder(
            exemplar(by_name["shopmesh.gateway.v1.ShopService.PlaceOrder"], known.values),
            metadata=(("authorization", f"Bearer {known.access_token}"), *idempotency_metadata(str(uuid.uuid4()))),
            timeout=30,
        )
    charged_order = f"ord_contract_{known.values['run']}_paged"
    # Charge's exemplar (a valid amount and card) for that order.
    charge, declined = payments_pb2.ChargeRequest(), payments_pb2.ChargeRequest()
    charge.CopyFrom(exemplar(by_name["shopmesh.payments.v1.PaymentsService.Charge"], known.values))
    charge.order_id = charged_order
    declined.CopyFrom(charge)
    declined.card.number = DECLINED_CARD
    async with grpc.aio.insecure_channel(stack.address("payments")) as channel:
        payments = payments_pb2_grpc.PaymentsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await payments.Charge(declined, metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
        await payments.Charge(charge, metadata=idempotency_metadata(str(uuid.uuid4())), timeout=30)
    async with grpc.aio.insecure_channel(stack.address("notifications")) as channel:
        notifications = notifications_pb2_grpc.NotificationsServiceStub(channel)

        async def both_confirmations_noted() -> bool:
            listed = await notifications.ListNotifications(
                notifications_pb2.ListNotificationsRequest(user_id=known.user_id, page_size=MAX_PAGE_SIZE),
                metadata=(("x-user-id", known.user_id),),
                timeout=30,
            )
            return len(listed.notifications) >= 2

        await eventually(
            both_confirmations_noted, "a notification for each of the known user's two orders", interval=0.2
        )
    values = known.values | {"charged_order": charged_order}
    return Known(
        strings=(*known.strings, charged_order), user_id=known.user_id, access_token=known.access_token, values=values
    )


def valid_metadata(known: Known, service: str, key: str) -> tuple[tuple[str, str], ...]:
    """What a well-behaved caller of `service` sends: an idempotency key, the user, and (to the gateway
    only) the user's token."""
    meta: tuple[tuple[str, str], ...] = (("idempotency-key", key), ("x-user-id", known.user_id))
    if service == "gateway":
        meta += (("authorization", f"Bearer {known.access_token}"),)
    return meta


def metadata(known: Known, service: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Request metadata as clients send it, and as they get it wrong."""
    valid = st.uuids().map(lambda key: valid_metadata(known, service, str(key)))
    return st.one_of(valid, _any_metadata(known, service))


def _any_metadata(known: Known, service: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    printable = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
    key = st.one_of(st.none(), st.just(REUSED_KEY), st.uuids().map(str), st.just(""), st.just("k" * 300), printable)
    user = st.one_of(st.none(), st.just(known.user_id), printable)
    auth = st.one_of(
        st.none(),
        st.just(f"Bearer {known.access_token}"),
        st.just(f"bearer {known.access_token}"),
        st.just("Bearer "),
        st.just("Basic Zm9vOmJhcg=="),
        printable.map(lambda token: f"Bearer {token}"),
    )

    def pairs(values: tuple[str | None, str | None, str | None]) -> tuple[tuple[str, str], ...]:
        names = ("idempotency-key", "x-user-id", "authorization")
        return tuple((name, value) for name, value in zip(names, values, strict=True) if value is not None)

    return st.tuples(key, user, auth if service == "gateway" else st.none()).map(pairs)


@pytest.fixture(scope="module")
def channels(stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    # Plain blocking channels, nothing of the chassis: what any client has. Blocking, because Hypothesis
    # drives its examples synchronously; the test runs them on a worker thread so that the event loop
    # stays free to carry the services' log output.
    opened = {name: grpc.insecure_channel(stack.address(name)) for name in SERVICES}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
async def test_any_request_gets_an_answer_that_keeps_the_wire_conventions(
    service: str, method: MethodDescriptor, channels: dict[str, grpc.Channel], known: Known, signing_out: Known
) -> None:
    if is_sign_out(method):
        known = signing_out
    valid = exemplar(method, known.values)
    requests = st.one_of(st.just(valid), mutations(valid, known.strings), messages(method.input_type, known.strings))

    @settings(
        max_examples=EXAMPLES,
        derandomize=not RANDOM,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests, meta=metadata(known, service))
    def answered_by_the_conventions(request: Any, meta: tuple[tuple[str, str], ...]) -> None:
        problems = call(channels[service], service, method, request, meta)
        assert not problems, f"{method.full_name}({request}) with {meta}: " + "; ".join(problems)

    await asyncio.to_thread(answered_by_the_conventions)


def is_idempotent(method: MethodDescriptor) -> bool:
    return method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.IDEMPOTENT


IDEMPOTENT_METHODS = [(service, method) for service, method in METHODS if is_idempotent(method)]
DUPLICATES = 6


@dataclass(frozen=True)
class Outcome:
    """What one call answered, in the terms its duplicates must agree on."""

    code: grpc.StatusCode
    response: bytes = b""  # the response, serialized deterministically, when OK
    reason: str = ""  # the ErrorInfo reason otherwise
    problems: tuple[str, ...] = ()  # how an error broke the wire conventions

    @property
    def settled(self) -> bool:
        """Not an answer to retry: ABORTED (the key is in use) and UNAVAILABLE are."""
        return self.code not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)

    def same(self) -> tuple[Any, ...]:
        return (self.code, self.response, self.reason)

    def __str__(self) -> str:
        if self.code == grpc.StatusCode.OK:
            return f"OK {self.response.hex()[:16]}..."
        return f"{self.code.name} {self.reason}"


async def outcome(
    channel: grpc.aio.Channel,
    service: str,
    method: MethodDescriptor,
    request: Any,
    meta: tuple[tuple[str, str], ...],
    timeout: float = 30,
) -> Outcome:
    try:
        answer = await unary(channel, method)(request, metadata=meta, timeout=timeout)
        return Outcome(grpc.StatusCode.OK, response=answer.SerializeToString(deterministic=True))
    except grpc.aio.AioRpcError as error:
        info = details_of(error).error_info
        problems = error_contract_violations(service, method, error)
        return Outcome(error.code(), reason=info.reason if info else "", problems=tuple(problems))


@pytest.mark.parametrize(
    ("service", "method"), IDEMPOTENT_METHODS, ids=[f"{s}.{m.name}" for s, m in IDEMPOTENT_METHODS]
)
async def test_duplicates_of_an_idempotent_call_sent_at_once_end_in_one_outcome(
    service: str, method: MethodDescriptor, stack: Stack
) -> None:
    """A client, a proxy or gRPC's own retry policy may send a call again before the first has answered.
    For every RPC the contracts mark IDEMPOTENT: the same request with the same key, sent several times
    at once and once more afterwards, gets one outcome. Each answer is that outcome, or ABORTED /
    UNAVAILABLE (retry: the key is in use), and the retry afterwards gets it too; never a server fault,
    never a second, different success. Fresh entities per RPC, so the call does its work for real."""
    fresh = await entities(stack)
    request = exemplar(method, fresh.values)
    meta = valid_metadata(fresh, service, str(uuid.uuid4()))
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        at_once = await asyncio.gather(*(outcome(channel, service, method, request, meta) for _ in range(DUPLICATES)))
        afterwards = await outcome(channel, service, method, request, meta)
    answers = [*at_once, afterwards]
    assert [a.problems for a in answers if a.problems] == []
    assert afterwards.settled, f"the retry after the duplicates still got {afterwards.code.name} {afterwards.reason}"
    outcomes = {a.same() for a in answers if a.settled}
    assert len(outcomes) == 1, "more than one outcome: " + ", ".join(map(str, answers))


def is_paginated(method: MethodDescriptor) -> bool:
    """AIP-158 as the conventions state it: page_size and page_token in, next_page_token out."""
    return {"page_size", "page_token"} <= set(method.input_type.fields_by_name) and (
        "next_page_token" in method.output_type.fields_by_name
    )


PAGINATED_METHODS = [(service, method) for service, method in METHODS if is_paginated(method)]


def listed_field(method: MethodDescriptor) -> str:
    """The response's list: its one repeated message field."""
    (name,) = [f.name for f in method.output_type.fields if f.is_repeated and f.message_type is not None]
    return name


def flat(pages: list[list[str]]) -> list[str]:
    return [item for page in pages for item in page]


def page_request(first: Any, size: int, token: str) -> Any:
    """`first` (a valid list request) asking for the page of `size` that `token` leads to."""
    request = type(first)()
    request.CopyFrom(first)
    request.page_size, request.page_token = size, token
    return request


def forged(token: str) -> str:
    """`token` as a client could write it from one it was given: well-formed, the same last key, but bound
    to other filters (the chassis' token is unsigned base64url JSON, `shopmesh_chassis.pagination`). A
    service that takes it pages a list the token was never issued for."""
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    payload["f"] = "0" * len(payload["f"])
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def walk(
    channel: grpc.aio.Channel, method: MethodDescriptor, first: Any, meta: tuple[tuple[str, str], ...], size: int
) -> tuple[list[list[str]], list[str]]:
    """Every page of the list, from the first to the one without next_page_token: the ids on each page,
    and the tokens that led to the pages after the first."""
    pages: list[list[str]] = []
    tokens: list[str] = []
    rpc, listed = unary(channel, method), listed_field(method)
    request = page_request(first, size, "")
    for _ in range(1000):
        page = await rpc(request, metadata=meta, timeout=30)
        pages.append([item.id for item in getattr(page, listed)])
        if not page.next_page_token:
            return pages, tokens
        tokens.append(page.next_page_token)
        request.page_token = page.next_page_token
    raise AssertionError(f"{method.full_name} gave a next_page_token on each of 1,000 pages of {size}")


@pytest.mark.parametrize(("service", "method"), PAGINATED_METHODS, ids=[f"{s}.{m.name}" for s, m in PAGINATED_METHODS])
async def test_paging_through_a_list_gives_each_item_once_and_refuses_a_broken_token(
    service: str, method: MethodDescriptor, stack: Stack, known: Known
) -> None:
    """For every RPC that pages (AIP-158 in the conventions): small pages hold at most page_size items,
    the walk ends, and no item comes twice or goes missing against whole-list reads before and after
    (the list may grow meanwhile: notifications arrive, sagas finish; nothing is ever deleted). A token
    cut short, or forged for other filters, is INVALID_ARGUMENT, reason INVALID_PAGE_TOKEN, naming
    page_token. Every exemplar lists at least two items (the `known` fixture sees to it), so pages of one
    always give a token to check, run alone or after the generated calls."""
    first = exemplar(method, known.values)
    meta = valid_metadata(known, service, str(uuid.uuid4()))
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:

        async def whole_list() -> list[str]:
            return flat((await walk(channel, method, first, meta, MAX_PAGE_SIZE))[0])

        before = await whole_list()
        assert len(before) >= 2, f"{method.full_name} listed {before} for the exemplar: no second page to turn to"
        size = max(1, len(before) // 3)
        pages, tokens = await walk(channel, method, first, meta, size)
        after = await whole_list()
        assert tokens, f"{method.full_name} gave no next_page_token for pages of {size} of {len(before)} items"
        refusals = {
            "cut short": await outcome(channel, service, method, page_request(first, size, tokens[0][:-2]), meta),
            "forged": await outcome(channel, service, method, page_request(first, size, forged(tokens[0])), meta),
        }
    assert all(len(page) <= size for page in pages), [len(page) for page in pages]
    walked = flat(pages)
    assert len(walked) == len(set(walked)), f"an item on two pages of {size}: {walked}"
    assert len(before) == len(set(before))
    assert len(after) == len(set(after))
    assert set(before) <= set(walked) <= set(after), (before, walked, after)
    refused = (grpc.StatusCode.INVALID_ARGUMENT, INVALID_PAGE_TOKEN, ())
    answers = {name: (answer.code, answer.reason, answer.problems) for name, answer in refusals.items()}
    assert answers == {name: refused for name in refusals}, answers


async def test_every_service_still_serves_after_the_generated_requests(stack: Stack) -> None:
    for name in SERVICES:
        assert stack.is_running(name), f"{name} exited: {stack.recent_lines(name)[-20:]}"
        assert await health_status(stack.address(name)) == health_pb2.HealthCheckResponse.SERVING


async def test_no_service_logged_an_error_or_hid_a_database_failure(stack: Stack) -> None:
    """A fault can hide behind a conforming answer: an unexpected exception logged at ERROR, or a database
    error the chassis turned into UNAVAILABLE ("database trouble"). Neither may come from a request."""
    assert stack.logs is not None
    troubles = []
    for name in SERVICES:
        for line in stack.logs.lines.get(name, []):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("level") in ("ERROR", "CRITICAL") or "database trouble" in record.get("message", ""):
                    troubles.append(f"{name}: {record.get('message')}")
    assert troubles == []


async def test_the_generated_orders_of_the_known_user_each_settled_their_money_once(stack: Stack, known: Known) -> None:
    """The checkouts and cancellations the generated calls made: every one of the user's orders is
    terminal, a CONFIRMED order has exactly one captured payment, a CANCELLED one none left captured.
    The fixture's own order is left out: its payment id is among the known values, so the generated calls
    to payments (as only orders would make them) may refund it behind orders' back."""
    async with (
        grpc.aio.insecure_channel(stack.address("orders")) as orders_channel,
        grpc.aio.insecure_channel(stack.address("payments")) as payments_channel,
    ):
        orders = orders_pb2_grpc.OrdersServiceStub(orders_channel)
        payments = payments_pb2_grpc.PaymentsServiceStub(payments_channel)

        async def orders_of_the_user() -> list[orders_pb2.Order]:
            found: list[orders_pb2.Order] = []
            page_token = ""
            while True:
                page = await orders.ListOrders(
                    orders_pb2.ListOrdersRequest(user_id=known.user_id, page_size=50, page_token=page_token),
                    metadata=(("x-user-id", known.user_id),),
                )
                found.extend(order for order in page.orders if order.id != known.values["order"])
                if not (page_token := page.next_page_token):
                    return found

        # A saga that met the processor-down test card may still be retrying (its PlaceOrder answered
        # UNAVAILABLE, as documented): wait, bounded, for it to end before judging the money.
        async def none_pending() -> bool:
            return all(order.state != orders_pb2.ORDER_STATE_PENDING for order in await orders_of_the_user())

        await eventually(none_pending, "every order the generated calls placed out of PENDING", interval=0.5)
        placed = await orders_of_the_user()
        assert placed, "the generated calls placed no order"
        for order in placed:
            paid = await payments.ListPayments(payments_pb2.ListPaymentsRequest(order_id=order.id, page_size=50))
            captured = [p.id for p in paid.payments if p.state == payments_pb2.PAYMENT_STATE_CAPTURED]
            state = orders_pb2.OrderState.Name(order.state)
            if order.state == orders_pb2.ORDER_STATE_CONFIRMED:
                assert len(captured) == 1, f"{order.id} {state}: captured {captured}"
            else:
                assert order.state == orders_pb2.ORDER_STATE_CANCELLED, f"{order.id} is {state}"
                assert not captured, f"{order.id} {state}: still captured {captured}"


def has_no_side_effects(method: MethodDescriptor) -> bool:
    return method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


READ_ONLY_METHODS = [(service, method) for service, method in METHODS if has_no_side_effects(method)]
# A deadline that bounds a hang only: a read that queued for the write lock never answers as it does
# without it, whatever the deadline. On SQLite it gives up after the chassis' 5 s wait for the lock, UNAVAILABLE; on
# PostgreSQL it waits behind the lock, which is held until this call ends, DEADLINE_EXCEEDED. (2 s, once
# meant to end such a read before that wait, was less than a loaded machine's plain answer.)
LOCKED_ANSWER_SECONDS = 20.0


@contextlib.asynccontextmanager
async def write_lock(url: str) -> AsyncIterator[None]:
    """Another connection holding the database's write lock, as a shell, a migration or another process
    can. SQLite: BEGIN IMMEDIATE (the one writer). PostgreSQL: every table locked IN EXCLUSIVE MODE, which
    blocks every writer (and SELECT .. FOR UPDATE) but not plain reads. Released (rolled back) on exit."""
    if is_sqlite(url):
        database = make_url(url).database
        assert database, url
        connection = sqlite3.connect(database, isolation_level=None, timeout=10)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
        finally:
            connection.close()  # rolls the transaction back
        return
    engine = create_postgres_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection, connection.begin():
            tables = (
                await connection.execute(
                    text(
                        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                    )
                )
            ).scalars()
            await connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            await connection.execute(text(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE"))
            yield
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def a_writer_holding_every_database(stack: Stack) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as held:
        for name in SERVICES:
            url = stack.database_url(name)
            if url is not None:
                await held.enter_async_context(write_lock(url))
        yield


@pytest.mark.parametrize(("service", "method"), READ_ONLY_METHODS, ids=[f"{s}.{m.name}" for s, m in READ_ONLY_METHODS])
async def test_a_read_only_call_is_answered_while_a_writer_holds_every_database(
    service: str, method: MethodDescriptor, stack: Stack, known: Known
) -> None:
    """Every RPC the contracts mark NO_SIDE_EFFECTS (the gateway's included) reads a snapshot: while
    another connection holds the write lock of every service's database, its exemplar request gets the
    answer it gets without the locks, well within the chassis' 5 s wait for a lock; never UNAVAILABLE (a read that
    queued for the lock and gave up) nor DEADLINE_EXCEEDED (one still waiting). The entities the exemplar
    names exist before the locks are taken; last in the module, when the generated calls' work is done."""
    request = exemplar(method, known.values)
    meta = valid_metadata(known, service, str(uuid.uuid4()))
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        unlocked = await outcome(channel, service, method, request, meta)
        async with a_writer_holding_every_database(stack):
            locked = await outcome(channel, service, method, request, meta, timeout=LOCKED_ANSWER_SECONDS)
    assert locked.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
        f"{method.full_name} behind the write locks: {locked} (without them: {unlocked})"
    )
    assert (locked.code, locked.reason) == (unlocked.code, unlocked.reason), f"{locked} != {unlocked} without locks"
