"""NATS JetStream: connecting, declaring streams, publishing with de-duplication ids.

JetStream drops a publish whose `Nats-Msg-Id` it has seen within the stream's duplicate window; the
outbox relay sends each event's id as that header, so re-publishing after a crash is harmless.

Event streams keep their messages for a bounded time (`max_age`, EventSettings.nats_stream_max_age_seconds):
JetStream's LIMITS retention keeps a message after every consumer acknowledged it, so without a limit a
stream grows for as long as the service runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

import nats
import nats.errors
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StreamConfig
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError
from opentelemetry.util.types import AttributeValue

from shopmesh_chassis.config import EventSettings

# NATS_URL's parsing lives in nats_urls (config.py validates NATS_URL with it, and must not import nats);
# re-exported here, where callers connecting to NATS look for it.
from shopmesh_chassis.nats_urls import InvalidNatsUrl as InvalidNatsUrl
from shopmesh_chassis.nats_urls import NatsTarget as NatsTarget
from shopmesh_chassis.nats_urls import nats_servers as nats_servers
from shopmesh_chassis.nats_urls import parse_nats_url as parse_nats_url
from shopmesh_chassis.nats_urls import shown_nats_url as shown_nats_url
from shopmesh_chassis.periodic import Periodic
from shopmesh_chassis.tasks import cancel_and_wait, stop_if_cancelled

log = logging.getLogger("shopmesh.events")

MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Shopmesh-Event-Type"
# EventSettings' default stream max age, for code that builds publishers and consumers without settings.
DEFAULT_STREAM_MAX_AGE_SECONDS = 7 * 86400.0
# How often a publisher reads its stream's configuration for a size limit set on it live (`nats stream edit`)
# under discard old (DeferredJetStream._check_discard): one stream info request per this long.
DISCARD_CHECK_SECONDS = 30.0


def messaging_attributes(subject: str, event_id: str, operation: str, name: str = "") -> dict[str, AttributeValue]:
    """OpenTelemetry's messaging attributes of an event's span (its create, send and consume spans), each span
    adding its own: what a trace shows of the event, how a send trace is tied to its consumers', and which
    `operation` type the span is (named `name`, the first word of the span's name; the type's own by default)."""
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.message.id": event_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": name or operation,
    }


class ConnectionLog:
    """What a NATS connection says about itself, one line each, with no tracebacks.

    nats-py's default error callback logs every failed reconnect attempt with a full traceback (twice a
    second here, for as long as NATS is away). An unreachable broker is an expected state for a service
    with an outbox, not a bug: say once that the connection was lost, repeat the same error at most
    every `repeat_after` seconds, and say when it is back."""

    def __init__(self, url: str, *, repeat_after: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = shown_nats_url(url)
        self._repeat_after = repeat_after
        self._clock = clock
        self._last: tuple[str, float] | None = None
        self._client: Client | None = None

    def watch(self, client: Client) -> None:
        """The connection these callbacks belong to, so that closing it is not reported as a loss."""
        self._client = client

    async def error(self, exc: Exception) -> None:
        said = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        now = self._clock()
        if self._last is not None and self._last[0] == said and now - self._last[1] < self._repeat_after:
            return
        self._last = (said, now)
        log.warning("NATS at %s: %s", self._url, said, extra={"nats_url": self._url})

    async def disconnected(self) -> None:
        if self._client is not None and self._client.is_closed:
            return  # closed on purpose (shutdown), not lost
        log.warning("lost the connection to NATS at %s; reconnecting", self._url, extra={"nats_url": self._url})

    async def reconnected(self) -> None:
        self._last = None
        log.info("reconnected to NATS at %s", self._url, extra={"nats_url": self._url})


async def connect(
    url: str,
    *,
    name: str,
    on_reconnected: Callable[[], None] | None = None,
    on_closed: Callable[[], None] | None = None,
) -> Client:
    """A connection that keeps reconnecting forever: the outbox keeps events while NATS is away.
    `on_reconnected` runs after each reconnect (in nats-py's reconnect loop: start a task for any request);
    `on_closed` once the connection is closed, on purpose or by the server (see NatsConnection).
    Raises InvalidNatsUrl, before any connection attempt, when `url`'s credentials cannot be read as meant."""
    target = parse_nats_url(url)
    said = ConnectionLog(url)

    async def reconnected() -> None:
        await said.reconnected()
        if on_reconnected is not None:
            on_reconnected()

    async def closed() -> None:
        if on_closed is not None:
            on_closed()

    client = await nats.connect(
        **target.connect_options(),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=said.error,
        disconnected_cb=said.disconnected,
        reconnected_cb=reconnected,
        closed_cb=closed,
    )
    said.watch(client)
    return client


async def drain_or_close(client: Client) -> None:
    """Drain (what was published is flushed first) when connected; else, or if the drain fails, close:
    nats-py refuses to drain a connection that is (re)connecting, and a connection left open keeps its
    reconnect loop going past the shutdown. Nothing is lost either way, not even by a close that could not send
    what was published while reconnecting: a publish the stream did not acknowledge stays in the outbox."""
    if client.is_connected:
        try:
            await client.drain()
        except Exception as exc:
            log.debug("NATS at %s: drain failed, closing instead: %s", client.connected_url, exc)
    if not client.is_closed:
        try:
            await client.close()
        except (OSError, RuntimeError) as exc:
            # nats-py marks the client closed and stops its reconnect loop first, then writes what was published
            # while reconnecting to the transport it lost, which raises (uvloop: "the handler is closed").
            log.info("NATS: closed with messages unsent (the broker is away): %s", exc)


class NatsConnection:
    """The NATS connection of one consumer or publisher, connected anew once the server closed it for good.

    nats-py reconnects for ever after a connection is lost, but closes it for good, whatever
    max_reconnect_attempts says, when the server sends most `-ERR`s on an open connection ("Authorization
    Violation" after a configuration reload with other credentials, say). A client kept after that fails
    every request with ConnectionClosedError until the process restarts, even once the credentials are good
    again, and nothing in the pod shows why. So the closure is said once, at ERROR with the server's reason,
    the client dropped, and the owner's next `open` connects anew (retrying until NATS takes it)."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_reconnected: Callable[[], None] | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        """`on_closed` runs when the server closed the connection (not when `close` does): time to `open`."""
        self._url = url
        self._name = name
        self._on_reconnected = on_reconnected
        self._on_closed = on_closed
        self._client: Client | None = None

    def current(self) -> Client | None:
        """The connection while it is open or reconnecting; None before the first `open`, after `close`, and
        once the server closed it."""
        client = self._client
        if client is not None and client.is_closed:
            # Its closed callback may not have come (nats-py skips it for a closure while connecting).
            self._closed_by_server(client)
            return None
        return client

    def connected(self) -> Client | None:
        """The connection while it is connected (`current`, but not while reconnecting): None when a request on it
        would only wait for the reconnect."""
        client = self.current()
        return client if client is not None and client.is_connected else None

    async def open(self) -> Client:
        """The connection, connected first if there is none (events.connect: retried until NATS takes it)."""
        client = self.current()
        if client is None:
            client = await connect(
                self._url, name=self._name, on_reconnected=self._on_reconnected, on_closed=self._closed
            )
            self._client = client
        return client

    def _closed(self) -> None:
        # Ours is dropped before `close` closes it, and one replaced since is not ours any more: neither says so.
        client = self._client
        if client is not None and client.is_closed:
            self._closed_by_server(client)

    def _closed_by_server(self, client: Client) -> None:
        self._client = None
        url = shown_nats_url(self._url)
        why = client.last_error
        log.error(
            "NATS at %s closed the connection for good (%s); %s connects anew",
            url,
            f"{type(why).__name__}: {why}" if why is not None else "no reason given",
            self._name,
            extra={"nats_url": url},
        )
        if self._on_closed is not None:
            self._on_closed()

    async def close(self, *, drain: bool = False) -> None:
        """Close it (`drain`: drain_or_close); dropped first, so that its closure is not taken for the server's."""
        client, self._client = self._client, None
        if client is None:
            return
        if drain:
            await drain_or_close(client)
        elif not client.is_closed:
            await client.close()


class StreamUpdateRefused(Exception):
    """JetStream refused for good (a configuration error, not an outage) to bring an existing stream to its
    publisher's configuration; the stream is there, as it was, and takes events."""

    def __init__(self, stream: str, reason: str) -> None:
        super().__init__(f"JetStream refuses to update stream {stream}: {reason}")
        self.stream = stream
        self.reason = reason


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: list[str],
    duplicate_window: float,
    *,
    retention: RetentionPolicy = RetentionPolicy.LIMITS,
    max_age: float = 0.0,
    update: bool = True,
) -> None:
    """Create the stream with this configuration, or (`update`) bring an existing one's subjects, duplicate
    window and max age to it.

    Only those three are the chassis' to say (its publisher's subjects, NATS_DUPLICATE_WINDOW_SECONDS,
    NATS_STREAM_MAX_AGE_SECONDS): everything else of an existing stream (replicas, max_bytes, max_msgs,
    storage, a description, ...) stays as found, since an operator may have provisioned the stream so; an
    update with the chassis' whole configuration set those back to the defaults at every reconnect.
    `max_age` (seconds, 0 = for ever): messages older than that are dropped, acknowledged or not. An
    existing stream gets it too (JetStream applies a changed max age in place, at once, to the messages it
    already holds), so a stream created before it had one stops growing with the release that sets it.
    Only the stream's publisher updates it: consumers with other settings (or of an older release) would
    otherwise set the max age back and forth at every restart; they create it when it is missing.
    One thing of the operator's is changed, when they set a size limit: its discard policy (see
    `keeping_unread_messages`), so that the limit refuses new messages instead of dropping unread ones.
    Raises StreamUpdateRefused when JetStream refuses the update for good (e.g. a subject another stream
    holds): asking again changes nothing until someone changes the streams.
    """
    config = StreamConfig(
        name=name, subjects=subjects, duplicate_window=duplicate_window, retention=retention, max_age=max_age
    )
    try:
        await js.add_stream(config)  # as it is when the stream exists with this very configuration
        return
    except BadRequestError:
        # Taken: the stream exists with another configuration (else stream_info says it is missing).
        if not update:
            return
    written = await _write_keeping_unread_messages(
        js,
        name,
        own=lambda found: dataclasses.replace(
            found, subjects=subjects, duplicate_window=duplicate_window, max_age=max_age
        ),
        refused=lambda exc: StreamUpdateRefused(name, exc.description or str(exc)),
    )
    if written is not None and written.discard_changed:
        _say_discard_changed(written.found)


