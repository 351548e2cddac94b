"""A publisher declaring its stream (at start, after a reconnect, when the stream started over) changes only
what it owns: its subjects, duplicate window and max age. What an operator set besides (limits, replicas,
a description) stays as found; an update JetStream refuses for good is said once, and publishing goes on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import ServiceUnavailableError

from shopmesh_chassis.events import ensure_stream
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.nats_server import NatsServer

from .nats_kit import DAY, a_month_publisher

# What an operator provisions besides the chassis' settings (`nats stream edit`).
OPERATORS: dict[str, object] = {
    "max_bytes": 64 * 1024 * 1024,
    "max_msgs": 100_000,
    "max_msg_size": 65_536,
    "description": "by ops",
}


@pytest.fixture
async def client(nats_srv: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_srv.url)
    yield nc
    await nc.close()


def operators(subjects: list[str], max_age: float) -> StreamConfig:
    config = StreamConfig(name="THINGS", subjects=subjects, duplicate_window=120, max_age=max_age)
    for field, value in OPERATORS.items():
        setattr(config, field, value)
    return config


def kept_by_the_operator(config: StreamConfig) -> dict[str, object]:
    return {field: getattr(config, field) for field in OPERATORS}


async def test_declaring_an_existing_stream_changes_only_what_the_publisher_owns(client: Client) -> None:
    js = client.jetstream()
    await js.add_stream(operators(["things.v1.created"], max_age=DAY))
    await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=30 * DAY)
    config = (await js.stream_info("THINGS")).config
    assert (config.subjects, config.duplicate_window, config.max_age) == (["things.v1.>"], 600, 30 * DAY)
    assert kept_by_the_operator(config) == OPERATORS


async def test_a_stream_the_operator_provisioned_keeps_its_limits_through_the_publishers_start(
    client: Client, nats_srv: NatsServer
) -> None:
    js = client.jetstream()
    await js.add_stream(operators(["things.v1.>"], max_age=7 * DAY))
    publisher = await a_month_publisher(nats_srv.url)
    try:
        config = (await js.stream_info("THINGS")).config
        assert config.max_age == 30 * DAY
        assert kept_by_the_operator(config) == OPERATORS
    finally:
        await publisher.close()


async def test_a_stream_provisioned_anew_keeps_the_operators_limits_when_the_publisher_declares_it_again(
    client: Client, nats_srv: NatsServer
) -> None:
    """The stream is deleted and provisioned again by the operator, with limits of their own, while the
    publisher stays connected: its sequence starts over, and the publisher declares it again."""
    js = client.jetstream()
    publisher = await a_month_publisher(nats_srv.url)
    try:
        await publisher.publish("things.v1.happened", b"x", msg_id="e1", headers={})
        await publisher.publish("things.v1.happened", b"x", msg_id="e2", headers={})
        await js.delete_stream("THINGS")
        await js.add_stream(operators(["things.v1.>"], max_age=7 * DAY))
        await publisher.publish("things.v1.happened", b"x", msg_id="e3", headers={})

        async def declared_again() -> bool:
            return (await js.stream_info("THINGS")).config.max_age == 30 * DAY

        await eventually(declared_again, "the publisher's max age back on the stream")
        assert kept_by_the_operator((await js.stream_info("THINGS")).config) == OPERATORS
    finally:
        await publisher.close()


async def test_an_update_jetstream_refuses_for_good_is_said_once_and_publishing_goes_on(
    client: Client, nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """THINGS exists with fewer subjects than its publisher's, and another stream holds one of them: JetStream
    refuses the update (subjects overlap) however often it is asked. Retrying it for ever, at the longest
    backoff, kept the publisher from ever becoming ready."""
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="THINGS", subjects=["things.v1.created"], duplicate_window=600))
    await js.add_stream(StreamConfig(name="OTHER", subjects=["things.v1.other"]))
    publisher = await a_month_publisher(nats_srv.url, subjects=["things.v1.created", "things.v1.other"])
    try:
        assert await publisher.publish("things.v1.created", b"x", msg_id="e1", headers={})
        publisher._declare_again("reconnected")  # as a reconnect does
        redeclaring = publisher._redeclaring
        assert redeclaring is not None
        # Refused for good, it ends after its one attempt; retried, it never ends. So wait for its end: a fixed
        # 1.5 s ("three retries' worth") also failed a correct publisher whose round trip a loaded machine slowed.
        await eventually(redeclaring.done, "the redeclaration over, with no retries of an update refused for good")
    finally:
        await publisher.close()
    ours = [r for r in caplog.records if r.name == "shopmesh.events"]
    errors = [r.getMessage() for r in ours if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "THINGS" in errors[0]
    assert "subjects overlap" in errors[0]
    assert "nats stream edit" in errors[0], "it says what to do"
    assert not [r for r in ours if r.levelno == logging.WARNING], "no retry lines"


async def test_an_operators_size_limits_are_kept_with_discard_new_said_once(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """JetStream's default discard policy (old) makes a size limit delete the oldest messages, read or not."""
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    js = client.jetstream()
    await js.add_stream(operators(["things.v1.>"], max_age=DAY))
    for _ in range(2):  # a start, then a reconnect
        await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=30 * DAY)
    config = (await js.stream_info("THINGS")).config
    assert config.discard == DiscardPolicy.NEW
    assert kept_by_the_operator(config) == OPERATORS
    said = [r for r in caplog.records if r.name == "shopmesh.events"]
    assert [r.levelno for r in said] == [logging.WARNING], [r.getMessage() for r in said]
    assert "max_bytes 67108864" in said[0].getMessage()


async def test_a_per_subject_limit_refuses_its_subjects_next_message_and_is_an_error(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A per-subject limit deletes its subject's oldest messages under discard new too, unless JetStream is told
    to discard new per subject; that holds back every subject once one is full, so it must not be set."""
    caplog.set_level(logging.INFO, logger="shopmesh.events")
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="THINGS", subjects=["things.v1.>"], max_msgs_per_subject=1))
    for _ in range(2):
        await ensure_stream(js, "THINGS", ["things.v1.>"], duplicate_window=600, max_age=30 * DAY)
    await js.publish("things.v1.happened", b"1", headers={"Nats-Msg-Id": "e1"})
    with pytest.raises(ServiceUnavailableError, match="maximum messages per subject exceeded"):
        await js.publish("things.v1.happened", b"2", headers={"Nats-Msg-Id": "e2"})
    assert (await js.get_last_msg("THINGS", "things.v1.happened")).data == b"1", "e1 kept"
    said = [r for r in caplog.records if r.name == "shopmesh.events"]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    assert "must not be set" in said[0].getMessage()
