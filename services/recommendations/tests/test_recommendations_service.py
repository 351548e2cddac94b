"""RecommendationsService over a real gRPC socket and SQLite, with a real catalog process (its seed) and
a real nats-server carrying OrderConfirmed events — the contract as the gateway sees it."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import nats
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.consumer import Event, InvalidEvent
from shopmesh_chassis.events import ensure_stream
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.tables import processed_events
from shopmesh_chassis.testing import (
    ServiceProcess,
    eventually,
    free_port,
    health_status,
    serve_in_process,
    start_process_serving,
)
from shopmesh_chassis.testing.nats_server import NatsServer
from shopmesh_recommendations.domain.copurchase import purchase_effects
from shopmesh_recommendations.domain.models import ConfirmedOrder
from shopmesh_recommendations.settings import RecommendationsSettings
from shopmesh_recommendations.store.repository import RecommendationsRepository
from shopmesh_recommendations.store.tables import counted_orders
from shopmesh_recommendations.wiring import Recommendations, build

if TYPE_CHECKING:
    from shopmesh.recommendations.v1.recommendations_pb2_grpc import RecommendationsServiceAsyncStub

pytestmark = pytest.mark.asyncio(loop_scope="module")

# From the catalog's seed (services/catalog/src/shopmesh_catalog/seed.py).
KITCHEN = {
    "prod_chef_knife",
    "prod_cast_iron_skillet",
    "prod_pour_over_kettle",
    "prod_cutting_board",
    "prod_french_press",
    "prod_burr_grinder",
}
CHEF_KNIFE_PRICE = 8900
# Generous: a loaded CI machine can take many seconds to import and migrate.
STARTUP_TIMEOUT = 60.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """The real catalog, seeded as in production; read-only, so one process serves the whole module."""
    data_dir = tmp_path_factory.mktemp("catalog")
    process = await start_process_serving(
        [sys.executable, "-m", "shopmesh_catalog"],
        log_path=data_dir / "catalog.log",
        env={"DATA_DIR": str(data_dir), "DATABASE_URL": "", "METRICS_PORT": "-1"},
        timeout=STARTUP_TIMEOUT,
    )
    try:
        yield process
    finally:
        process.stop()


def settings_for(tmp_path: Path, catalog_address: str, nats_url: str, **overrides: Any) -> RecommendationsSettings:
    # database_url="" pins the SQLite file in tmp_path even when DATABASE_URL is set in the environment.
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": -1,
        "data_dir": str(tmp_path),
        "database_url": "",
        "catalog_address": catalog_address,
        "nats_url": nats_url,
    }
    return load_settings(RecommendationsSettings, **{**values, **overrides})


@dataclass
class Running:
    stub: RecommendationsServiceAsyncStub
    service: Recommendations
    server: ChassisServer


@asynccontextmanager
async def running(settings: RecommendationsSettings, *, consume: bool = False) -> AsyncIterator[Running]:
    service = await build(settings)
    if consume:
        service.consumer.start()
    try:
        async with (
            serve_in_process(settings, [service.binding]) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            yield Running(recommendations_pb2_grpc.RecommendationsServiceStub(channel), service, server)
    finally:
        await service.close()


@pytest_asyncio.fixture(loop_scope="module")
async def live(tmp_path: Path, catalog: ServiceProcess, nats_srv: NatsServer) -> AsyncIterator[Running]:
    """The service as deployed: catalog calls and the OrderConfirmed consumer running."""
    async with running(settings_for(tmp_path, catalog.address, nats_srv.url), consume=True) as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module")
async def offline(tmp_path: Path, catalog: ServiceProcess) -> AsyncIterator[Running]:
    """Catalog calls only; no events (for requests that need no purchase history)."""
    async with running(settings_for(tmp_path, catalog.address, f"nats://127.0.0.1:{free_port()}")) as service:
        yield service


def confirmed(user_id: str, *product_ids: str) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        event_id=f"evt_{uuid.uuid4().hex}",
        order_id=f"ord_{uuid.uuid4().hex[:12]}",
        user_id=user_id,
        email="grace@example.com",
        items=[orders_pb2.OrderItem(product_id=p, product_name=p, quantity=1) for p in product_ids],
    )


OrderEvent = events_pb2.OrderConfirmed | events_pb2.OrderCancelled


def cancelled(order: events_pb2.OrderConfirmed) -> events_pb2.OrderCancelled:
    """The confirmed order, cancelled by its customer (refunded, restocked)."""
    return events_pb2.OrderCancelled(
        event_id=f"evt_{uuid.uuid4().hex}",
        order_id=order.order_id,
        user_id=order.user_id,
        email=order.email,
        items=order.items,
        reason=orders_pb2.CancelReason(code=orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED),
        refunded=True,
    )


async def publish(nats_url: str, *events: OrderEvent) -> None:
    """As the orders outbox relay publishes them: serialized, with the event id as Nats-Msg-Id."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await ensure_stream(js, "ORDERS", ["orders.v1.>"], duplicate_window=900)
        for event in events:
            subject = (
                "orders.v1.order_confirmed"
                if isinstance(event, events_pb2.OrderConfirmed)
                else "orders.v1.order_cancelled"
            )
            await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})
    finally:
        await client.close()


