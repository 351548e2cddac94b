"""Event consumption: at-least-once delivery, one effect per event id, retries, and a dead-letter stream."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.manager import JetStreamManager
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError

from shopmesh_chassis import consumer as consumer_module
from shopmesh_chassis.app import run_shutdown_hooks
from shopmesh_chassis.config import SHUTDOWN_HOOKS_MARGIN_SECONDS, ConsumerSettings, load_settings
from shopmesh_chassis.consumer import Event, EventConsumer
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE, DatabaseUnreachable
from shopmesh_chassis.deadletters import DEAD_LETTER_STREAM
from shopmesh_chassis.errors import Unavailable
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server

from .consumer_kit import HeldClock, applied, client, consumer, db, publish, record, until_applied
from .nats_kit import LostCancel

__all__ = ["client", "db"]  # fixtures, used by name


async def test_each_event_is_applied_once(db: Database, client: Client, nats_srv: NatsServer) -> None:
    running = consumer(db, nats_srv.url, record)
    running.start()
    for event_id in ("e1", "e2", "e3"):
        await publish(client, event_id)

    async def all_applied() -> bool:
        return await applied(db) == Counter({"e1": 1, "e2": 1, "e3": 1})

    await eventually(all_applied, "e1, e2 and e3 applied once each")
    await running.stop()


async def test_a_redelivered_event_has_no_second_effect(db: Database, nats_srv: NatsServer) -> None:
    running = consumer(db, nats_srv.url, record)
    event = Event("e1", "things.v1.happened", b"x", {"Nats-Msg-Id": "e1"}, attempt=1)
    assert await running._apply(event)
    # As after a crash between commit and ack: the same event arrives again.
    assert not await running._apply(Event("e1", "things.v1.happened", b"x", {"Nats-Msg-Id": "e1"}, attempt=2))
    assert await applied(db) == Counter({"e1": 1})


async def test_on_applied_runs_after_the_commit_once_per_applied_event(db: Database, nats_srv: NatsServer) -> None:
    committed: list[str] = []
    running = consumer(db, nats_srv.url, record, on_applied=lambda event: committed.append(event.event_id))
    event = Event("e1", "things.v1.happened", b"x", {"Nats-Msg-Id": "e1"}, attempt=1)
    assert await running._apply(event)
    assert committed == ["e1"]
    assert not await running._apply(event)  # a duplicate applies nothing, so nothing is announced
    assert committed == ["e1"]


async def test_on_applied_is_not_called_when_the_handler_fails(db: Database, nats_srv: NatsServer) -> None:
    async def broken(session: DbConnection, event: Event) -> None:
        await record(session, event)
        raise RuntimeError("handler failed after writing")

    committed: list[str] = []
    running = consumer(db, nats_srv.url, broken, on_applied=lambda event: committed.append(event.event_id))
    with pytest.raises(RuntimeError):
        await running._apply(Event("e1", "things.v1.happened", b"x", {"Nats-Msg-Id": "e1"}, attempt=1))
    assert committed == []
    assert await applied(db) == Counter()  # rolled back


async def test_a_failing_handler_is_retried_until_it_succeeds(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    attempts: Counter[str] = Counter()

    async def flaky(session: DbConnection, event: Event) -> None:
        attempts[event.event_id] += 1
        if attempts[event.event_id] < 3:
            raise ConnectionError("SMTP server busy")
        await record(session, event)

    running = consumer(db, nats_srv.url, flaky)
    running.start()
    await publish(client, "e1")
    await until_applied(db, Counter({"e1": 1}))
    assert attempts["e1"] == 3
    await running.stop()


async def messages_parked(client: Client) -> int:
    """Messages on the dead-letter stream; 0 before the consumer has made it."""
    try:
        info = await client.jetstream().stream_info(DEAD_LETTER_STREAM)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.messages)


async def test_a_poison_message_is_parked_and_later_messages_still_flow(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    async def picky(session: DbConnection, event: Event) -> None:
        if event.payload == b"poison":
            raise ValueError("cannot parse")
        await record(session, event)

    running = consumer(db, nats_srv.url, picky, max_attempts=3)
    running.start()
    await publish(client, "bad", b"poison")
    await publish(client, "good", b"fine")

    async def good_applied() -> bool:
        return await applied(db) == Counter({"good": 1})

    await eventually(good_applied, "the good event applied")

    async def parked() -> bool:
        return await messages_parked(client) == 1

    await eventually(parked, "the poison message dead-lettered")
    message = await client.jetstream().get_msg(DEAD_LETTER_STREAM, 1)
    assert message.data == b"poison"
    assert message.subject == "deadletter.tester.things.v1.happened"
    assert message.headers is not None
    assert message.headers["Shopmesh-Original-Event-Id"] == "bad"
    assert message.headers["Shopmesh-Attempts"] == "3"
    await running.stop()


async def test_a_consumer_built_from_settings_parks_after_consumer_max_attempts(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    settings = load_settings(
        ConsumerSettings,
        service_name="svc",
        nats_url=nats_srv.url,
        consumer_max_attempts=2,
        consumer_backoff_seconds=(0.05,),
        consumer_max_ack_pending=50,
    )
    deliveries: list[int] = []

    async def poisoned(session: DbConnection, event: Event) -> None:
        deliveries.append(event.attempt)
        raise ValueError("cannot parse")

    running = EventConsumer.from_settings(
        settings,
        db,
        durable="tester",
        stream="THINGS",
        stream_subjects=["things.v1.>"],
        subjects=["things.v1.happened"],
        handler=poisoned,
        metrics=EventMetrics(CollectorRegistry()),
    )
    running.start()
    await publish(client, "bad", b"poison")

    async def parked() -> bool:
        return await messages_parked(client) == 1

    await eventually(parked, "the poison message dead-lettered")
    message = await client.jetstream().get_msg(DEAD_LETTER_STREAM, 1)
    assert message.headers is not None
    assert message.headers["Shopmesh-Attempts"] == "2"
    assert deliveries == [1, 2]
    # CONSUMER_MAX_ACK_PENDING: what an account whose JetStream limits cap it lower can match.
    assert (await client.jetstream().consumer_info("THINGS", "tester")).config.max_ack_pending == 50
    await running.stop()


async def test_a_durable_created_for_fewer_subjects_gets_the_new_ones(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # A release that consumes one more subject than the durable it finds on the server.
    first = consumer(db, nats_srv.url, record)
    first.start()
    await publish(client, "e1")
    await until_applied(db, Counter({"e1": 1}))
    await first.stop()
    await client.jetstream().publish("things.v1.changed", b"x", headers={"Nats-Msg-Id": "e2"})
    second = consumer(db, nats_srv.url, record, subjects=("things.v1.happened", "things.v1.changed"))
    second.start()
    await until_applied(db, Counter({"e1": 1, "e2": 1}))
    await second.stop()
    info = await client.jetstream().consumer_info("THINGS", "tester")
    assert sorted(info.config.filter_subjects or []) == ["things.v1.changed", "things.v1.happened"]


async def test_the_consumer_counts_each_outcome_by_subject(db: Database, client: Client, nats_srv: NatsServer) -> None:
    async def picky(session: DbConnection, event: Event) -> None:
        if event.payload == b"poison":
            raise ValueError("cannot parse")
        await record(session, event)

    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, picky, max_attempts=3, metrics=EventMetrics(registry))
    running.start()
    await publish(client, "bad", b"poison")
    await publish(client, "good", b"fine")

    def count(outcome: str) -> float:
        labels = {"consumer": "tester", "subject": "things.v1.happened", "outcome": outcome}
        return registry.get_sample_value("shopmesh_events_consumed_total", labels) or 0.0

    await eventually(lambda: count("dead_lettered") == 1, "the poison message counted as dead-lettered")
    await running.stop()
    # Three deliveries of the poison message: two retried, the last parked; the good one applied once.
    assert (count("applied"), count("retried"), count("dead_lettered"), count("duplicate")) == (1, 2, 1, 0)


async def test_an_interrupted_consumer_logs_the_cause_and_recovers(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = consumer(db, nats_srv.url, record)
    running.start()
    await publish(client, "e1")
    await until_applied(db, Counter({"e1": 1}))
    # An operator deletes a stream under a running consumer: one of its pull loops fails.
    await client.jetstream().delete_stream("REPLAY")

    def said_why() -> list[str]:
        return [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]

    [line, *_] = await eventually(said_why, "the interruption logged")
    assert "TaskGroup" not in line, line
    assert "Error: " in line, line
    await publish(client, "e2")
    await until_applied(db, Counter({"e1": 1, "e2": 1}))
    await running.stop()
    assert (await client.jetstream().stream_info("REPLAY")).config.name == "REPLAY"  # declared again


async def test_the_backlog_gauge_counts_what_the_consumer_has_not_applied_yet(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    release = asyncio.Event()

    async def slow(session: DbConnection, event: Event) -> None:
        await release.wait()
        await record(session, event)

    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, slow, metrics=EventMetrics(registry), gauge_poll_seconds=0.1)
    running.start()
    for event_id in ("e1", "e2", "e3"):
        await publish(client, event_id)

    def backlog() -> float | None:
        return registry.get_sample_value("shopmesh_events_consumer_backlog", {"consumer": "tester"})

    await eventually(lambda: backlog() == 3, "three events waiting")
    release.set()
    await until_applied(db, Counter({"e1": 1, "e2": 1, "e3": 1}))
    await eventually(lambda: backlog() == 0, "the backlog drained")
    await running.stop()


async def test_a_replica_cut_off_from_nats_shows_its_last_read_falling_behind(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that cannot reach NATS (its egress cut, NATS away) consumes nothing, and its backlog and
    dead-letter gauges keep their last values, 0 if all was well: ShopmeshConsumerBacklog stayed silent while
    events piled up. When it last read them from NATS must show, from the start and through the outage."""
    registry = CollectorRegistry()

    def last_read() -> float | None:
        return registry.get_sample_value("shopmesh_events_consumer_nats_read_timestamp_seconds", {"consumer": "tester"})

    with nats_server(tmp_path / "nats") as server:
        running = consumer(db, server.url, record, metrics=EventMetrics(registry), gauge_poll_seconds=0.1)
        started = last_read()
        assert started is not None, "no value before the first read: a replica that never reaches NATS shows none"
        running.start()
        await eventually(lambda: (last_read() or 0) > started, "a read from NATS")
        port = server.port
    # NATS is gone: no read can succeed, and the value stays at the last one that did.
    gone = last_read()

    def failed_reads() -> int:
        return sum("could not read tester's backlog" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger=consumer_module.log.name):
        await eventually(lambda: failed_reads() >= 1, "a read that failed")
    assert last_read() == gone
    with nats_server(tmp_path / "nats", port=port):
        await eventually(lambda: (last_read() or 0) > (gone or 0), "a read from NATS back")
        await running.stop()