async def keep_unread_messages(js: JetStreamContext, name: str) -> bool:
    """Give the stream, as it is now, the discard policy `keeping_unread_messages` says, saying so; whether it
    changed. For a size limit set on a running stream (`nats stream edit --max-msgs N` keeps discard old),
    which no declaration sees until the publisher declares the stream again.

    JetStream has no conditional update: the whole configuration read is written back, so an operator's edit
    landing between the read and the write (one round trip) is overwritten, and nothing can tell. Reading
    again just before the write would only move that window, not narrow it. What can be seen is said: the
    configuration written, at INFO, and a WARNING naming the fields, other than the discard policy, in which
    the configuration the server answers with differs from the one read (an edit landing with the write)."""
    written = await _write_keeping_unread_messages(js, name)
    if written is None:
        return False
    # Said in full: should it have overwritten an edit made meanwhile, the operator sees what to redo.
    log.info("NATS stream %s: wrote its configuration %s", name, written.wanted.as_dict())
    if changed := _changed_fields(written.found, written.answered, apart_from=_DISCARD_FIELDS):
        log.warning(
            "NATS stream %s: the configuration it has after the publisher set its discard policy differs from "
            "the one read just before in %s: an operator's edit landed at the same time, and may have been "
            "overwritten. Check it (`nats stream info %s`) and re-apply the edit if it is missing",
            name,
            ", ".join(changed),
            name,
        )
    _say_discard_changed(written.found)
    return True