async def until_processed(service: Running, *events: OrderEvent) -> None:
    wanted = {e.event_id for e in events}

    async def processed() -> bool:
        async with service.service.database.read() as session:
            return wanted <= set((await session.execute(select(processed_events.c.event_id))).scalars())

    await eventually(processed, f"events {sorted(wanted)} processed", interval=0.025)


async def learn(service: Running, nats_url: str, *events: OrderEvent) -> None:
    await publish(nats_url, *events)
    await until_processed(service, *events)


async def for_product(service: Running, product_id: str, max_results: int = 0) -> list[str]:
    response = await service.stub.ListRecommendations(
        recommendations_pb2.ListRecommendationsRequest(product_id=product_id, max_results=max_results)
    )
    return [r.product_id for r in response.recommendations]


async def for_user(service: Running, user_id: str, max_results: int = 0) -> list[str]:
    response = await service.stub.ListRecommendations(
        recommendations_pb2.ListRecommendationsRequest(user_id=user_id, max_results=max_results)
    )
    return [r.product_id for r in response.recommendations]


async def error_of(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


# --- recommendations for a product ------------------------------------------------------------------


async def test_a_product_with_no_history_is_filled_from_its_category_without_itself(offline: Running) -> None:
    response = await offline.stub.ListRecommendations(
        recommendations_pb2.ListRecommendationsRequest(product_id="prod_chef_knife", max_results=10)
    )
    ids = [r.product_id for r in response.recommendations]
    assert sorted(ids) == sorted(KITCHEN - {"prod_chef_knife"})
    scores = [r.score for r in response.recommendations]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)


@pytest.mark.parametrize("subject", [{"product_id": "prod_chef_knife"}, {"user_id": "usr_grace"}])
async def test_recommendations_are_read_while_another_connection_holds_the_write_lock(
    offline: Running, subject: dict[str, str]
) -> None:
    # Reads never wait for the writer (Database.read): a write transaction took SQLite's write lock, and
    # one held elsewhere (the consumer of another process, an operator's sqlite3 shell, a migration) left
    # every recommendation waiting out the busy timeout on the event loop's thread, then UNAVAILABLE.
    writer = sqlite3.connect(make_url(offline.service.database.url).database or "", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        response = await offline.stub.ListRecommendations(
            # Behind the lock it waits out the chassis' 5 s for it and fails: the deadline only bounds it.
            recommendations_pb2.ListRecommendationsRequest(max_results=3, **subject),
            timeout=10,
        )
    finally:
        writer.close()
    assert response is not None


async def test_recommendations_carry_the_catalog_summary(offline: Running) -> None:
    response = await offline.stub.ListRecommendations(
        recommendations_pb2.ListRecommendationsRequest(product_id="prod_cutting_board")
    )
    knife = next(r for r in response.recommendations if r.product_id == "prod_chef_knife")
    assert knife.name == "8-inch Chef's Knife"
    assert (knife.price.amount_minor, knife.price.currency) == (CHEF_KNIFE_PRICE, "USD")
    assert knife.image_url == "https://images.shopmesh.example/products/chef-knife.jpg"


async def test_products_bought_together_come_first_most_often_first(live: Running, nats_srv: NatsServer) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_chef_knife", "prod_book_sourdough", "prod_headlamp"),
        confirmed("usr_2", "prod_chef_knife", "prod_book_sourdough"),
        confirmed("usr_3", "prod_chef_knife", "prod_cutting_board"),
    )
    ids = await for_product(live, "prod_chef_knife", max_results=10)
    # Co-purchases (2, 1, 1 orders) first, across categories; then the rest of the kitchen.
    assert ids[:3] == ["prod_book_sourdough", "prod_cutting_board", "prod_headlamp"]
    assert set(ids[3:]) == KITCHEN - {"prod_chef_knife", "prod_cutting_board"}
    assert len(ids) == len(set(ids))
    assert "prod_chef_knife" not in ids


