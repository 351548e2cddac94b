"""Every RPC of every service keeps the wire conventions (docs/contracts.md) for any request a client can
send: generated requests, from nonsense to almost right, go over real gRPC to the whole stack started by
the same launcher as `make run`, once on SQLite and once on PostgreSQL.

For each answer that is not OK, the test demands what a client, a mesh and an on-call engineer rely on:
no INTERNAL / UNKNOWN (a client mistake is never the server's fault), trailers-only (no initial
metadata: the status travels in the only HEADERS frame, where a mesh sees it), `google.rpc.Status`
details matching the status code, an ErrorInfo with an UPPER_SNAKE_CASE reason in a `shopmesh.*`
domain, field violations for INVALID_ARGUMENT that name a real field of the request (or the metadata
key at fault), and nothing of the server's internals in the message. When the run is over every
service still runs and answers its health check.

Hypothesis draws the requests (tests/contract/requests.py). The draws are fixed (`derandomize`), so CI
is repeatable; `CONTRACT_EXAMPLES=1200 CONTRACT_RANDOM=1 pytest tests/contract` explores further.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.testing import eventually, health_status
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_platform.stack import Stack, postgres_env
from shopmesh_platform.topology import SERVICES

from .conventions import call, contract_methods
from .exemplars import exemplar
from .requests import messages, mutations

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "40"))
RANDOM = os.environ.get("CONTRACT_RANDOM") == "1"
ENV = {
    # The gateway's rate limit would answer most of the generated calls RESOURCE_EXHAUSTED (a correct
    # answer, tested in the gateway's own tests) and keep them from reaching anything else.
    "gateway": {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000"},
}
PASSWORD = "correct horse battery staple"
REUSED_KEY = "contract-reused-key"
METHODS = contract_methods()


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
    """A user with a token, an order, its payment, a reservation, the catalog's ids; the order and the
    reservation are made from the exemplars, as valid requests."""
    by_name = {method.full_name: method for _, method in METHODS}
    email = f"contract-{uuid.uuid4().hex[:8]}@example.com"
    async with grpc.aio.insecure_channel(stack.address("catalog")) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        first_page = await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=3))
        categories = (await catalog.ListCategories(catalog_pb2.ListCategoriesRequest())).categories
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
            "other_product": first_page.products[1].id,
            "category": categories[0].id,
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
        *(value for name, value in values.items() if name not in ("run", "password")),
        reserved.reservation.order_id,
        *(p.id for p in first_page.products[2:]),
        *(c.id for c in categories[1:]),
    )
    return Known(strings=strings, user_id=login.user_id, access_token=login.access_token, values=values)


def metadata(known: Known, service: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Request metadata as clients send it, and as they get it wrong."""
    valid = st.uuids().map(
        lambda key: (
            ("idempotency-key", str(key)),
            ("x-user-id", known.user_id),
            *((("authorization", f"Bearer {known.access_token}"),) if service == "gateway" else ()),
        )
    )
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
    service: str, method: MethodDescriptor, channels: dict[str, grpc.Channel], known: Known
) -> None:
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