# What keeping_unread_messages changes.
_DISCARD_FIELDS = frozenset({"discard", "discard_new_per_subject"})


@dataclasses.dataclass(frozen=True)
class _Written:
    found: StreamConfig  # read just before the write
    wanted: StreamConfig  # written
    answered: StreamConfig  # what the server answered the write with

    @property
    def discard_changed(self) -> bool:
        # Changed by keeping_unread_messages (these are all it changes), not by `own`: what _say_discard_changed says.
        return any(getattr(self.found, field) != getattr(self.wanted, field) for field in _DISCARD_FIELDS)


async def _write_keeping_unread_messages(
    js: JetStreamContext,
    name: str,
    *,
    own: Callable[[StreamConfig], StreamConfig] = lambda found: found,
    refused: Callable[[BadRequestError], Exception] | None = None,
) -> _Written | None:
    """Read the stream's configuration, make it `own`'s and `keeping_unread_messages`', and write it back unless
    it is so already; what was read and written, None when nothing was. What a refused update means is the
    caller's to say: `refused` makes the exception raised instead of JetStream's BadRequestError (ensure_stream's
    StreamUpdateRefused); without it, BadRequestError propagates."""
    found = (await js.stream_info(name)).config
    wanted = keeping_unread_messages(own(found))
    if wanted == found:
        return None
    try:
        answered = (await js.update_stream(wanted)).config
    except BadRequestError as exc:
        if refused is None:
            raise
        raise refused(exc) from exc
    return _Written(found, wanted, answered)