async def test_co_purchases_are_learned_in_both_directions(live: Running, nats_srv: NatsServer) -> None:
    await learn(live, nats_srv.url, confirmed("usr_1", "prod_chef_knife", "prod_rain_jacket"))
    assert (await for_product(live, "prod_rain_jacket"))[0] == "prod_chef_knife"
    assert (await for_product(live, "prod_chef_knife"))[0] == "prod_rain_jacket"


async def test_the_same_event_delivered_twice_counts_once(live: Running, nats_srv: NatsServer) -> None:
    event = confirmed("usr_1", "prod_chef_knife", "prod_headlamp")
    await learn(live, nats_srv.url, event, confirmed("usr_2", "prod_chef_knife", "prod_rain_jacket"))
    await learn(live, nats_srv.url, confirmed("usr_3", "prod_chef_knife", "prod_rain_jacket"))
    # As after a crash between commit and ack: JetStream delivers the first event once more.
    redelivered = Event(event.event_id, "orders.v1.order_confirmed", event.SerializeToString(), {}, attempt=2)
    assert not await live.service.consumer._apply(redelivered)
    assert (await for_product(live, "prod_chef_knife"))[:2] == ["prod_rain_jacket", "prod_headlamp"]


async def test_an_event_whose_payload_does_not_decode_fails_as_an_invalid_event_naming_its_message(
    live: Running,
) -> None:
    # What the consumer parks it with after its retries: the chassis' reason, as notifications says it too.
    poison = Event("evt_poison", "orders.v1.order_confirmed", b"\xff\xfenot a protobuf", {}, attempt=1)
    with pytest.raises(InvalidEvent) as raised:
        await live.service.consumer._apply(poison)
    assert str(raised.value).startswith(
        "orders.v1.order_confirmed evt_poison: the payload does not decode as shopmesh.orders.v1.OrderConfirmed ("
    )


async def test_a_confirmed_order_cancelled_later_no_longer_counts(live: Running, nats_srv: NatsServer) -> None:
    kept = confirmed("usr_1", "prod_chef_knife", "prod_headlamp")
    returned = confirmed("usr_2", "prod_chef_knife", "prod_rain_jacket")
    also_returned = confirmed("usr_3", "prod_chef_knife", "prod_rain_jacket")
    await learn(live, nats_srv.url, kept, returned, also_returned)
    assert (await for_product(live, "prod_chef_knife"))[:2] == ["prod_rain_jacket", "prod_headlamp"]
    await learn(live, nats_srv.url, cancelled(returned), cancelled(also_returned))
    # The rain jacket is no longer "bought with" the knife; the headlamp, still kept, is.
    assert (await for_product(live, "prod_chef_knife"))[0] == "prod_headlamp"
    assert "prod_chef_knife" not in (await for_product(live, "prod_rain_jacket", max_results=20))[:1]
    assert await for_user(live, "usr_2", max_results=20) == await for_user(live, "usr_never_bought", max_results=20)


async def test_an_order_cancelled_before_confirmation_changes_nothing(live: Running, nats_srv: NatsServer) -> None:
    await learn(live, nats_srv.url, confirmed("usr_1", "prod_chef_knife", "prod_headlamp"))
    before = await for_product(live, "prod_chef_knife", max_results=10)
    declined = confirmed("usr_2", "prod_chef_knife", "prod_headlamp")  # never published as confirmed
    await learn(live, nats_srv.url, cancelled(declined))
    assert await for_product(live, "prod_chef_knife", max_results=10) == before


