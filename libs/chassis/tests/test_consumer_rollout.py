"""Rolling updates with mixed releases of a consumer: the shared durable is never narrowed by an older
replica, an event of a subject a replica does not handle goes back to one that does (past a bound it is
parked, when the durable is short of slots and the database is not away), and a subject is dropped only when
a release retires it by name."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from prometheus_client import CollectorRegistry

from shopmesh_chassis.consumer import MAX_ACK_PENDING, SLOTS_READ_SECONDS, Event, EventConsumer, filter_of
from shopmesh_chassis.consumer_durables import bring_durable
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.deadletters import REPLAY_STREAM, DeadLetters, replay_durable
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer
from shopmesh_chassis.testing.postgres import PostgresServer, postgres_server

from .consumer_kit import HeldClock, applied, client, consumer, db, record, scratch_database, until_applied
from .test_consumer import DATABASE_AWAY, messages_parked
from .test_dead_letters import parked

__all__ = ["client", "db"]  # fixtures, used by name

HAPPENED = "things.v1.happened"
CHANGED = "things.v1.changed"  # the subject the newer release adds
OLD = (HAPPENED,)
NEW = (HAPPENED, CHANGED)


async def publish_on(client: Client, subject: str, event_id: str) -> None:
    await client.jetstream().publish(subject, b"x", headers={"Nats-Msg-Id": event_id})


async def durable_filter(client: Client) -> list[str]:
    return filter_of((await client.jetstream().consumer_info("THINGS", "tester")).config)


async def subscribed(running: EventConsumer) -> None:
    await eventually(lambda: running._consuming_since is not None, "the consumer subscribed")


def outcomes(registry: CollectorRegistry, subject: str, outcome: str) -> float:
    labels = {"consumer": "tester", "subject": subject, "outcome": outcome}
    return registry.get_sample_value("shopmesh_events_consumed_total", labels) or 0.0


# A delivery lost on the way (on a starved machine, once in tens of runs, a handed-back event was not
# delivered again for the whole 30 s ack wait) comes back after this instead, within `eventually`'s bound;
# long enough that a starved test process rarely sees an unsettled delivery sent again (asserted on below
# only where it could not change the outcome).
SHORT_ACK_WAIT = 10.0
# Past the 120 s bound the tests set, however long the test took from holding the clock to publishing.
PAST_THE_BOUND = 180


class OverdueReplica(NamedTuple):
    consumer: EventConsumer
    clock: HeldClock
    registry: CollectorRegistry


def overdue_older_replica(db: Database, nats_srv: NatsServer, **options: Any) -> OverdueReplica:
    """A replica of the older release (OLD subjects) for the bounded hand-back: it hands back at once (0.05 s),
    an event is overdue 120 s after it was stored by its held clock, its durable's slots are read at each
    overdue delivery, and a lost delivery comes back after SHORT_ACK_WAIT; its outcomes counted in its own
    registry. `options` override or add to these."""
    clock = HeldClock()
    registry = CollectorRegistry()
    settings: dict[str, Any] = {
        "handler": record,
        "subjects": OLD,
        "handback_seconds": (0.05,),
        "handback_max_seconds": 120,
        "clock": clock,
        "ack_wait_seconds": SHORT_ACK_WAIT,
        # Not the count read before the clock was moved on (no slot taken then), good for SLOTS_READ_SECONDS:
        # each park waited those 5 s out, in every test of a park.
        "slots_read_seconds": 0,
        "metrics": EventMetrics(registry),
    }
    settings |= options
    handler = settings.pop("handler")
    return OverdueReplica(consumer(db, nats_srv.url, handler, **settings), clock, registry)


async def ack_pending(client: Client) -> int:
    return (await client.jetstream().consumer_info("THINGS", "tester")).num_ack_pending or 0


async def run_newer_release_once(db: Database, nats_srv: NatsServer) -> None:
    """The newer release ran first: the durable consumes both subjects."""
    first = consumer(db, nats_srv.url, record, subjects=NEW)
    first.start()
    await subscribed(first)
    await first.stop()


async def test_an_older_replica_starting_after_a_newer_one_does_not_narrow_the_durable(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    newer = consumer(db, nats_srv.url, record, subjects=NEW, handback_seconds=(0.05,))
    newer.start()
    await subscribed(newer)
    # A replica of the previous release (re)starts in the middle of the rollout.
    older = consumer(db, nats_srv.url, record, subjects=OLD, handback_seconds=(0.05,))
    older.start()
    await subscribed(older)
    await publish_on(client, CHANGED, "c1")
    await publish_on(client, HAPPENED, "h1")
    # Before, the older replica's start brought the durable back to its one subject, and c1 was skipped
    # by it for good: never delivered to the newer replica either.
    await until_applied(db, Counter({"c1": 1, "h1": 1}))
    assert await durable_filter(client) == sorted(NEW)
    await older.stop()
    await newer.stop()


async def test_an_older_replica_hands_a_newer_subjects_event_back_and_the_newer_one_applies_it_once(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen_by_older: list[str] = []

    async def older_handler(session: DbConnection, event: Event) -> None:
        seen_by_older.append(event.subject)
        await record(session, event)

    await run_newer_release_once(db, nats_srv)
    registry = CollectorRegistry()
    older = consumer(
        db,
        nats_srv.url,
        older_handler,
        subjects=OLD,
        handback_seconds=(0.05,),
        max_attempts=2,
        metrics=EventMetrics(registry),
        ack_wait_seconds=SHORT_ACK_WAIT,
    )
    older.start()
    for event_id in ("c1", "c2", "c3"):
        await publish_on(client, CHANGED, event_id)
    # Alone, the older replica gets them again and again (each past its max attempts) and never applies one.
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 9, "c1..c3 handed back three times each")
    assert await applied(db) == Counter()
    handed_back_lines = [
        r for r in caplog.records if r.name == "shopmesh.consumer" and "hands them back" in r.getMessage()
    ]
    assert len(handed_back_lines) == 1, [r.getMessage() for r in handed_back_lines]  # rate-limited, not one per event
    newer = consumer(db, nats_srv.url, record, subjects=NEW, ack_wait_seconds=SHORT_ACK_WAIT)
    newer.start()
    await until_applied(db, Counter({"c1": 1, "c2": 1, "c3": 1}))
    await newer.stop()
    await older.stop()
    assert seen_by_older == []
    assert (outcomes(registry, CHANGED, "retried"), outcomes(registry, CHANGED, "dead_lettered")) == (0, 0)
    assert await messages_parked(client) == 0
    assert await durable_filter(client) == sorted(NEW)


async def test_a_retired_subject_is_dropped_from_the_durable_and_its_late_events_are_not_applied(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    await run_newer_release_once(db, nats_srv)
    registry = CollectorRegistry()
    retiring = consumer(
        db, nats_srv.url, record, subjects=OLD, retired_subjects=[CHANGED], metrics=EventMetrics(registry)
    )
    retiring.start()
    await subscribed(retiring)
    assert await durable_filter(client) == [HAPPENED]
    await publish_on(client, CHANGED, "c1")
    await publish_on(client, HAPPENED, "h1")
    await until_applied(db, Counter({"h1": 1}))
    await retiring.stop()
    assert await applied(db) == Counter({"h1": 1})
    assert outcomes(registry, CHANGED, "handed_back") == 0


async def test_a_retiring_replica_acknowledges_an_event_of_its_retired_subject_without_applying_it(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # Mid-rollout, a replica of the release before the retirement started and brought the subject back.
    registry = CollectorRegistry()
    retiring = consumer(
        db, nats_srv.url, record, subjects=OLD, retired_subjects=[CHANGED], metrics=EventMetrics(registry)
    )
    retiring.start()
    await subscribed(retiring)
    older = consumer(db, nats_srv.url, record, subjects=NEW)
    older.start()
    await subscribed(older)
    await older.stop()
    assert await durable_filter(client) == sorted(NEW)
    await publish_on(client, CHANGED, "c1")
    await eventually(lambda: outcomes(registry, CHANGED, "retired") == 1, "c1 acknowledged as retired")
    await retiring.stop()
    assert await applied(db) == Counter()
    assert outcomes(registry, CHANGED, "handed_back") == 0
    info = await client.jetstream().consumer_info("THINGS", "tester")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


def test_a_subject_both_consumed_and_retired_is_refused(db: Database, nats_srv: NatsServer) -> None:
    with pytest.raises(ValueError, match=CHANGED):
        consumer(db, nats_srv.url, record, subjects=NEW, retired_subjects=[CHANGED])


class NarrowedInBetween:
    """The JetStream API of a replica whose write of the durable lands just before an older replica's
    (which had read the durable before that write): the older one's write narrows it again."""

    def __init__(self, js: JetStreamContext, older: list[str]) -> None:
        self._js = js
        self._older = older
        self.narrowed = 0

    async def add_consumer(self, stream: str, config: ConsumerConfig, **kwargs: Any) -> Any:
        info = await self._js.add_consumer(stream, config, **kwargs)
        if not self.narrowed and config.durable_name == "tester":
            self.narrowed += 1
            await self._js.add_consumer(stream, ConsumerConfig(durable_name="tester", filter_subjects=self._older))
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