def _changed_fields(before: StreamConfig, after: StreamConfig, *, apart_from: frozenset[str]) -> list[str]:
    return [
        field.name
        for field in dataclasses.fields(before)
        if field.name not in apart_from and getattr(before, field.name) != getattr(after, field.name)
    ]


def _size_limited(config: StreamConfig) -> bool:
    # JetStream says "no limit" with -1 (and nats-py may leave a field None); 0 is no limit either.
    return any((limit or 0) > 0 for limit in (config.max_msgs, config.max_bytes, config.max_msgs_per_subject))


def keeping_unread_messages(config: StreamConfig) -> StreamConfig:
    """`config` with a discard policy under which its size limits never drop a message.

    JetStream's default, discard old, makes room in a full stream by deleting its oldest messages, whether a
    durable consumer has read them or not: with a consumer down, the events it has not read yet are gone, and
    nothing says so (the outbox relay marked them published). Discard new refuses the publish instead: the
    event stays in the outbox, the relay retries it, and the oldest-unpublished alert fires until there is
    room (messages age out, or an operator raises the limit). A per-subject limit drops its subject's oldest
    messages even under discard new, unless `discard_new_per_subject` is set too."""
    if not _size_limited(config):
        return config
    per_subject = (config.max_msgs_per_subject or 0) > 0
    return dataclasses.replace(
        config, discard=DiscardPolicy.NEW, discard_new_per_subject=per_subject or config.discard_new_per_subject
    )


def _say_discard_changed(found: StreamConfig) -> None:
    limits = ", ".join(
        f"{field} {value}"
        for field in ("max_msgs", "max_bytes", "max_msgs_per_subject")
        if ((value := getattr(found, field)) or 0) > 0
    )
    if (found.max_msgs_per_subject or 0) > 0:
        # Kept, it holds back every subject's events once one subject is full; dropped, it lost them.
        log.error(
            "NATS stream %s has a per-subject limit (%s), which must not be set on an events stream: unless "
            "discard new applies per subject, it deletes its subject's oldest messages, read or not. Its discard "
            "policy is now new, per subject too, so nothing is lost, but once one subject is full the outbox relay "
            "retries that event and holds back every event behind it, of every subject. Remove the limit "
            "(`nats stream edit --discard new %s --max-msgs-per-subject=-1`)",
            found.name,
            limits,
            found.name,
        )
        return
    log.warning(
        "NATS stream %s: discard policy changed from %s to new, its size limits (%s) kept. Under discard old a "
        "full stream deletes its oldest messages, read by every consumer or not; under discard new it refuses "
        "the publish, the event waits in the outbox and the relay retries it (ShopmeshOutboxStreamFull fires) "
        "until there is room; messages every consumer acknowledged count toward the limits until they age out",
        found.name,
        getattr(found.discard, "value", found.discard),
        limits,
    )