async def test_the_last_read_gauge_is_the_time_on_the_consumers_own_clock(db: Database) -> None:
    """Read from the clock the consumer stamps and purges by, not a second wall clock beside it."""
    registry = CollectorRegistry()
    clock = HeldClock()
    clock.advance(-3 * 86400)
    consumer(db, "nats://127.0.0.1:1", record, metrics=EventMetrics(registry), clock=clock)
    last_read = registry.get_sample_value(
        "shopmesh_events_consumer_nats_read_timestamp_seconds", {"consumer": "tester"}
    )
    assert last_read == clock.now.timestamp()


def outcome_counter(registry: CollectorRegistry) -> Callable[[str], float]:
    def count(outcome: str) -> float:
        labels = {"consumer": "tester", "subject": "things.v1.happened", "outcome": outcome}
        return registry.get_sample_value("shopmesh_events_consumed_total", labels) or 0.0

    return count


# How a handler's transaction fails while PostgreSQL restarts or fails over: a refused connect as `Database`
# raises it (asyncpg's plain OSError, named), SQLAlchemy's wrapping of a lost connection, and the same
# already mapped by `database_errors_as_domain_errors`.
DATABASE_AWAY = [
    pytest.param(
        lambda: DatabaseUnreachable("cannot connect to the database: [Errno 111] Connect call failed"), id="refused"
    ),
    pytest.param(
        lambda: OperationalError("SELECT 1", {}, ConnectionResetError("connection was closed")), id="operational"
    ),
    pytest.param(lambda: Unavailable("database unavailable", reason=DATABASE_UNAVAILABLE), id="mapped"),
]