async def test_orders_cancelled_past_the_event_retention_are_forgotten_but_counted_ones_stay(
    live: Running, nats_srv: NatsServer
) -> None:
    """Every order cancelled before its confirmation left a CANCELLED row for ever. The consumer's purge now
    deletes those older than the applied event ids' retention (no confirmation can come for them any more),
    as orders publishes the stream: with a max age. A COUNTED row stays however old: a confirmed order may
    be cancelled any time later, and its cancellation must find what to take back."""
    kept = confirmed("usr_1", "prod_chef_knife", "prod_headlamp")
    declined_long_ago = confirmed("usr_2", "prod_chef_knife")  # never published as confirmed
    returned_long_ago = confirmed("usr_3", "prod_chef_knife", "prod_headlamp")
    declined_lately = confirmed("usr_4", "prod_chef_knife")
    await learn(live, nats_srv.url, kept, returned_long_ago)
    await learn(
        live, nats_srv.url, cancelled(declined_long_ago), cancelled(returned_long_ago), cancelled(declined_lately)
    )
    client = await nats.connect(nats_srv.url)
    try:  # as orders (the publisher) declares the stream: 7 days' max age
        await ensure_stream(client.jetstream(), "ORDERS", ["orders.v1.>"], 900, max_age=7 * 86400)
    finally:
        await client.close()
    long_ago = datetime.now(UTC) - timedelta(days=30)
    old = [kept.order_id, declined_long_ago.order_id, returned_long_ago.order_id]
    async with live.service.database.transaction() as session:
        await session.execute(
            update(counted_orders).where(counted_orders.c.order_id.in_(old)).values(counted_at=long_ago)
        )
    await live.service.consumer.purge_processed()
    async with live.service.database.read() as session:
        rows = dict((await session.execute(select(counted_orders.c.order_id, counted_orders.c.state))).all())
    assert {order_id: rows.get(order_id) for order_id in [*old, declined_lately.order_id]} == {
        kept.order_id: "COUNTED",
        declined_long_ago.order_id: None,
        returned_long_ago.order_id: None,
        declined_lately.order_id: "CANCELLED",
    }


async def test_a_co_purchased_product_the_catalog_no_longer_has_is_skipped(live: Running, nats_srv: NatsServer) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_chef_knife", "prod_discontinued"),
        confirmed("usr_2", "prod_chef_knife", "prod_discontinued"),
        confirmed("usr_3", "prod_chef_knife", "prod_headlamp"),
    )
    ids = await for_product(live, "prod_chef_knife", max_results=3)
    assert ids[0] == "prod_headlamp"
    assert "prod_discontinued" not in ids
    assert len(ids) == 3


async def test_an_order_event_naming_a_product_id_no_product_can_have_is_invalid_and_counts_nothing(
    live: Running, nats_srv: NatsServer
) -> None:
    # Counted, "prod bad" was ranked for ever and sent to catalog, which refused every answer reaching it.
    await learn(live, nats_srv.url, confirmed("usr_1", "prod_chef_knife", "prod_headlamp"))
    bad = confirmed("usr_2", "prod_chef_knife", "prod bad")
    event = Event(bad.event_id, "orders.v1.order_confirmed", bad.SerializeToString(), {}, attempt=1)
    with pytest.raises(InvalidEvent) as raised:
        await live.service.consumer._apply(event)
    assert str(raised.value) == (
        f"orders.v1.order_confirmed {bad.event_id}: items[1].product_id has spaces, commas or control characters"
    )
    async with live.service.database.read() as session:
        recorded = set((await session.execute(select(counted_orders.c.order_id))).scalars())
    assert bad.order_id not in recorded
    assert (await for_product(live, "prod_chef_knife"))[0] == "prod_headlamp"


@pytest.mark.parametrize("stored", ["prod bad", "prod_a,prod_b", "p" * 105])
async def test_a_product_id_catalog_refuses_stored_by_an_earlier_release_is_skipped_not_internal(
    live: Running, stored: str
) -> None:
    # An earlier release counted event ids unchecked: catalog's BatchGetProducts refuses a whole batch naming
    # such an id (INVALID_ARGUMENT), which made every answer reaching it INTERNAL, the popular tier's too.
    now = datetime.now(UTC)
    async with live.service.database.transaction() as session:
        repository = RecommendationsRepository(session)
        for n in range(3):
            await repository.record(purchase_effects(ConfirmedOrder(f"ord_old_{n}", "usr_old", (stored,))), now)
            await repository.record(
                purchase_effects(ConfirmedOrder(f"ord_pair_{n}", f"usr_{n}", ("prod_chef_knife", stored))), now
            )
        await repository.record(purchase_effects(ConfirmedOrder("ord_lamp", "usr_9", ("prod_headlamp",))), now)
    assert stored not in await for_product(live, "prod_chef_knife")
    assert await for_user(live, "usr_nobody", max_results=2) == ["prod_chef_knife", "prod_headlamp"]
    assert await for_product(live, "prod_does_not_exist", max_results=2) == ["prod_chef_knife", "prod_headlamp"]