# JetStream's refusals of one message for what it is, not for the state of NATS: sent again, the same message
# is refused the same way (nats-server's errors.json; an outage is a timeout, no responders, a 503).
_REFUSED_FOR_GOOD = {
    10054: "message size exceeds the stream's max message size",  # JSStreamMessageExceedsMaximumErr
    10097: "headers exceed the server's maximum (64 KiB)",  # JSStreamHeaderExceedsMaximumErr
}


def refused_for_good(exc: BaseException) -> str | None:
    """Why NATS will never take the message whose publish raised `exc`; None when sending it again may work
    (an outage, a stream missing for now, anything not known to be permanent)."""
    if isinstance(exc, MaxPayloadError):
        # Refused before sending (by nats-py, or JetStreamPublisher.send counting the headers): larger than the
        # max_payload the server announced.
        return "message (payload and headers) larger than the NATS server's max_payload"
    if isinstance(exc, APIError) and exc.err_code in _REFUSED_FOR_GOOD:
        return f"{_REFUSED_FOR_GOOD[exc.err_code]}: {exc.description}"
    return None


# JetStream's answer to a publish into a stream at a size limit under discard new: err_code 10077 (a store
# failure), told apart from its other store failures by the description (nats-server's ErrMaxMsgs, ErrMaxBytes,
# ErrMaxMsgsPerSubject).
_STREAM_FULL = 10077
_FULL_DESCRIPTIONS = ("maximum messages exceeded", "maximum bytes exceeded", "maximum messages per subject exceeded")


def stream_full(exc: BaseException) -> str | None:
    """Which limit of a full stream refused the publish that raised `exc` (JetStream's description); None for
    any other failure. Sending again works once there is room: messages age out (`max_age`), or the limit is
    raised. Under LIMITS retention messages every consumer acknowledged count until they age out."""
    if isinstance(exc, APIError) and exc.err_code == _STREAM_FULL and exc.description in _FULL_DESCRIPTIONS:
        return exc.description
    return None


def header_block_size(headers: Mapping[str, str]) -> int:
    """The bytes of `headers` on the wire, as nats-py's Client._send_publish encodes them: a `NATS/1.0` line,
    `key: value` lines (both stripped, newlines in a value made spaces, empty keys skipped), a blank line."""
    size = len(b"NATS/1.0\r\n") + len(b"\r\n")
    for key, value in headers.items():
        if key.strip():
            # Newlines become spaces, byte for byte: stripping is what may shorten a value.
            size += len(key.strip().encode()) + len(b": ") + len(value.strip().encode()) + len(b"\r\n")
    return size


def fits(payload: bytes, headers: Mapping[str, str], max_payload: int) -> bool:
    """Whether NATS takes the message: the server counts the header block with the payload against its
    max_payload, and answers one over it with -ERR and a closed connection (nats-py checks the payload alone)."""
    return len(payload) + header_block_size(headers) <= max_payload


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
        return not (await self.send(subject, payload, msg_id=msg_id, headers=headers)).duplicate

    async def send(self, subject: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]) -> PubAck:
        """Publish once; the stream's acknowledgement as it is. Raises MaxPayloadError, before sending, when
        the payload and its header block together exceed the server's max_payload."""
        sent_headers = {**headers, MSG_ID: msg_id}
        # nats-py checks only the payload's length; the server counts the header block too, and answers a
        # message over its max_payload with -ERR and a closed connection, which the relay would take for an
        # outage and send again after each reconnect, holding back every event behind it.
        if not fits(payload, sent_headers, self._client.max_payload):
            raise MaxPayloadError
        return await self._js.publish(subject, payload, timeout=self._timeout, headers=sent_headers)

    async def close(self) -> None:
        await drain_or_close(self._client)


# A publisher that connects in the background, so that a service starts and serves while NATS is away:
# the outbox keeps the events, and the relay's passes fail and back off until the stream exists.
class NotConnected(ConnectionError):
    """NATS has not been reached yet (or the server closed the connection, and it is being replaced); the relay
    keeps the event and tries again."""


