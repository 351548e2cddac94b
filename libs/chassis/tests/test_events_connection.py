"""What a service's NATS connection logs while the broker is away: a few plain lines, not a traceback
per reconnect attempt; and that it closes in time whatever its retries were doing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import uvloop

from shopmesh_chassis import events
from shopmesh_chassis.app import run_shutdown_hooks
from shopmesh_chassis.config import SHUTDOWN_HOOKS_MARGIN_SECONDS
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server

from .nats_kit import LostCancel


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_same_error_is_said_once_a_minute_and_again_after_a_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    said = events.ConnectionLog("nats://broker:4222", clock=clock)
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    refused = ConnectionRefusedError(111, "Connection refused")
    for _ in range(10):  # five seconds of attempts every 0.5 s
        await said.error(refused)
        clock.now += 0.5
    await said.error(TimeoutError("nats: timeout"))  # another error: said at once
    clock.now += 60
    await said.error(TimeoutError("nats: timeout"))  # a minute later: said again
    await said.reconnected()
    await said.error(TimeoutError("nats: timeout"))  # a new outage starts a new story
    assert [r.getMessage() for r in caplog.records] == [
        "NATS at nats://broker:4222: ConnectionRefusedError: [Errno 111] Connection refused",
        "NATS at nats://broker:4222: TimeoutError: nats: timeout",
        "NATS at nats://broker:4222: TimeoutError: nats: timeout",
        "reconnected to NATS at nats://broker:4222",
        "NATS at nats://broker:4222: TimeoutError: nats: timeout",
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://shop:s3cret@broker:4222", "nats://***@broker:4222"),
        ("nats://s3cret@broker:4222", "nats://***@broker:4222"),  # a token
        ("nats://a:4222, nats://shop:s3cret@b:4222", "nats://a:4222,nats://***@b:4222"),
        ("tls://shop:s3cret@broker", "tls://***@broker"),
    ],
)
async def test_the_connection_log_never_shows_a_token_or_password_of_the_url(
    url: str, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    said = events.ConnectionLog(url)
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    await said.error(ConnectionRefusedError(111, "Connection refused"))
    await said.reconnected()
    assert [r.getMessage() for r in caplog.records] == [
        f"NATS at {shown}: ConnectionRefusedError: [Errno 111] Connection refused",
        f"reconnected to NATS at {shown}",
    ]
    assert all("s3cret" not in str(r.__dict__) for r in caplog.records)


async def test_a_comma_separated_nats_url_is_a_cluster_whose_live_server_is_used(tmp_path: Path) -> None:
    # As NATS' own clients take NATS_URL: nats-py alone would read the whole string as one server's URL.
    with nats_server(tmp_path / "nats") as server:
        client = await events.connect(f"nats://127.0.0.1:{free_port()},{server.url}", name="cluster-test")
        try:
            assert client.is_connected
            assert client.connected_url is not None
            assert client.connected_url.port == server.port
        finally:
            await client.close()


async def test_a_broker_outage_is_logged_in_plain_lines_and_the_connection_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    with nats_server(tmp_path / "before", port=port) as server:
        client = await events.connect(server.url, name="outage-test")
    try:
        # The broker is gone: nats-py retries every 0.5 s (several attempts in this window).
        await asyncio.sleep(2.5)
        with nats_server(tmp_path / "after", port=port):
            # Until the line, not is_connected: nats-py says connected before its PING/PONG with the new
            # server, and a server stopped during that round trip (slow on a loaded machine) failed the
            # reconnect before its callback, and its line, came.
            await eventually(
                lambda: (
                    client.is_connected and f"reconnected to NATS at {url}" in [r.getMessage() for r in caplog.records]
                ),
                "the client reconnected and said so",
                interval=0.1,
            )
    finally:
        await client.close()
    ours = [r for r in caplog.records if r.name.startswith(("shopmesh.events", "nats"))]
    assert [r for r in ours if r.exc_info] == [], "no tracebacks for an expected outage"
    messages = [r.getMessage() for r in ours if r.levelno >= logging.INFO]
    assert f"lost the connection to NATS at {url}; reconnecting" in messages
    assert f"reconnected to NATS at {url}" in messages
    errors = [m for m in messages if m.startswith(f"NATS at {url}: ")]
    assert 1 <= len(errors) <= 2, errors
    # Closing the connection at shutdown is not reported as a loss.
    assert messages.count(f"lost the connection to NATS at {url}; reconnecting") == 1


async def test_a_publisher_closes_without_an_error_while_the_broker_is_away(tmp_path: Path) -> None:
    # A service stopping during a NATS outage (the outbox keeps the events: an expected state, not a fault).
    with nats_server(tmp_path / "nats") as server:
        publisher = events.DeferredJetStream(
            server.url, name="outage-test", stream="THINGS", subjects=["things.v1.>"], duplicate_window_seconds=60
        )
        ready = asyncio.Event()
        publisher.start(on_ready=ready.set)
        await asyncio.wait_for(ready.wait(), 15)
    client = publisher._connection.current()
    assert client is not None
    await eventually(lambda: client.is_reconnecting, "the client lost the broker", interval=0.05)
    await publisher.close()
    assert client.is_closed, "its reconnect loop would outlive the service's shutdown"


@pytest.mark.parametrize("when", ["at the start", "declared again after a reconnect"])
async def test_a_publisher_whose_declaration_fails_as_it_is_cancelled_still_closes_within_its_shutdown_budget(
    nats_srv: NatsServer, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """nats-py waits for JetStream's reply with Python 3.11's wait_for, which raises a reply's error that comes as
    its caller is cancelled and drops the cancel: the declaration's retry loop went on (JetStream not answering
    yet, each retry refused), and close() waited for it until its shutdown hook was cut off."""
    publisher = events.DeferredJetStream(
        nats_srv.url, name="cancel-test", stream="THINGS", subjects=["things.v1.>"], duplicate_window_seconds=60
    )
    if when != "at the start":
        ready = asyncio.Event()
        publisher.start(on_ready=ready.set)
        await asyncio.wait_for(ready.wait(), 15)
    held = LostCancel()

    async def not_answering(*args: Any, **kwargs: Any) -> Any:
        await held.hold()  # the refusal comes as the cancel does
        raise nats.errors.NoRespondersError

    monkeypatch.setattr(events, "ensure_stream", not_answering)
    if when == "at the start":
        publisher.start()
    else:
        publisher._declare_again("reconnected")  # as a reconnect does
    await held.asked.wait()
    # The part of the hooks' budget that relays and consumers have after the grace (config.py).
    assert await run_shutdown_hooks([publisher.close], SHUTDOWN_HOOKS_MARGIN_SECONDS) == []
    assert held.lost


async def _close_with_messages_unsent(store_dir: Path) -> None:
    with nats_server(store_dir) as server:
        client = await events.connect(server.url, name="unsent-test")
    await eventually(lambda: client.is_reconnecting, "the client lost the broker", interval=0.05)
    await client.publish("things.v1.made", b"kept in nats-py's pending buffer")
    await events.drain_or_close(client)
    assert client.is_closed


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_publisher_with_messages_unsent_closes_without_an_error_while_the_broker_is_away(
    tmp_path: Path, loop: str
) -> None:
    """nats-py keeps what is published while it reconnects, and its close() writes that to the transport of the
    connection it lost, which raises (asyncio: ConnectionResetError; uvloop, the services' loop: RuntimeError
    "the handler is closed"): orders' and payments' shutdown hooks logged an ERROR with a traceback whenever a
    pod stopped during a NATS outage. The outbox still holds what the stream did not acknowledge, so the close
    only has to end the client."""
    (uvloop.run if loop == "uvloop" else asyncio.run)(_close_with_messages_unsent(tmp_path / "nats"))
