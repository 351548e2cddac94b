"""Order e-mails end to end: real catalog, inventory, payments, orders and notifications processes, a real
nats-server and the SMTP sink, started by the same launcher as `make run`.

notifications is killed with SIGKILL while it works through a stream of events and restarted: every
event still yields exactly one e-mail and one SENT notification. A poison message lands on the
dead-letter stream without holding up the messages behind it, and the operator's command lists it,
replays it to notifications and discards it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from shopmesh.common.v1 import money_pb2
from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.orders.v1 import events_pb2, orders_pb2
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_platform.smtp_sink import read_mail
from shopmesh_platform.stack import NATS, Stack

from .shop import FAST_RECOVERY, Shop, eventually, place_request, scraped, user

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICES = ["catalog", "inventory", "payments", "orders", "notifications"]
ENV = {
    "orders": FAST_RECOVERY,
    "notifications": {
        "CONSUMER_MAX_ATTEMPTS": "3",
        "CONSUMER_BACKOFF_SECONDS": "[0.1]",
        # What a killed process had fetched comes back after this; what it had claimed, after 2 x 2 s.
        "CONSUMER_ACK_WAIT_SECONDS": "3",
        "SMTP_TIMEOUT_SECONDS": "2",
        "SEND_BACKOFF_SECONDS": "0.1",
        "SEND_MAX_BACKOFF_SECONDS": "0.5",
    },
}


def relay_failures(stack: Stack) -> float:
    return scraped(stack, "orders", "shopmesh_outbox_relay_failures_total", {})


def mails_by_order(stack: Stack) -> Counter[str]:
    return Counter(str(message["X-Shopmesh-Order-Id"]) for message in read_mail(stack.smtp_dir))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, services=SERVICES, env=ENV) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def notifications(stack: Stack) -> AsyncIterator[notifications_pb2_grpc.NotificationsServiceStub]:
    descriptor = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"]
    options = ClientOptions(breaker=None, caller="e2e-tests", default_timeout_seconds=10)
    async with ResilientChannel(stack.address("notifications"), [descriptor], options) as channel:
        yield notifications_pb2_grpc.NotificationsServiceStub(channel.channel)


@pytest_asyncio.fixture(loop_scope="module")
async def jetstream(stack: Stack) -> AsyncIterator[Client]:
    client = await nats.connect(stack.nats_url)
    yield client
    await client.close()


async def listed(
    stub: notifications_pb2_grpc.NotificationsServiceStub, user_id: str
) -> list[notifications_pb2.Notification]:
    out: list[notifications_pb2.Notification] = []
    token = ""
    while True:
        page = await stub.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=user_id, page_size=100, page_token=token)
        )
        out += page.notifications
        token = page.next_page_token
        if not token:
            return out


def confirmed(order_id: str, event_id: str, user_id: str) -> bytes:
    payload = events_pb2.OrderConfirmed(
        event_id=event_id,
        order_id=order_id,
        user_id=user_id,
        email="burst@example.com",
        items=[
            orders_pb2.OrderItem(
                product_id="prod_burst",
                product_name="Burst item",
                quantity=1,
                unit_price=money_pb2.Money(amount_minor=100, currency="USD"),
                line_total=money_pb2.Money(amount_minor=100, currency="USD"),
            )
        ],
        total=money_pb2.Money(amount_minor=100, currency="USD"),
    )
    return payload.SerializeToString()


async def publish_burst(stack: Stack, jetstream: Client) -> tuple[str, dict[str, str]]:
    """Forty order confirmations of one new user straight onto the stream, as after a busy minute of
    checkouts; returns the user and the event id of each order once the first of their e-mails is out."""
    burst_user = user()
    burst = {f"ord_burst_{uuid.uuid4().hex[:16]}": f"evt_{uuid.uuid4().hex}" for _ in range(40)}
    js = jetstream.jetstream()
    for order_id, event_id in burst.items():
        await js.publish(
            "orders.v1.order_confirmed", confirmed(order_id, event_id, burst_user), headers={"Nats-Msg-Id": event_id}
        )

    async def some_sent() -> bool | None:
        counts = mails_by_order(stack)
        return True if any(counts[o] for o in burst) else None

    await eventually(some_sent, "the first e-mails of the burst")
    return burst_user, burst


async def assert_each_mailed_once_and_listed_sent(
    stack: Stack,
    notifications: notifications_pb2_grpc.NotificationsServiceStub,
    customer: str,
    orders: list[str],
    burst_user: str,
    burst: dict[str, str],
) -> None:
    """Exactly one e-mail for every order, placed or of the burst, and every notification listed SENT."""
    everything = orders + list(burst)

    async def all_arrived() -> Counter[str] | None:
        counts = mails_by_order(stack)
        return counts if all(counts[o] for o in everything) else None

    counts = await eventually(all_arrived, "an e-mail for every order")
    assert {o: counts[o] for o in everything} == dict.fromkeys(everything, 1)

    async def all_sent(user_id: str, expected: int) -> list[notifications_pb2.Notification] | None:
        found = await listed(notifications, user_id)
        done = len(found) == expected and all(n.state == notifications_pb2.NOTIFICATION_STATE_SENT for n in found)
        return found if done else None

    customer_listed = await eventually(lambda: all_sent(customer, len(orders)), "every order notification SENT")
    assert sorted(n.order_id for n in customer_listed) == sorted(orders)
    burst_listed = await eventually(lambda: all_sent(burst_user, len(burst)), "every burst notification SENT")
    assert sorted(n.event_id for n in burst_listed) == sorted(burst.values())


async def test_a_placed_order_gets_its_confirmation_email(
    stack: Stack, shop: Shop, notifications: notifications_pb2_grpc.NotificationsServiceStub
) -> None:
    await shop.set_stock("prod_chef_knife", 10)
    customer = user()
    placed = await shop.place(place_request(customer, "prod_chef_knife", 2))
    order = await shop.order(placed.id)
    assert order.state == orders_pb2.ORDER_STATE_CONFIRMED

    async def arrived() -> list[EmailMessage] | None:
        mails = [m for m in read_mail(stack.smtp_dir) if m["X-Shopmesh-Order-Id"] == order.id]
        return mails or None

    (mail,) = await eventually(arrived, "the confirmation e-mail in the SMTP sink")
    assert mail["To"] == "grace@example.com"
    assert mail["Subject"] == f"Your shopmesh order {order.id} is confirmed"

    async def sent() -> list[notifications_pb2.Notification] | None:
        found = await listed(notifications, customer)
        return found if found and found[0].state == notifications_pb2.NOTIFICATION_STATE_SENT else None

    (notification,) = await eventually(sent, "the notification SENT")
    assert notification.order_id == order.id


async def test_sigkill_mid_stream_then_restart_loses_no_email_and_duplicates_none(
    stack: Stack, shop: Shop, notifications: notifications_pb2_grpc.NotificationsServiceStub, jetstream: Client
) -> None:
    await shop.set_stock("prod_french_press", 20)
    customer = user()
    orders = [(await shop.place(place_request(customer, "prod_french_press"))).id for _ in range(2)]

    burst_user, burst = await publish_burst(stack, jetstream)
    await stack.kill_service("notifications")

    # Orders confirmed while notifications is down: their events wait in JetStream.
    orders += [(await shop.place(place_request(customer, "prod_french_press"))).id for _ in range(2)]

    await stack.start_service("notifications")
    await assert_each_mailed_once_and_listed_sent(stack, notifications, customer, orders, burst_user, burst)


async def test_nats_restarted_mid_stream_loses_no_email_and_duplicates_none(
    stack: Stack, shop: Shop, notifications: notifications_pb2_grpc.NotificationsServiceStub, jetstream: Client
) -> None:
    """NATS goes away while notifications works through a burst and orders keeps confirming orders, then comes
    back with its store: orders' outbox relay publishes what was committed meanwhile, notifications' consumer
    subscribes again, and the deliveries whose acks the outage lost come back and are recognised by their
    event ids. A relay or consumer that did not resume leaves e-mails missing; one that published or applied
    an event twice sends a second e-mail."""
    await shop.set_stock("prod_chef_knife", 20)
    customer = user()
    orders = [(await shop.place(place_request(customer, "prod_chef_knife"))).id for _ in range(2)]

    burst_user, burst = await publish_burst(stack, jetstream)
    # Stopped, not killed: nats-server writes its store behind its acks, and what a SIGKILL loses of it is
    # NATS's to answer for, not the services'.
    await stack.stop_service(NATS)
    # Confirmed while NATS is away: their events wait in orders' outbox. NATS stays away until the relay has
    # failed a pass over them: back sooner, nats-py's buffer carries the publishes over the outage and no
    # pass of the relay has to resume.
    failed_before = await asyncio.to_thread(relay_failures, stack)
    orders += [(await shop.place(place_request(customer, "prod_chef_knife"))).id for _ in range(2)]

    async def relay_failed() -> bool | None:
        return True if await asyncio.to_thread(relay_failures, stack) > failed_before else None

    await eventually(relay_failed, "orders' relay failing a pass while NATS is away")
    await stack.start_service(NATS)
    orders += [(await shop.place(place_request(customer, "prod_chef_knife"))).id for _ in range(2)]

    await assert_each_mailed_once_and_listed_sent(stack, notifications, customer, orders, burst_user, burst)


async def test_a_poison_message_is_dead_lettered_and_later_orders_are_still_mailed(
    stack: Stack, shop: Shop, jetstream: Client
) -> None:
    js = jetstream.jetstream()
    poison_id = f"evt_poison_{uuid.uuid4().hex}"
    await js.publish(
        "orders.v1.order_confirmed", b"\x00garbage, not an OrderConfirmed", headers={"Nats-Msg-Id": poison_id}
    )

    await shop.set_stock("prod_camp_stove", 5)
    later = await shop.place(place_request(user(), "prod_camp_stove"))

    async def mailed() -> bool | None:
        return True if mails_by_order(stack)[later.id] == 1 else None

    await eventually(mailed, "the later order's e-mail")

    async def parked() -> bool | None:
        try:
            info = await js.stream_info("DEADLETTER")
        except Exception:
            return None
        if not info.state.messages:
            return None  # the stream exists (consumers declare it) but nothing is parked yet
        for sequence in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            message = await js.get_msg("DEADLETTER", sequence)
            if message.headers and message.headers.get("Shopmesh-Original-Event-Id") == poison_id:
                assert message.subject == "deadletter.notifications.orders.v1.order_confirmed"
                assert message.data == b"\x00garbage, not an OrderConfirmed"
                return True
        return None

    await eventually(parked, "the poison message on the DEADLETTER stream")


def deadletters(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command, as installed in the virtualenv (and in every service image)."""
    command = Path(sys.executable).with_name("shopmesh-deadletters")
    return subprocess.run(
        [str(command), "--nats-url", stack.nats_url, *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_an_operator_sees_replays_and_discards_a_parked_message_with_the_command(
    stack: Stack, jetstream: Client
) -> None:
    poison_id = f"evt_poison_{uuid.uuid4().hex}"
    await jetstream.jetstream().publish(
        "orders.v1.order_confirmed", b"\x00still not an OrderConfirmed", headers={"Nats-Msg-Id": poison_id}
    )

    async def listed() -> list[dict[str, object]]:
        result = await asyncio.to_thread(deadletters, stack, "list", "--consumer", "notifications", "--json")
        assert result.returncode == 0, result.stderr
        return [row for row in json.loads(result.stdout) if row["event_id"] == poison_id]

    async def parked_anew(known: set[object]) -> list[dict[str, object]] | None:
        return [row for row in await listed() if row["sequence"] not in known] or None

    (first,) = await eventually(lambda: parked_anew(set()), "the poison message listed")
    assert (first["subject"], first["attempts"]) == ("orders.v1.order_confirmed", 3)
    gauge = {"consumer": "notifications"}

    # The consumer counts what it parked after the park, in the background: listed first, counted a moment later.
    async def counted() -> bool:
        return await asyncio.to_thread(scraped, stack, "notifications", "shopmesh_events_dead_letters", gauge) >= 1

    await eventually(counted, "the parked message counted by shopmesh_events_dead_letters")

    # Replayed to notifications, which still cannot read it: parked again, under a new sequence.
    replayed = await asyncio.to_thread(deadletters, stack, "replay", str(first["sequence"]))
    assert replayed.returncode == 0, replayed.stderr
    (again,) = await eventually(lambda: parked_anew({first["sequence"]}), "the replay parked again")
    assert again["attempts"] == 3
    assert [row["sequence"] for row in await listed()] == [again["sequence"]]

    discarded = await asyncio.to_thread(deadletters, stack, "discard", str(again["sequence"]))
    assert discarded.returncode == 0, discarded.stderr
    assert await listed() == []