async def test_an_unknown_product_gets_popular_products(live: Running, nats_srv: NatsServer) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_headlamp", "prod_e_reader"),
        confirmed("usr_2", "prod_headlamp"),
    )
    assert await for_product(live, "prod_does_not_exist") == ["prod_headlamp", "prod_e_reader"]


async def test_an_unknown_product_without_any_sales_gets_an_empty_list(offline: Running) -> None:
    assert await for_product(offline, "prod_does_not_exist") == []


async def test_max_results_defaults_to_five_and_is_capped_at_twenty(live: Running, nats_srv: NatsServer) -> None:
    everything = [
        *KITCHEN,
        *("prod_linen_duvet", "prod_wool_throw", "prod_ceramic_vase", "prod_desk_lamp", "prod_soy_candle"),
        *("prod_bath_towels", "prod_trail_daypack", "prod_insulated_bottle", "prod_camp_stove", "prod_headlamp"),
        *("prod_sleeping_bag", "prod_trekking_poles", "prod_wireless_earbuds", "prod_mechanical_keyboard"),
        *("prod_usb_c_charger", "prod_e_reader"),
    ]
    assert len(everything) == 22
    await learn(live, nats_srv.url, confirmed("usr_1", *everything))
    assert len(await for_product(live, "prod_chef_knife")) == 5
    assert len(await for_product(live, "prod_chef_knife", max_results=500)) == 20


# --- recommendations for a user ---------------------------------------------------------------------


async def test_a_user_gets_what_others_bought_with_their_purchases_but_nothing_they_own(
    live: Running, nats_srv: NatsServer
) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_ada", "prod_chef_knife"),
        confirmed("usr_ada", "prod_headlamp"),
        confirmed("usr_bob", "prod_chef_knife", "prod_cutting_board"),
        confirmed("usr_cy", "prod_headlamp", "prod_camp_stove"),
        confirmed("usr_cy", "prod_chef_knife", "prod_camp_stove"),
    )
    ids = await for_user(live, "usr_ada", max_results=20)
    assert ids[:2] == ["prod_camp_stove", "prod_cutting_board"]  # 2 and 1 co-purchases with what she owns
    assert not {"prod_chef_knife", "prod_headlamp"} & set(ids)
    assert len(ids) == len(set(ids))
    # Filled with the categories she buys from: the kitchen and the outdoors.
    assert {"prod_french_press", "prod_sleeping_bag"} <= set(ids)


async def test_an_unknown_user_gets_popular_products(live: Running, nats_srv: NatsServer) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_e_reader", "prod_headlamp"),
        confirmed("usr_2", "prod_e_reader"),
    )
    assert await for_user(live, "usr_nobody") == ["prod_e_reader", "prod_headlamp"]


async def test_a_signed_in_user_cannot_read_another_users_recommendations(live: Running, nats_srv: NatsServer) -> None:
    """They show what that user bought. The gateway's `x-user-id` is who asks; without it (an internal tool) any
    user may be named, as orders and notifications answer."""
    await learn(live, nats_srv.url, confirmed("usr_victim", "prod_chef_knife", "prod_camp_stove"))
    request = recommendations_pb2.ListRecommendationsRequest(user_id="usr_victim")
    details = await error_of(live.stub.ListRecommendations(request, metadata=[("x-user-id", "usr_snoop")]))
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "USER_MISMATCH")
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.recommendations"
    own = await live.stub.ListRecommendations(request, metadata=[("x-user-id", "usr_victim")])
    internal = await live.stub.ListRecommendations(request)
    assert [r.product_id for r in own.recommendations] == [r.product_id for r in internal.recommendations]
    assert internal.recommendations
    # A product's page is anyone's.
    by_product = recommendations_pb2.ListRecommendationsRequest(product_id="prod_chef_knife")
    assert (await live.stub.ListRecommendations(by_product, metadata=[("x-user-id", "usr_snoop")])).recommendations