class DeferredJetStream:
    """The publisher of one stream, and the one who says how the stream is configured (its subjects, max
    age and duplicate window; the rest of an existing stream, an operator's to set, is kept): it declares
    the stream at start, and again whenever the stream may have been lost since and created anew by a
    consumer with that consumer's own settings (consumers create a missing stream, as their start may come
    first, but never change one): after each reconnect (NATS may have restarted without its JetStream
    store), when a publish finds no stream, and when the stream's sequence goes back (deleted and created
    again while this connection stayed up). None of these costs a request per publish. And every
    DISCARD_CHECK_SECONDS, one stream info: a size limit an operator set on the running stream keeps JetStream's
    discard old, which deletes unread events once the stream is full, until it is made discard new."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        stream: str,
        subjects: list[str],
        duplicate_window_seconds: float,
        max_age_seconds: float = DEFAULT_STREAM_MAX_AGE_SECONDS,
        max_retry_delay: float = 10.0,
    ) -> None:
        parse_nats_url(url)  # a URL whose credentials cannot be read fails here, not in retries for ever
        self._url = url
        self._name = name
        self._stream = stream
        self._subjects = subjects
        self._duplicate_window = duplicate_window_seconds
        self._max_age = max_age_seconds
        self._max_retry_delay = max_retry_delay
        self._connection = NatsConnection(url, name=name, on_reconnected=self._reconnected, on_closed=self._closed)
        # Set once connected and the stream declared; None again while connecting anew (publish: NotConnected).
        self._publisher: JetStreamPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_ready: Callable[[], None] = lambda: None
        # The declaration started by a reconnect or a stream that started over, while it retries.
        self._redeclaring: asyncio.Task[None] | None = None
        # The stream sequence of the last event this publisher stored: a stream created anew starts from 1.
        self._sequence = 0
        # Why JetStream last refused for good to update the stream, once said (None: the last declaration took).
        self._refused: str | None = None
        # Read at construction, not as a default argument: tests shorten it.
        self._discard_check = Periodic(f"stream-discard-check-{stream}", DISCARD_CHECK_SECONDS, self._check_discard)

    @classmethod
    def from_settings(cls, settings: EventSettings, *, stream: str, subjects: list[str]) -> DeferredJetStream:
        """The publisher of a service's stream, as its settings describe NATS and the stream's limits."""
        return cls(
            settings.nats_url,
            name=settings.service_name,
            stream=stream,
            subjects=subjects,
            duplicate_window_seconds=settings.nats_duplicate_window_seconds,
            max_age_seconds=settings.nats_stream_max_age_seconds,
        )

    def start(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Connect and declare the stream in the background; `on_ready` runs once both are done, and again
        each time the publisher connected anew after the server closed its connection for good."""
        self._on_ready = on_ready
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="jetstream-connect")

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                client = await self._connection.open()
                await self._declare_stream()
                if self._connection.current() is client:
                    break
                # Closed by the server during the declaration: its callback found this connect under way.
                raise NotConnected(f"NATS at {shown_nats_url(self._url)} closed the connection")
            except Exception as exc:
                # A request that failed as the cancel came, and lost it (Python 3.11's wait_for, in nats-py):
                # else it retries for ever, and close() with it.
                stop_if_cancelled()
                # Refused (auth), or connected while JetStream does not answer yet (starting, no quorum).
                log.warning("NATS stream %s not ready, retrying in %.1fs: %s", self._stream, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
        self._publisher = JetStreamPublisher(client)
        log.info("connected to NATS; stream %s is ready", self._stream)
        self._discard_check.start()
        self._on_ready()

    async def _check_discard(self) -> None:
        """Make a size limit set on the running stream discard new (keep_unread_messages). Quiet while NATS or
        the stream is away: the connection says the first, and a publish declares the stream again."""
        client = self._connection.connected()
        if self._publisher is None or client is None:
            return
        try:
            await keep_unread_messages(client.jetstream(), self._stream)
        except BadRequestError as exc:
            log.error(
                "NATS stream %s has a size limit under discard old, which deletes events no consumer has read once "
                "it is full, and JetStream refuses to make it discard new: %s. Set it (`nats stream edit "
                "--discard new %s`)",
                self._stream,
                exc.description or exc,
                self._stream,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # NATS or JetStream away (the connection's log says so), or the stream gone (a publish declares it).
            log.debug("NATS stream %s: discard policy not checked: %r", self._stream, exc)

    def _closed(self) -> None:
        # The server closed the connection for good: connect anew, with the start's backoff, unless a
        # connect is under way already (its next try opens a new connection).
        self._publisher = None
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="jetstream-connect")

    async def publish(self, subject: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]) -> bool:
        publisher = self._publisher
        # current(): a closure whose callback has not come yet starts the new connection too.
        if publisher is None or self._connection.current() is None:
            raise NotConnected(f"not connected to NATS at {shown_nats_url(self._url)} yet")
        try:
            ack = await publisher.send(subject, payload, msg_id=msg_id, headers=headers)
        except NoStreamResponseError:
            # No stream takes the subject any more: NATS restarted without its JetStream store, or the stream
            # was deleted, and no consumer has created it again yet: declare it, then send once more.
            log.warning("NATS stream %s is gone; declaring it again", self._stream)
            await self._declare_stream()
            ack = await publisher.send(subject, payload, msg_id=msg_id, headers=headers)
        if not ack.duplicate:  # a duplicate's acknowledgement names the sequence of the event it repeats
            if ack.seq <= self._sequence:
                # The stream started over since this publisher's last event: lost and created again, perhaps
                # by a consumer with its own max age. Bring it to this publisher's configuration.
                self._declare_again(f"its sequence went back from {self._sequence} to {ack.seq}")
            self._sequence = ack.seq
        return not ack.duplicate

    def _reconnected(self) -> None:
        # NATS may be back without its store, the stream already created again by a consumer reconnecting
        # first (0.5 s after an interruption, doubling up to 10 s) with that consumer's settings. Before the
        # start's declaration, that one will do.
        if self._publisher is not None:
            self._declare_again("reconnected")

    def _declare_again(self, why: str) -> None:
        """Bring the stream to this publisher's configuration in the background, retrying until it is done."""
        if self._redeclaring is None or self._redeclaring.done():
            self._redeclaring = asyncio.get_running_loop().create_task(self._redeclare(why), name="jetstream-redeclare")

    async def _redeclare(self, why: str) -> None:
        delay = 0.5
        while True:
            try:
                if await self._declare_stream():
                    log.info("NATS stream %s declared again as configured (%s)", self._stream, why)
                return
            except Exception as exc:
                stop_if_cancelled()  # as in _connect
                # JetStream not answering yet (just restarted, no quorum), or the connection lost again.
                log.warning("NATS stream %s not declared again yet, retrying in %.1fs: %s", self._stream, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)

    async def _declare_stream(self) -> bool:
        """Declare the stream; False when it exists but JetStream refused for good to bring it to this
        configuration. Asking again would be refused again (retried, it was an unending WARNING at the
        longest backoff, and a start that never got ready): the stream takes the events as it is, and an
        ERROR says once why and what to do. Errors of an outage (timeouts, no JetStream yet) propagate, and
        NotConnected while there is no connection (the server closed it: it is being replaced)."""
        client = self._connection.current()
        if client is None:
            raise NotConnected(f"not connected to NATS at {shown_nats_url(self._url)}")
        try:
            await ensure_stream(
                client.jetstream(), self._stream, self._subjects, self._duplicate_window, max_age=self._max_age
            )
        except StreamUpdateRefused as exc:
            if exc.reason != self._refused:
                self._refused = exc.reason
                log.error(
                    "NATS stream %s exists, but JetStream refuses to give it this publisher's subjects %s, "
                    "duplicate window %gs and max age %gs: %s. Events are published to it as it is; change "
                    "the stream (`nats stream edit --discard new %s`) or the service's settings; it is declared "
                    "again at the service's next start or reconnect",
                    self._stream,
                    ",".join(self._subjects),
                    self._duplicate_window,
                    self._max_age,
                    exc.reason,
                    self._stream,
                )
            return False
        self._refused = None
        return True

    async def close(self) -> None:
        await self._discard_check.stop(timeout=1.0)
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._redeclaring is not None:
            await cancel_and_wait(self._redeclaring)
            self._redeclaring = None
        # Dropped first: a close that fails must not leave a publisher that looks connected to a next start.
        self._publisher = None
        self._sequence = 0
        await self._connection.close(drain=True)