@pytest.mark.parametrize("outage", DATABASE_AWAY)
async def test_events_wait_out_a_database_outage_longer_than_their_attempts_and_none_is_parked(
    db: Database,
    client: Client,
    nats_srv: NatsServer,
    caplog: pytest.LogCaptureFixture,
    outage: Callable[[], Exception],
) -> None:
    database_up = False
    applied_at_delivery: dict[str, int] = {}

    async def needs_the_database(session: DbConnection, event: Event) -> None:
        if not database_up:
            raise outage()
        await record(session, event)
        applied_at_delivery[event.event_id] = event.attempt

    registry = CollectorRegistry()
    count = outcome_counter(registry)
    running = consumer(db, nats_srv.url, needs_the_database, max_attempts=3, metrics=EventMetrics(registry))
    caplog.set_level(logging.DEBUG, logger="shopmesh.consumer")
    running.start()
    await publish(client, "e1")
    await publish(client, "e2")
    # Both events come back again and again, far past max_attempts, while the database is away.
    await eventually(lambda: count("retried") >= 4 * 3 * 2, "many more redeliveries than attempts allowed")
    assert count("dead_lettered") == 0
    database_up = True
    await until_applied(db, Counter({"e1": 1, "e2": 1}))
    await running.stop()
    assert await messages_parked(client) == 0
    assert count("dead_lettered") == 0
    assert max(applied_at_delivery.values()) > 3, applied_at_delivery
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # One line for the outage, not one per delivery; none of them about parking.
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "cannot reach its database" in said[0].getMessage()
    assert any("reached its database again" in r.getMessage() for r in caplog.records)