async def test_a_heavy_buyer_is_not_recommended_a_product_they_bought_beyond_their_200_most_bought(
    live: Running, nats_srv: NatsServer
) -> None:
    # 210 products bought once each, whose ids sort before the knife: the knife, bought once too, is not
    # among the 200 most bought that the history reads, yet she owns it.
    earlier = [f"prod_aaa_{n:03}" for n in range(210)]
    orders = [confirmed("usr_heavy", *earlier[n : n + 10]) for n in range(0, len(earlier), 10)]
    await learn(
        live,
        nats_srv.url,
        *orders,
        confirmed("usr_heavy", "prod_chef_knife"),
        confirmed("usr_1", "prod_chef_knife"),
        confirmed("usr_2", "prod_chef_knife"),
    )
    assert "prod_chef_knife" not in await for_user(live, "usr_heavy", max_results=20)


async def test_popular_products_fill_the_list_even_when_more_popular_ones_left_the_catalog(
    live: Running, nats_srv: NatsServer
) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_discontinued_a", "prod_discontinued_b"),
        confirmed("usr_2", "prod_discontinued_a", "prod_discontinued_b"),
        confirmed("usr_3", "prod_headlamp"),
    )
    assert await for_product(live, "prod_does_not_exist", max_results=3) == ["prod_headlamp"]
    # Fewer places must not mean nothing: the one popular product the catalog has fits in one place.
    assert await for_product(live, "prod_does_not_exist", max_results=1) == ["prod_headlamp"]
    assert await for_user(live, "usr_nobody", max_results=1) == ["prod_headlamp"]


async def test_a_co_purchase_below_ones_that_left_the_catalog_still_comes_before_the_category_fill(
    live: Running, nats_srv: NatsServer
) -> None:
    await learn(
        live,
        nats_srv.url,
        confirmed("usr_1", "prod_chef_knife", "prod_discontinued_a", "prod_discontinued_b"),
        confirmed("usr_2", "prod_chef_knife", "prod_discontinued_a", "prod_discontinued_b"),
        confirmed("usr_3", "prod_chef_knife", "prod_headlamp"),
    )
    # The headlamp is bought with the knife, if less often than two products the catalog no longer has:
    # it outranks the kitchen fill however few places there are.
    assert await for_product(live, "prod_chef_knife", max_results=1) == ["prod_headlamp"]
    assert (await for_product(live, "prod_chef_knife", max_results=2))[0] == "prod_headlamp"
    await learn(live, nats_srv.url, confirmed("usr_knife_owner", "prod_chef_knife"))
    assert await for_user(live, "usr_knife_owner", max_results=1) == ["prod_headlamp"]


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "violations"),
    [
        (recommendations_pb2.ListRecommendationsRequest(), [("subject", "REQUIRED")]),
        (recommendations_pb2.ListRecommendationsRequest(product_id=""), [("product_id", "REQUIRED")]),
        (recommendations_pb2.ListRecommendationsRequest(user_id=""), [("user_id", "REQUIRED")]),
        (recommendations_pb2.ListRecommendationsRequest(product_id="p" * 65), [("product_id", "TOO_LONG")]),
        # Catalog refuses it (an id with a comma reads as several in its lists): INTERNAL here before.
        (
            recommendations_pb2.ListRecommendationsRequest(product_id="prod_gone,prod_chef_knife"),
            [("product_id", "INVALID_FORMAT")],
        ),
        (
            recommendations_pb2.ListRecommendationsRequest(user_id="usr_1", max_results=-1),
            [("max_results", "OUT_OF_RANGE")],
        ),
        # No user has such an id: refused as every service refuses it, not looked up.
        (recommendations_pb2.ListRecommendationsRequest(user_id="\n\r"), [("user_id", "INVALID_FORMAT")]),
        (recommendations_pb2.ListRecommendationsRequest(user_id="usr 1"), [("user_id", "INVALID_FORMAT")]),
        (recommendations_pb2.ListRecommendationsRequest(user_id="\u202e"), [("user_id", "INVALID_FORMAT")]),
    ],
    ids=[
        "no-subject",
        "empty-product-id",
        "empty-user-id",
        "too-long-id",
        "comma-in-id",
        "negative-max-results",
        "line-break-user-id",
        "space-in-user-id",
        "bidi-override-user-id",
    ],
)
async def test_invalid_requests_are_invalid_argument_with_field_violations(
    offline: Running,
    request_: recommendations_pb2.ListRecommendationsRequest,
    violations: list[tuple[str, str]],
) -> None:
    details = await error_of(offline.stub.ListRecommendations(request_))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.recommendations"
    assert [(v.field, v.reason) for v in details.field_violations] == violations


