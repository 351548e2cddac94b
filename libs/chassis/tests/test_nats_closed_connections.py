"""A connection the NATS server closed for good is replaced: nats-py closes its client, whatever
max_reconnect_attempts says, when the server sends most `-ERR`s on an open connection ("Authorization
Violation" after a config reload with other credentials), and a consumer or publisher that kept that client
failed every request with ConnectionClosedError until its pod restarted, even once the credentials were good
again."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shopmesh_chassis.db import Database
from shopmesh_chassis.events import DeferredJetStream, NotConnected, ensure_stream
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server

from .consumer_kit import consumer, db, publish, record, until_applied

__all__ = ["db"]

TOKEN = "s3cr3t-token"
CLOSED = "closed the connection for good"


def authorization(token: str) -> str:
    return f'authorization {{ token: "{token}" }}\n'


class ReloadableNats:
    """A nats-server with JetStream and a token, whose configuration a test changes and reloads (SIGHUP), as
    an operator rotating credentials does."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server

    def reload(self, token: str) -> None:
        """The server takes `token` alone from now on, and closes the connections that gave another."""
        self.server.reload(authorization(token))

    @property
    def url(self) -> str:
        return f"nats://{TOKEN}@127.0.0.1:{self.server.port}"


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[ReloadableNats]:
    with nats_server(tmp_path / "nats", config=authorization(TOKEN)) as server:
        yield ReloadableNats(server)


def closures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if CLOSED in r.getMessage()]


async def test_a_consumer_applies_events_again_once_the_server_that_closed_its_connection_takes_its_token_again(
    db: Database, reloadable: ReloadableNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    nc = await nats.connect(reloadable.url)
    await ensure_stream(nc.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600)
    await nc.close()
    running = consumer(db, reloadable.url, record)
    running.start()
    try:
        nc = await nats.connect(reloadable.url)
        await publish(nc, "e1")
        await until_applied(db, Counter({"e1": 1}))
        await nc.close()
        caplog.clear()
        reloadable.reload("rotated-elsewhere")  # a rotation done in the wrong order ...
        await eventually(
            lambda: any("consumer tester interrupted" in r.getMessage() for r in caplog.records),
            "the consumer lost its connection",
        )
        reloadable.reload(TOKEN)  # ... undone: the service's own token is good again
        nc = await nats.connect(reloadable.url)
        await publish(nc, "e2")
        await until_applied(db, Counter({"e1": 1, "e2": 1}))
    finally:
        await running.stop()
        await nc.close()
    # An operator sees why it stopped consuming: once for the closure, at ERROR, with the server's reason.
    said = closures(caplog)
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in caplog.records]
    assert "authorization" in said[0].getMessage().lower()
    assert TOKEN not in said[0].getMessage()


async def test_a_publisher_publishes_again_once_the_server_that_closed_its_connection_takes_its_token_again(
    reloadable: ReloadableNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    publisher = DeferredJetStream(
        reloadable.url, name="tests", stream="THINGS", subjects=["things.v1.>"], duplicate_window_seconds=600
    )
    readies: list[None] = []
    publisher.start(on_ready=lambda: readies.append(None))
    try:
        await eventually(lambda: readies, "the publisher is ready", timeout=15)
        assert await publisher.publish("things.v1.happened", b"x", msg_id="e1", headers={})
        reloadable.reload("rotated-elsewhere")

        async def refused() -> bool:
            try:
                await publisher.publish("things.v1.happened", b"x", msg_id="e2", headers={})
            except NotConnected:
                return True  # what the relay counts on to keep the event in the outbox and try again
            except Exception:
                return False  # a publish in flight as the server closed the connection
            return False

        await eventually(refused, "a publish refused with NotConnected once the server closed the connection")
        reloadable.reload(TOKEN)

        async def published() -> bool:
            try:
                # A duplicate counts: a publish in flight as the server closed the connection may have landed.
                await publisher.publish("things.v1.happened", b"x", msg_id="e2", headers={})
            except NotConnected:
                return False
            return True

        await eventually(published, "e2 published once the token is good again", timeout=20)
        assert len(readies) == 2, "on_ready again once connected anew: it wakes the relay"
    finally:
        await publisher.close()
    said = closures(caplog)
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in caplog.records]
    assert "authorization" in said[0].getMessage().lower()
    assert TOKEN not in said[0].getMessage()
    nc = await nats.connect(reloadable.url)
    try:
        assert (await nc.jetstream().stream_info("THINGS")).state.messages == 2
    finally:
        await nc.close()