class PoisonAfterOutage:
    """A handler whose database is away for its first `outage` calls, then fails on the message itself."""

    def __init__(self, outage: int = 5) -> None:
        self.outage = outage
        self.calls = 0

    async def __call__(self, session: DbConnection, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.outage:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "Connect call failed"))
        raise ValueError("cannot parse")


async def parked_by_a_consumer_of_3_attempts(
    db: Database, client: Client, nats_srv: NatsServer, handler: Callable[[DbConnection, Event], Awaitable[None]]
) -> tuple[Callable[[str], float], Mapping[str, str]]:
    """Publish one event to a consumer with `handler` and 3 attempts, until it is parked: the consumer's
    outcome counts, and the parked message's headers."""
    registry = CollectorRegistry()
    count = outcome_counter(registry)
    running = consumer(db, nats_srv.url, handler, max_attempts=3, metrics=EventMetrics(registry))
    running.start()
    await publish(client, "bad", b"poison")
    await eventually(lambda: count("dead_lettered") == 1, "the message parked")
    await running.stop()
    message = await client.jetstream().get_msg(DEAD_LETTER_STREAM, 1)
    assert message.headers is not None
    return count, message.headers


async def test_a_poison_message_met_by_a_database_outage_still_gets_all_its_attempts_then_is_parked(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    handler = PoisonAfterOutage()
    count, headers = await parked_by_a_consumer_of_3_attempts(db, client, nats_srv, handler)
    # Five deliveries while the database was away, then three attempts of its own: the last one parks it.
    assert handler.calls == 8
    assert (count("retried"), count("dead_lettered"), count("applied")) == (7, 1, 0)
    assert headers["Shopmesh-Attempts"] == "3"
    assert "ValueError: cannot parse" in headers["Shopmesh-Error"]


async def test_an_oserror_of_the_handlers_own_is_parked_after_its_attempts(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """Not every OSError is the database going away: a handler that cannot read a file of its own fails
    the same way every time, and waiting for it would hold the message for ever."""
    calls = 0

    async def reads_a_missing_template(session: DbConnection, event: Event) -> None:
        nonlocal calls
        calls += 1
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/template.txt")

    count, headers = await parked_by_a_consumer_of_3_attempts(db, client, nats_srv, reads_a_missing_template)
    assert calls == 3
    assert (count("retried"), count("dead_lettered")) == (2, 1)
    assert "FileNotFoundError" in headers["Shopmesh-Error"]


async def test_a_message_held_for_the_database_before_a_restart_still_gets_all_its_attempts(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """What one process held for the database, the next does not know: it counts the handler's own failures,
    so after a restart a message is parked late (all its attempts counted again), never early."""
    handler = PoisonAfterOutage()
    # A pull the first left open as it stopped may still take the message for it: back only after the ack wait
    # (30 s by default, as long as the wait below; seen once on a loaded machine).
    first = consumer(db, nats_srv.url, handler, max_attempts=3, ack_wait_seconds=5.0)
    first.start()
    await publish(client, "bad", b"poison")
    await eventually(lambda: handler.calls >= 5, "five deliveries held for the database")
    await first.stop()
    registry = CollectorRegistry()
    count = outcome_counter(registry)
    second = consumer(db, nats_srv.url, handler, max_attempts=3, ack_wait_seconds=5.0, metrics=EventMetrics(registry))
    second.start()
    await eventually(lambda: count("dead_lettered") == 1, "the poison message parked")
    await second.stop()
    # Delivered 5+ times before the restart, yet parked only after three failures of the handler's own.
    assert count("retried") >= 2
    message = await client.jetstream().get_msg(DEAD_LETTER_STREAM, 1)
    assert message.headers is not None
    assert message.headers["Shopmesh-Attempts"] == "3"


async def test_an_interrupted_consumer_does_not_leak_its_old_subscriptions(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each time a pull loop fails (a stream recreated, JetStream briefly unavailable), the consumer
    subscribes anew on the same connection; the old subscriptions go, or they would stay in the client (and
    be sent to the server again at every reconnect) for good."""
    running = consumer(db, nats_srv.url, record)
    running.start()
    try:
        await publish(client, "e0")
        await until_applied(db, Counter({"e0": 1}))
        connection = running._connection.current()
        assert connection is not None
        before = len(connection._subs)
        for round_ in range(1, 4):
            caplog.clear()
            await client.jetstream().delete_stream("REPLAY")  # interrupts one pull loop, as in test_consumer
            await eventually(
                lambda: [r for r in caplog.records if "interrupted" in r.getMessage()], "the interruption logged"
            )
            await publish(client, f"e{round_}")
            await until_applied(db, Counter({f"e{i}": 1 for i in range(round_ + 1)}))
        assert running._connection.current() is connection, "a pull loop's failure is no reason for a new connection"
        after = len(connection._subs)
    finally:
        await running.stop()
    assert after == before, (
        f"subscriptions on the consumer's connection: {before} before, {after} after 3 interruptions"
    )


async def interrupt(client: Client, caplog: pytest.LogCaptureFixture) -> str:
    """Interrupt a running consumer's pull loops; the delay it says it waits before consuming again."""
    caplog.clear()
    await client.jetstream().delete_stream("REPLAY")
    [line, *_] = await eventually(
        lambda: [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()],
        "the interruption logged",
    )
    return line.split("retrying in ")[1].split(":")[0]


async def test_the_reconnect_delay_starts_over_after_the_consumer_ran_again(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The delay before consuming again doubles while interruptions follow each other (0.5 s up to 10 s),
    and starts over once the consumer has run again: else, after a few blips over the life of a pod, every
    later one would stop consumption for 10 s instead of 0.5 s."""
    running = consumer(db, nats_srv.url, record)
    running.start()
    delays: list[str] = []
    try:
        await publish(client, "e-first")
        await until_applied(db, Counter({"e-first": 1}))
        for round_ in range(3):
            delays.append(await interrupt(client, caplog))
            await publish(client, f"e{round_}")  # consumed again: the consumer recovered and ran fine
            await until_applied(db, Counter({"e-first": 1} | {f"e{i}": 1 for i in range(round_ + 1)}))
    finally:
        await running.stop()
    assert delays == ["0.5s"] * 3, f"delays after isolated interruptions: {delays}"


async def test_a_stopped_consumer_hands_back_the_events_it_fetched_and_had_not_applied(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """A rollout stops a consumer in the middle of a batch: another one gets its events at once, not after
    the ack wait (a minute here, longer than this test waits)."""
    started = asyncio.Event()

    async def stuck(session: DbConnection, event: Event) -> None:
        started.set()
        await asyncio.Event().wait()  # never done: the process is stopped while it works

    first = consumer(db, nats_srv.url, stuck, ack_wait_seconds=60)
    first.start()
    for event_id in ("e1", "e2", "e3"):
        await publish(client, event_id)
    await asyncio.wait_for(started.wait(), 10)
    await first.stop()
    second = consumer(db, nats_srv.url, record, ack_wait_seconds=60)
    second.start()
    try:
        await until_applied(db, Counter({"e1": 1, "e2": 1, "e3": 1}))
    finally:
        await second.stop()


async def test_a_fault_recurring_right_after_each_subscription_backs_off(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An interruption that comes back as soon as the consumer has subscribed again (nothing consumed in
    between) is the same fault, not a new one: the delay keeps doubling instead of hammering NATS every
    half second."""
    caplog.set_level(logging.INFO, logger="shopmesh.consumer")
    running = consumer(db, nats_srv.url, record)
    running.start()
    delays: list[str] = []
    try:
        for _ in range(3):
            await eventually(
                lambda: [r for r in caplog.records if r.getMessage().startswith("consuming ")], "consuming"
            )
            delays.append(await interrupt(client, caplog))
    finally:
        await running.stop()
    assert delays == ["0.5s", "1.0s", "2.0s"], f"delays after interruptions with nothing consumed: {delays}"


async def test_a_consumer_stops_promptly_while_events_keep_arriving(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """A rollout stops a consumer whose stream is busy (a shop taking orders): stop() must end the pull
    loop within a moment, not keep consuming until SHUTDOWN_HOOKS_BUDGET_SECONDS cuts the hook off (exit 1,
    and an interpreter that may then hang until SIGKILL). A cancellation that lands as a message arrives is
    lost inside nats-py's fetch (next_msg's inner task returns the message): the pull loop must not depend
    on it alone. Each round stops a consumer in mid-traffic; the race hits within a few dozen rounds."""
    publishing = True

    async def publisher() -> None:
        n = 0
        while publishing:
            await publish(client, f"e{n}")
            n += 1
            await asyncio.sleep(0.005)

    feed = asyncio.create_task(publisher())
    overran: list[int] = []
    try:
        for round_ in range(100):
            running = consumer(db, nats_srv.url, record, ack_wait_seconds=60)
            running.start()
            before = sum((await applied(db)).values())
            await eventually(functools.partial(_more_applied, db, before), "the consumer applies events")
            # Not wait_for: it would wait for a stop that ignores its cancellation as well.
            stopping = asyncio.create_task(running.stop())
            done, _ = await asyncio.wait([stopping], timeout=5)
            if not done:
                overran.append(round_)
                break
    finally:
        publishing = False
        await feed
    assert not overran, f"stop() still running after 5 s while events kept arriving, in rounds {overran}"


async def _more_applied(db: Database, before: int) -> bool:
    return sum((await applied(db)).values()) > before + 5


async def test_a_redelivery_that_runs_while_the_first_delivery_is_still_applying_is_a_duplicate_not_a_failure(
    postgres: object, tmp_path: object, client: Client, nats_srv: NatsServer
) -> None:
    """Two replicas share the durable. A handler slower than the ack wait gets its message redelivered to the
    other replica while its own transaction is still open: on PostgreSQL (READ COMMITTED) the second sees no
    applied id yet, runs the handler, and its insert of the id waits for the first to commit, then fails on
    the unique key. The event was applied, once: the second delivery is a duplicate, not a handler failure
    (WARNING, `retried`), and it must never be parked as a dead letter (here after its one attempt). The
    handler runs once."""
    from shopmesh_chassis.migrations import migrate

    from .consumer_kit import scratch

    database = Database(postgres.create_database())  # type: ignore[attr-defined]
    migrations = tmp_path / "versions"  # type: ignore[operator]
    migrations.mkdir()
    await migrate(database, migrations)
    async with database.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    calls: list[str] = []

    async def slow_first_time(session: DbConnection, event: Event) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            await asyncio.sleep(2.5)  # past the ack wait: JetStream hands the message to the other replica
        await record(session, event)

    registries = [CollectorRegistry(), CollectorRegistry()]
    replicas = [
        consumer(database, nats_srv.url, slow_first_time, max_attempts=1, ack_wait_seconds=1.0, metrics=EventMetrics(r))
        for r in registries
    ]
    for replica in replicas:
        replica.start()
    await publish(client, "e1")

    def count(outcome: str) -> float:
        labels = {"consumer": "tester", "subject": "things.v1.happened", "outcome": outcome}
        return sum(r.get_sample_value("shopmesh_events_consumed_total", labels) or 0.0 for r in registries)

    # The redelivery waits for the first delivery's transaction, then finds the event applied.
    await eventually(lambda: count("duplicate") >= 1, "the event redelivered to the other replica while it applies")
    await until_applied(database, Counter({"e1": 1}))
    await asyncio.sleep(1.5)
    for replica in replicas:
        await replica.stop()
    await database.dispose()
    assert await messages_parked(client) == 0
    assert (count("applied"), count("retried"), count("dead_lettered")) == (1, 0, 0)
    assert calls == ["e1"]


async def test_a_consumer_whose_gauge_request_loses_the_cancel_still_stops_within_its_shutdown_budget(
    db: Database, nats_srv: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py waits for a consumer_info's reply with Python 3.11's wait_for, which returns a reply that comes
    as its caller is cancelled and drops the cancel: the gauge loop went on into its next wait (ten minutes
    here), the task group of the consumer's loops waited for it, and so did the shutdown hook, until cut off."""
    held = LostCancel()
    real = JetStreamManager.consumer_info

    async def loses_the_cancel(self: JetStreamManager, *args: Any, **kwargs: Any) -> Any:
        await held.hold()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamManager, "consumer_info", loses_the_cancel)
    running = consumer(db, nats_srv.url, record, metrics=EventMetrics(CollectorRegistry()), gauge_poll_seconds=600)
    running.start()
    await held.asked.wait()
    # The part of the hooks' budget that relays and consumers have after the grace (config.py).
    assert await run_shutdown_hooks([running.stop], SHUTDOWN_HOOKS_MARGIN_SECONDS) == []
    assert held.lost


@pytest.mark.parametrize("reply", ["answered", "refused"])
async def test_a_consumer_whose_stream_declaration_loses_the_cancel_still_stops_within_its_shutdown_budget(
    db: Database, nats_srv: NatsServer, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    """The same lost cancel while the consumer declares its stream: answered, it went on to start its pull
    loops, tasks of their own that nothing cancelled; refused (JetStream not answering yet), it went on
    reconnecting. Either way the shutdown hook waited for it until cut off."""
    held = LostCancel()
    real = consumer_module.ensure_stream

    async def loses_the_cancel(*args: Any, **kwargs: Any) -> Any:
        await held.hold()
        if reply == "refused":
            raise nats.errors.NoRespondersError
        return await real(*args, **kwargs)

    monkeypatch.setattr(consumer_module, "ensure_stream", loses_the_cancel)
    running = consumer(db, nats_srv.url, record)
    running.start()
    await held.asked.wait()
    assert await run_shutdown_hooks([running.stop], SHUTDOWN_HOOKS_MARGIN_SECONDS) == []
    assert held.lost