async def test_catalog_down_is_unavailable_dependency_unavailable(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    async with running(settings_for(tmp_path, nowhere, f"nats://{nowhere}")) as service:
        details = await error_of(for_product(service, "prod_chef_knife"))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert details.error_info is not None
    assert details.error_info.metadata["dependency"] == "catalog"
    assert details.retry_delay_seconds is not None


# --- fault injection (FAULT_MODE) -------------------------------------------------------------------


async def test_fault_mode_fail_answers_unavailable_fault_injected(tmp_path: Path, catalog: ServiceProcess) -> None:
    settings = settings_for(tmp_path, catalog.address, f"nats://127.0.0.1:{free_port()}", fault_mode="fail")
    async with running(settings) as service:
        details = await error_of(for_product(service, "prod_chef_knife"))
        # The service is up; only its answers fail, so load balancers keep it and callers must cope.
        assert await health_status(service.server.address) == health_pb2.HealthCheckResponse.SERVING
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "FAULT_INJECTED")


async def test_fault_mode_slow_outlasts_a_callers_deadline_and_the_wait_is_cancelled_with_the_call(
    tmp_path: Path, catalog: ServiceProcess
) -> None:
    settings = settings_for(
        tmp_path, catalog.address, f"nats://127.0.0.1:{free_port()}", fault_mode="slow", fault_delay_seconds=60
    )
    async with running(settings) as service:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.ListRecommendations(
                recommendations_pb2.ListRecommendationsRequest(product_id="prod_chef_knife"), timeout=0.2
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        labels = {
            "grpc_type": "unary",
            "grpc_service": "shopmesh.recommendations.v1.RecommendationsService",
            "grpc_method": "ListRecommendations",
            "grpc_code": "DEADLINE_EXCEEDED",
        }
        registry = service.server.metrics.registry
        # The handler did not sleep on for a minute: the server cancelled it when the deadline passed (and
        # counted it as the deadline it missed, a server error).
        await eventually(
            lambda: registry.get_sample_value("grpc_server_handled_total", labels) == 1.0,
            "the call counted as DEADLINE_EXCEEDED",
            timeout=10,
            interval=0.025,
        )


async def test_fault_mode_slow_still_answers_a_patient_caller(tmp_path: Path, catalog: ServiceProcess) -> None:
    settings = settings_for(
        tmp_path, catalog.address, f"nats://127.0.0.1:{free_port()}", fault_mode="slow", fault_delay_seconds=0.05
    )
    async with running(settings) as service:
        assert set(await for_product(service, "prod_chef_knife")) <= KITCHEN


async def test_the_fault_switch_works_from_the_environment_of_a_real_process(
    tmp_path: Path, catalog: ServiceProcess
) -> None:
    process = await start_process_serving(
        [sys.executable, "-m", "shopmesh_recommendations"],
        log_path=tmp_path / "recommendations.log",
        env={
            "DATA_DIR": str(tmp_path),
            "DATABASE_URL": "",
            "METRICS_PORT": "-1",
            "CATALOG_ADDRESS": catalog.address,
            # NATS is away: the service serves anyway, its consumer keeps trying in the background.
            "NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "FAULT_MODE": "fail",
        },
        timeout=STARTUP_TIMEOUT,
    )
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = recommendations_pb2_grpc.RecommendationsServiceStub(channel)
            details = await error_of(
                stub.ListRecommendations(recommendations_pb2.ListRecommendationsRequest(product_id="prod_chef_knife"))
            )
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "FAULT_INJECTED")
    finally:
        process.stop()
    assert process.process.returncode == 0
    assert "fault injection is on: FAULT_MODE=fail" in process.output()