async def test_a_durable_narrowed_by_a_replica_starting_at_the_same_time_is_widened_again(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    first = consumer(db, nats_srv.url, record, subjects=OLD)
    first.start()
    await subscribed(first)
    await first.stop()
    racing = NarrowedInBetween(client.jetstream(), [HAPPENED, "things.v1.other"])
    await bring_durable(
        racing,  # type: ignore[arg-type]
        "THINGS",
        "tester",
        list(NEW),
        [],
        ack_wait_seconds=30.0,
        max_ack_pending=MAX_ACK_PENDING,
    )
    assert racing.narrowed == 1
    # The newer replica's re-read saw its subject gone and wrote the union again; the older one's
    # subject stays too.
    assert await durable_filter(client) == sorted([*NEW, "things.v1.other"])


async def test_subjects_that_one_filter_covers_are_kept_once(
    db: Database, client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # JetStream refuses overlapping filters: a release that consumes the whole version by wildcard
    # replaces the subjects it covers instead of failing to start.
    await run_newer_release_once(db, nats_srv)
    caplog.set_level(logging.WARNING, "shopmesh.consumer")
    wide = consumer(db, nats_srv.url, record, subjects=("things.v1.>",))
    wide.start()
    await subscribed(wide)
    await wide.stop()
    assert await durable_filter(client) == ["things.v1.>"]
    assert not [r for r in caplog.records if "interrupted" in r.getMessage()]


# One unsettled message of two takes half the durable's slots: short of them.
FEW_SLOTS = 2


async def test_an_older_replica_alone_hands_an_event_back_within_the_bound_and_parks_it_past_it(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    await run_newer_release_once(db, nats_srv)
    older, clock, registry = overdue_older_replica(db, nats_srv, max_ack_pending=FEW_SLOTS)
    older.start()
    await publish_on(client, CHANGED, "c1")
    # Within the bound it goes round and round, past its whole hand-back schedule, and is not parked.
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 3, "c1 handed back three times")
    assert await messages_parked(client) == 0
    clock.advance(PAST_THE_BOUND)
    [letter] = await parked(client, 1)

    async def slot_freed() -> bool:
        return await ack_pending(client) == 0

    # Parked and acknowledged: it holds none of the durable's max_ack_pending slots any more.
    await eventually(slot_freed, "c1 acknowledged")
    await older.stop()
    assert (letter.consumer, letter.subject, letter.event_id, letter.attempts) == ("tester", CHANGED, "c1", 0)
    said = re.fullmatch(
        rf"subject {re.escape(CHANGED)} is not consumed by this release \(handed back for (\d+) s\)", letter.error
    )
    assert said is not None, letter.error
    assert 120 <= int(said[1]) <= PAST_THE_BOUND
    assert await applied(db) == Counter()


async def test_an_event_first_delivered_past_the_bound_is_handed_back_at_each_delay_before_it_is_parked(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # A backlog (the consumer was down): its events are older than the bound at their first delivery, and
    # a newer replica running beside this one still gets a few chances at each.
    await run_newer_release_once(db, nats_srv)
    older, clock, registry = overdue_older_replica(
        db, nats_srv, handback_seconds=(0.05, 0.05, 0.05), max_ack_pending=FEW_SLOTS
    )
    clock.advance(PAST_THE_BOUND)
    older.start()
    await publish_on(client, CHANGED, "c1")
    await parked(client, 1)
    await older.stop()
    # Delivered once at each of the three delays, parked at the fourth delivery (the durable's only message).
    delivered = (await client.jetstream().consumer_info("THINGS", "tester")).delivered.consumer_seq
    assert (delivered or 0) >= 4
    assert outcomes(registry, CHANGED, "handed_back") >= 3


async def test_events_handed_back_past_the_bound_do_not_stall_the_replicas_own_events(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # A full rollback while the newer subject is still published, with max_ack_pending 5 standing for 1000.
    await run_newer_release_once(db, nats_srv)
    # The count read once per SLOTS_READ_SECONDS, as a replica reads it: several overdue deliveries judged by one
    # read, which the other tests of a park (reading it at each) do not go through.
    older, clock, registry = overdue_older_replica(
        db, nats_srv, max_ack_pending=5, slots_read_seconds=SLOTS_READ_SECONDS
    )
    older.start()
    await subscribed(older)
    assert (await client.jetstream().consumer_info("THINGS", "tester")).config.max_ack_pending == 5
    for number in range(8):
        await publish_on(client, CHANGED, f"c{number}")
    await publish_on(client, HAPPENED, "h1")
    # Five handed back fill the durable's slots, each coming back again: the server delivers nothing else.
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 15, "five slots handed back thrice")
    assert await ack_pending(client) == 5
    assert await applied(db) == Counter()
    clock.advance(PAST_THE_BOUND)
    # Before, they were handed back until the stream's max age (days), and h1 waited all that time. Parked
    # while at least half the slots are taken: how many of the eight depends on when the count was read.
    await until_applied(db, Counter({"h1": 1}))

    async def some_parked() -> bool:
        return await messages_parked(client) >= 1

    await eventually(some_parked, "overdue events parked")
    await older.stop()
    assert await applied(db) == Counter({"h1": 1})


async def test_an_overdue_event_is_handed_back_not_parked_while_the_durable_has_slots_to_spare(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # A mixed rollout: a newer replica that consumes the subject runs, busy (its retries, a backlog), and the
    # durable is far from max_ack_pending. Parking would only take the event from it.
    await run_newer_release_once(db, nats_srv)
    older, clock, registry = overdue_older_replica(db, nats_srv)
    older.start()
    await publish_on(client, CHANGED, "c1")
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 3, "c1 handed back three times")
    clock.advance(PAST_THE_BOUND)
    overdue_since = outcomes(registry, CHANGED, "handed_back")
    # Before, it was parked at its first delivery past the bound.
    await eventually(
        lambda: outcomes(registry, CHANGED, "handed_back") >= overdue_since + 3, "c1 handed back past the bound"
    )
    assert await messages_parked(client) == 0
    newer = consumer(db, nats_srv.url, record, subjects=NEW)
    newer.start()
    await until_applied(db, Counter({"c1": 1}))
    await newer.stop()
    await older.stop()
    assert await messages_parked(client) == 0


@pytest.mark.parametrize("outage", DATABASE_AWAY)
async def test_an_overdue_event_is_not_parked_while_the_database_is_away(
    db: Database, client: Client, nats_srv: NatsServer, outage: Any
) -> None:
    # The newer replicas wait the outage out with the event; the older one never touches the database for
    # it, and would park what they are about to apply. Slots are short here, so only the outage holds it.
    await run_newer_release_once(db, nats_srv)
    database_up = False

    async def needs_the_database(session: DbConnection, event: Event) -> None:
        if not database_up:
            raise outage()
        await record(session, event)

    older, clock, registry = overdue_older_replica(
        db,
        nats_srv,
        handler=needs_the_database,
        max_ack_pending=FEW_SLOTS,
        # Read at each overdue delivery: a count cached from before c1 was delivered (the gauge read at
        # start: 0) would say slots are plentiful, and the outage would not be what holds c1.
        slots_read_seconds=0,
        # One message a fetch: an outage holds the rest of a batch untried, and c1 would rarely be handed back.
        batch_size=1,
    )
    older.start()
    await publish_on(client, HAPPENED, "h1")
    await eventually(lambda: outcomes(registry, HAPPENED, "retried") >= 1, "h1 met the outage")
    await publish_on(client, CHANGED, "c1")
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 1, "c1 handed back")
    clock.advance(PAST_THE_BOUND)
    overdue_since = outcomes(registry, CHANGED, "handed_back")
    # Before, it was parked at its first delivery past the bound, outage or not.
    await eventually(
        lambda: outcomes(registry, CHANGED, "handed_back") >= overdue_since + 3, "c1 handed back during the outage"
    )
    assert await messages_parked(client) == 0
    # Back: h1 is applied, and c1, overdue with the slots short, is parked now.
    database_up = True
    await until_applied(db, Counter({"h1": 1}))
    [letter] = await parked(client, 1)
    await older.stop()
    assert letter.event_id == "c1"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    # Its own server, not the session's: the test stops and starts it.
    with postgres_server() as server:
        yield server


@pytest.fixture
async def pg_db(own_postgres: PostgresServer, tmp_path: Path) -> AsyncIterator[Database]:
    async with scratch_database(own_postgres.create_database(), tmp_path) as database:
        yield database


async def test_an_overdue_event_is_not_parked_by_a_replica_without_own_events_while_postgresql_is_down(
    pg_db: Database, own_postgres: PostgresServer, client: Client, nats_srv: NatsServer
) -> None:
    # An older replica with no event of its own to apply never learns from a failing handler that the
    # database is away; the newer replicas wait the outage out with the event, and would apply it after.
    await run_newer_release_once(pg_db, nats_srv)
    older, clock, registry = overdue_older_replica(
        pg_db,
        nats_srv,
        max_ack_pending=FEW_SLOTS,
        # Read at each overdue delivery (see the test above): only the database is to hold c1 back here.
        slots_read_seconds=0,
    )
    older.start()
    await publish_on(client, CHANGED, "c1")
    await eventually(lambda: outcomes(registry, CHANGED, "handed_back") >= 1, "c1 handed back")
    own_postgres.stop()
    try:
        clock.advance(PAST_THE_BOUND)
        overdue_since = outcomes(registry, CHANGED, "handed_back")

        async def handed_back_not_parked() -> bool:
            # Before, it was parked at its first delivery past the bound: nothing this replica did had failed.
            assert await messages_parked(client) == 0, "c1 parked while PostgreSQL is down"
            return outcomes(registry, CHANGED, "handed_back") >= overdue_since + 3

        await eventually(handed_back_not_parked, "c1 handed back while PostgreSQL is down")
    finally:
        own_postgres.start()
    # Back, with still no event of its own: c1, overdue with the slots short, is parked now.
    [letter] = await parked(client, 1)
    await older.stop()
    assert (letter.event_id, letter.attempts) == ("c1", 0)
    assert await applied(pg_db) == Counter()


async def test_a_parked_handed_back_event_replayed_to_an_older_replica_is_handed_back_and_a_newer_one_applies_it_once(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    await run_newer_release_once(db, nats_srv)
    older, clock, _ = overdue_older_replica(db, nats_srv, max_ack_pending=FEW_SLOTS)
    older.start()
    await publish_on(client, CHANGED, "c1")
    clock.advance(PAST_THE_BOUND)
    [letter] = await parked(client, 1)
    await older.stop()
    # Replayed too early, to a replica of the older release: handed back on the replay durable, not applied.
    older_registry = CollectorRegistry()
    older = consumer(
        db,
        nats_srv.url,
        record,
        subjects=OLD,
        handback_seconds=(0.05,),
        ack_wait_seconds=SHORT_ACK_WAIT,
        metrics=EventMetrics(older_registry),
    )
    older.start()
    await subscribed(older)
    await DeadLetters(client.jetstream()).replay(letter.sequence)
    await eventually(
        lambda: outcomes(older_registry, CHANGED, "handed_back") >= 3, "the replay handed back three times"
    )
    assert await applied(db) == Counter()
    await older.stop()
    registry = CollectorRegistry()
    newer = consumer(db, nats_srv.url, record, subjects=NEW, metrics=EventMetrics(registry))
    newer.start()
    await subscribed(newer)
    await until_applied(db, Counter({"c1": 1}))

    async def settled() -> bool:
        # Nothing of c1 left to deliver on either durable: the original was acknowledged when parked, the
        # replay when applied.
        js = client.jetstream()
        states = [
            await js.consumer_info("THINGS", "tester"),
            await js.consumer_info(REPLAY_STREAM, replay_durable("tester")),
        ]
        return all((state.num_pending, state.num_ack_pending) == (0, 0) for state in states)

    await eventually(settled, "both durables settled")
    await newer.stop()
    assert await applied(db) == Counter({"c1": 1})
    assert await DeadLetters(client.jetstream()).list() == []
    assert outcomes(registry, CHANGED, "applied") == 1
