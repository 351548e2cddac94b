"""NATS JetStream: connecting, declaring streams, publishing with de-duplication ids.

JetStream drops a publish whose `Nats-Msg-Id` it has seen within the stream's duplicate window; the
outbox relay sends each event's id as that header, so re-publishing after a crash is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

log = logging.getLogger("shopmesh.events")

MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Shopmesh-Event-Type"


async def connect(url: str, *, name: str) -> Client:
    """A connection that keeps reconnecting forever: the outbox keeps events while NATS is away."""
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
    )


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str], duplicate_window: float) -> None:
    """Create the stream, or bring an existing one to this configuration."""
    config = StreamConfig(name=name, subjects=subjects, duplicate_window=duplicate_window)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


class JetStreamPublisher:
    """Publishes to JetStream and waits for the stream's acknowledgement."""

    def __init__(self, client: Client, *, timeout: float = 5.0) -> None:
        self._client = client
        self._js = client.jetstream(timeout=timeout)
        self._timeout = timeout

    @property
    def jetstream(self) -> JetStreamContext:
        return self._js

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]) -> bool:
        """Publish once; returns False when JetStream recognised a duplicate."""
        ack = await self._js.publish(subject, payload, timeout=self._timeout, headers={**headers, MSG_ID: msg_id})
        return not ack.duplicate

    async def close(self) -> None:
        await self._client.drain()
