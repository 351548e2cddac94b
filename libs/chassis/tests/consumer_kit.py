"""What the consumer and dead-letter tests share: a NATS server, a database, and a recording handler."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from shopmesh_chassis.consumer import Event, EventConsumer
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.events import ensure_stream
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer

scratch = MetaData()
effects = Table("effects", scratch, Column("id", Integer, primary_key=True), Column("event_id", String(64)))


class HeldClock:
    """The consumer's wall clock, held where the test puts it (the stream's timestamps run on)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def client(nats_srv: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_srv.url)
    await ensure_stream(nc.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600)
    yield nc
    await nc.close()


@asynccontextmanager
async def scratch_database(url: str, tmp_path: Path) -> AsyncIterator[Database]:
    """The database at `url`, migrated to the chassis' schema (no service migrations), with `effects` beside it."""
    database = Database(url)
    (tmp_path / "versions").mkdir()
    await migrate(database, tmp_path / "versions")
    async with database.transaction() as conn:
        await conn.run_sync(scratch.create_all)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with scratch_database(f"sqlite:///{tmp_path}/consumer.db", tmp_path) as database:
        yield database


async def publish(client: Client, event_id: str, body: bytes = b"x") -> None:
    await client.jetstream().publish("things.v1.happened", body, headers={"Nats-Msg-Id": event_id})


async def applied(db: Database) -> Counter[str]:
    async with db.transaction() as session:
        rows = (await session.execute(select(effects.c.event_id))).scalars().all()
    return Counter(rows)


def consumer(
    db: Database,
    url: str,
    handler: object,
    subjects: tuple[str, ...] = ("things.v1.happened",),
    stream: str = "THINGS",
    **kwargs: object,
) -> EventConsumer:
    return EventConsumer(
        db,
        url,
        durable="tester",
        stream=stream,
        stream_subjects=["things.v1.>"],
        subjects=list(subjects),
        handler=handler,  # type: ignore[arg-type]
        backoff_seconds=(0.05,),
        **kwargs,  # type: ignore[arg-type]
    )


async def until_applied(db: Database, expected: Counter[str]) -> None:
    async def reached() -> bool:
        return await applied(db) == expected

    await eventually(reached, f"effects {dict(expected)} applied")


async def until_durable(client: Client, stream: str = "THINGS", durable: str = "tester") -> None:
    """Until the consumer has connected and made its durable `durable` on `stream`."""

    async def made() -> bool:
        try:
            await client.jetstream().consumer_info(stream, durable)
        except NotFoundError:
            return False
        return True

    await eventually(made, f"the consumer connected and subscribed as {durable} on {stream}")


async def record(session: DbConnection, event: Event) -> None:
    await session.execute(insert(effects).values(event_id=event.event_id))
