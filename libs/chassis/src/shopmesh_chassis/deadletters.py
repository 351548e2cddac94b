"""The dead-letter stream: where consumers park the events they could not apply, and the way back.

`EventConsumer` parks a message after its last attempt as `deadletter.<consumer>.<subject>` on the
`DEADLETTER` stream, with its original headers and why it failed, and acknowledges it so the messages
behind it flow. Once the cause is gone (a bug deployed away, a row that was missing now there), an
operator replays it: the message moves to `replay.<consumer>.<subject>` on the `REPLAY` stream, which
only that consumer reads, and leaves `DEADLETTER`. The consumer applies it as it would have the first
time, under the same event id (an event applied in the meantime has no second effect: the consumer's
purge keeps the ids of the events waiting here, see waiting_event_ids), and parks it again if it still
fails. Other consumers of the subject never see a replay: they had applied the event.

`shopmesh-deadletters` (deadletters_cli.py) is the operator's command for this module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, RetentionPolicy
from nats.js.errors import NotFoundError

from shopmesh_chassis.events import MSG_ID, ensure_stream, fits, header_block_size

DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"
REPLAY_STREAM = "REPLAY"
# The duplicate window of both streams: the chassis', not any consumer's NATS_DUPLICATE_WINDOW_SECONDS (each
# consumer declared them with its own, and consumers with different settings set it back and forth at every
# start). A day: a replica that died between a park and its acknowledgement parks the same delivery again when
# it is delivered anew, and a replay command that died between its publish and its delete is run again, both
# within it as a rule; past it a second letter is all (a replay applies an event once). Few ids to remember.
DEAD_LETTER_DUPLICATE_WINDOW_SECONDS = 86400.0
REPLAY_PREFIX = "replay"

# Headers a parked message carries besides the original ones.
ORIGINAL_SUBJECT = "Shopmesh-Original-Subject"
ORIGINAL_EVENT_ID = "Shopmesh-Original-Event-Id"
ERROR = "Shopmesh-Error"
ATTEMPTS = "Shopmesh-Attempts"
# On a replayed message: the dead-letter sequence it was replayed from (for logs and traces).
REPLAYED_FROM = "Shopmesh-Replayed-From"
# On a letter parked without its payload (the payload and the letter's headers together were more than NATS
# takes): why, and where the event is stored (its stream and sequence there, while that stream keeps it).
PAYLOAD_OMITTED = "Shopmesh-Payload-Omitted"
ORIGINAL_STREAM = "Shopmesh-Original-Stream"
ORIGINAL_SEQUENCE = "Shopmesh-Original-Sequence"
BOOKKEEPING_HEADERS = frozenset(
    {
        MSG_ID,
        ORIGINAL_SUBJECT,
        ORIGINAL_EVENT_ID,
        ERROR,
        ATTEMPTS,
        REPLAYED_FROM,
        PAYLOAD_OMITTED,
        ORIGINAL_STREAM,
        ORIGINAL_SEQUENCE,
    }
)
# JetStream's sequences: unsigned 64-bit, the first message 1.
MIN_SEQUENCE = 1
MAX_SEQUENCE = 2**64 - 1


def is_consumer_name(name: str) -> bool:
    """Whether `name` can name one consumer in a subject: empty, a dot, a wildcard or a space would
    make a filter for every consumer's parked messages (or another subject) instead."""
    return bool(name) and not any(character in ".*>" or character.isspace() for character in name)


class NotAConsumerName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is no consumer name: a name is not empty and has no '.', '*', '>' or space")
        self.name = name


def parked_subject(consumer: str, subject: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{consumer}.{subject}"


def replay_subject(consumer: str, subject: str) -> str:
    return f"{REPLAY_PREFIX}.{consumer}.{subject}"


def replay_filter(consumer: str) -> str:
    return f"{REPLAY_PREFIX}.{consumer}.>"


def replay_durable(consumer: str) -> str:
    return f"{consumer}-replay"


async def ensure_dead_letter_streams(js: JetStreamContext, *, update: bool = True) -> None:
    """Declare both streams, with DEAD_LETTER_DUPLICATE_WINDOW_SECONDS. REPLAY is a work queue: a replayed
    message is gone once its consumer acks it.

    Neither has a max age, unlike the event streams: a parked message waits for an operator's decision
    however long that takes (`shopmesh_events_dead_letters` says it waits), and only discard drops it."""
    window = DEAD_LETTER_DUPLICATE_WINDOW_SECONDS
    await ensure_stream(js, DEAD_LETTER_STREAM, [f"{DEAD_LETTER_PREFIX}.>"], window, update=update)
    await ensure_stream(
        js, REPLAY_STREAM, [f"{REPLAY_PREFIX}.>"], window, retention=RetentionPolicy.WORK_QUEUE, update=update
    )


async def waiting_event_ids(js: JetStreamContext, consumer: str, *, limit: int | None = None) -> set[str]:
    """The event ids of `consumer`'s messages that may still reach it: parked on `DEADLETTER`, or replayed
    and not yet acknowledged on `REPLAY`. Its purge keeps their applied ids (a replay must find the id of an
    event applied in the meantime, however long the letter waited). One request per message, and one per
    stream; `DEADLETTER` is read first, since a replay publishes to `REPLAY` before it deletes the letter.
    With a `limit`, reading stops once more than that many ids are found."""
    found: set[str] = set()
    for stream, subject in (
        (DEAD_LETTER_STREAM, parked_subject(consumer, ">")),
        (REPLAY_STREAM, replay_filter(consumer)),
    ):
        sequence = MIN_SEQUENCE
        while True:
            try:
                message = await js.get_msg(stream, sequence, subject=subject, next=True)
            except NotFoundError:
                break  # no more (or no such stream: nothing parked yet)
            event_id = (message.headers or {}).get(ORIGINAL_EVENT_ID)
            if event_id:
                found.add(event_id)
                if limit is not None and len(found) > limit:
                    return found
            sequence = (message.seq or sequence) + 1
    return found


class ReplayRefused(ValueError):
    """The letter cannot be replayed as it is; it stays parked."""


class PayloadNotParked(ReplayRefused):
    """The letter was parked without its payload (too large with its headers): a replay would apply no event."""

    def __init__(self, letter: DeadLetter) -> None:
        where = letter.headers.get(ORIGINAL_STREAM, "?"), letter.headers.get(ORIGINAL_SEQUENCE, "?")
        super().__init__(
            f"dead letter {letter.sequence} not replayed: it was parked without its payload "
            f"({letter.headers.get(PAYLOAD_OMITTED, '')}); the event is on stream {where[0]}, sequence {where[1]}, "
            "while that stream keeps it; it stays parked: fix or discard it"
        )
        self.letter = letter


class ReplayTooLarge(ReplayRefused):
    """The replay (the letter's payload and headers, and the replay's own) is more than NATS takes."""

    def __init__(self, letter: DeadLetter, max_payload: int) -> None:
        super().__init__(
            f"dead letter {letter.sequence} not replayed: its payload ({len(letter.payload)} bytes) and headers "
            f"are over NATS' max_payload ({max_payload}); it stays parked"
        )
        self.letter = letter


class NoSuchDeadLetter(LookupError):
    def __init__(self, sequence: int) -> None:
        super().__init__(f"no dead letter with sequence {sequence} (`list` shows what is parked)")
        self.sequence = sequence


class NoReplayConsumer(LookupError):
    """Nothing reads the parked message's consumer's replays: renamed or retired by a release, or a name
    published by hand. A replay would vanish from every view of the parked messages and never be applied."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(
            f"dead letter {letter.sequence} not replayed: no consumer {letter.consumer!r} reads replays (no "
            f"durable {replay_durable(letter.consumer)!r} on {REPLAY_STREAM}); it stays parked: start that "
            "consumer, or discard it"
        )
        self.letter = letter


@dataclass(frozen=True)
class DeadLetter:
    """One parked message, as `DEADLETTER` holds it."""

    sequence: int
    consumer: str
    subject: str
    event_id: str
    attempts: int
    error: str  # why the last attempt failed: "<exception type>: <message>"
    parked_at: datetime | None
    payload: bytes
    headers: Mapping[str, str]

    @classmethod
    def from_message(cls, message: RawStreamMsg) -> DeadLetter:
        headers: dict[str, str] = dict(message.headers or {})
        # deadletter.<consumer>.<subject...>: the consumer's name has no dots (NATS forbids them in names).
        # Anything else on the stream (published by hand) is still listed, with what can be read of it.
        parts = (message.subject or "").split(".", 2)
        consumer = parts[1] if len(parts) > 1 else ""
        subject = parts[2] if len(parts) > 2 else ""
        attempts = headers.get(ATTEMPTS, "0")
        return cls(
            sequence=message.seq or 0,
            consumer=consumer,
            subject=headers.get(ORIGINAL_SUBJECT, subject),
            event_id=headers.get(ORIGINAL_EVENT_ID, ""),
            attempts=int(attempts) if attempts.isdigit() else 0,
            error=_error_text(headers.get(ERROR, "")),
            parked_at=message.time,
            payload=message.data or b"",
            headers=headers,
        )


# The most a parked message's error header takes, quotes and escapes included: a database error names
# its statement and parameters, and a header that long is read by every `list`.
ERROR_HEADER_LIMIT = 500
_CUT = "…"


def error_header(error: str, limit: int = ERROR_HEADER_LIMIT) -> str:
    """The error as its header holds it: JSON-quoted (a header value cannot hold every character), cut to
    `limit` with its text cut first, so that the header stays JSON `list` can read back."""
    quoted = json.dumps(error)
    if len(quoted) <= limit:
        return quoted
    # Escapes take up to 12 characters each (a surrogate pair): find the longest prefix whose quoting fits.
    low, high = 0, min(len(error), limit)
    while low < high:
        middle = (low + high + 1) // 2
        if len(json.dumps(error[:middle] + _CUT)) <= limit:
            low = middle
        else:
            high = middle - 1
    return json.dumps(error[:low] + _CUT)


# The shortest error header a letter is cut to before its payload is left out instead: the exception's type
# and the start of its message, enough to tell one failure from another in `list`.
MIN_ERROR_HEADER = 100


def without_payload(headers: Mapping[str, str], why: str, stored_at: tuple[str, int] | None) -> dict[str, str]:
    """The headers of a letter parked without its payload: `headers`, PAYLOAD_OMITTED saying `why` and where
    the event is stored (`stored_at`: its stream and sequence), and that stream and sequence as headers of
    their own, so that an operator (or `list`) finds the event there while that stream keeps it."""
    where = f"{stored_at[0]} sequence {stored_at[1]}" if stored_at is not None else "an unknown stream"
    omitted = {**headers, PAYLOAD_OMITTED: f"{why}; the event is stored as {where}"}
    if stored_at is not None:
        omitted |= {ORIGINAL_STREAM: stored_at[0], ORIGINAL_SEQUENCE: str(stored_at[1])}
    return omitted


def payload_omitted(
    headers: Mapping[str, str], why: str, stored_at: tuple[str, int] | None, max_payload: int
) -> tuple[bytes, dict[str, str]] | None:
    """The letter parked without its payload (see without_payload), if NATS takes it under `max_payload`;
    None when not even its headers fit."""
    omitted = without_payload(headers, why, stored_at)
    return (b"", omitted) if fits(b"", omitted, max_payload) else None


def fitted_letter(
    payload: bytes, headers: Mapping[str, str], error: str, max_payload: int, *, stored_at: tuple[str, int] | None
) -> tuple[bytes, dict[str, str]] | None:
    """The letter of a message NATS takes (`headers` and the error header made of `error`, with `payload`),
    made to fit under `max_payload`: as it is; else with its error cut (to no less than MIN_ERROR_HEADER);
    else without its payload, saying so and where the event is stored (`stored_at`: its stream and sequence),
    so that an operator finds it there while that stream keeps it. None when not even that fits."""
    whole = {**headers, ERROR: error_header(error)}
    if fits(payload, whole, max_payload):
        return payload, whole
    others = {k: v for k, v in headers.items() if k != ERROR}
    room = max_payload - len(payload) - header_block_size({**others, ERROR: ""})
    if room >= MIN_ERROR_HEADER:
        return payload, {**others, ERROR: error_header(error, room)}
    why = f"{len(payload)} bytes with the letter's headers are over NATS' max_payload ({max_payload})"
    return payload_omitted(whole, why, stored_at, max_payload)


def _error_text(header: str) -> str:
    # Quoted by error_header; one published by hand may be plain text.
    try:
        text = json.loads(header)
    except ValueError:
        return _cut_quote_text(header)
    return text if isinstance(text, str) else header


def _cut_quote_text(header: str) -> str:
    """The text of a header releases before error_header cut after quoting (parked messages outlive a
    release): closed again, less an escape cut in half; any other header as it is."""
    if not header.startswith('"'):
        return header
    for end in range(len(header), max(len(header) - 12, 0), -1):
        try:
            text = json.loads(header[:end] + '"')
        except ValueError:
            continue
        if isinstance(text, str):
            return text + _CUT
    return header


# What a replay carries of the letter's bookkeeping: what the consumer reads of it (the event's id, under
# which it applies the event and which waiting_event_ids reads on REPLAY, and its subject).
REPLAY_KEEPS = (ORIGINAL_EVENT_ID, ORIGINAL_SUBJECT)


def replay_headers(letter: DeadLetter) -> dict[str, str]:
    """The headers a replay of `letter` is sent with: the event's own, what the consumer reads of the letter's
    (REPLAY_KEEPS), the replay's id and Shopmesh-Replayed-From. The error and attempts stay behind: the consumer
    reads neither, and a letter parked with its error cut to fill max_payload (fitted_letter) fits only
    without them. They take at least 16 + MIN_ERROR_HEADER + 2 and 17 + 1 + 2 bytes (`key: value` lines),
    more than the replay adds: "replay:" (7) and a `Shopmesh-Replayed-From: <sequence>` line (24 + at most 20
    + 2), so the replay of any letter parked with its payload is smaller than the letter."""
    # The parked message's own id is unique per park (it names the delivery that failed), so a message
    # parked again after a failed replay gets a new replay id, while a repeated command does not.
    parked_id = letter.headers.get(MSG_ID, f"{letter.consumer}:{letter.event_id}:{letter.sequence}")
    kept = {k: v for k, v in letter.headers.items() if k not in BOOKKEEPING_HEADERS or k in REPLAY_KEEPS}
    return {**kept, MSG_ID: f"replay:{parked_id}", REPLAYED_FROM: str(letter.sequence)}


class DeadLetters:
    """List, replay and discard parked messages."""

    def __init__(self, js: JetStreamContext, *, max_payload: int | None = None) -> None:
        """`max_payload`: the NATS server's (a replay over it is refused before sending); by default what the
        server announced to `js`'s connection."""
        self._js = js
        self._max_payload = max_payload

    async def list(self, consumer: str | None = None) -> list[DeadLetter]:
        """Every parked message (of one consumer if given), oldest first."""
        if consumer is not None and not is_consumer_name(consumer):
            raise NotAConsumerName(consumer)
        wanted = f"{DEAD_LETTER_PREFIX}.{consumer}.>" if consumer is not None else f"{DEAD_LETTER_PREFIX}.>"
        try:
            await self._js.stream_info(DEAD_LETTER_STREAM)
        except NotFoundError:
            return []  # no consumer has started yet, so none has parked anything
        found: list[DeadLetter] = []
        sequence = 1
        while True:
            try:
                message = await self._js.get_msg(DEAD_LETTER_STREAM, sequence, subject=wanted, next=True)
            except NotFoundError:
                return found
            found.append(DeadLetter.from_message(message))
            sequence = (message.seq or sequence) + 1

    async def get(self, sequence: int) -> DeadLetter:
        # NATS answers another sequence with a bad request, not "not found".
        if not MIN_SEQUENCE <= sequence <= MAX_SEQUENCE:
            raise NoSuchDeadLetter(sequence)
        try:
            return DeadLetter.from_message(await self._js.get_msg(DEAD_LETTER_STREAM, sequence))
        except NotFoundError:
            raise NoSuchDeadLetter(sequence) from None

    async def replay(self, sequence: int) -> DeadLetter:
        """Hand the message back to the consumer that parked it, then remove it from `DEADLETTER`; refused
        (NoReplayConsumer) while that consumer has no replay durable to read it.

        Publish first, delete second: a command that dies in between leaves the message parked, and
        running it again publishes under the same message id, which `REPLAY` drops as a duplicate."""
        letter = await self.get(sequence)
        if PAYLOAD_OMITTED in letter.headers:
            raise PayloadNotParked(letter)
        # Create-only: the command never changes the streams' settings (the consumers bring them to the chassis').
        await ensure_dead_letter_streams(self._js, update=False)
        try:
            await self._js.consumer_info(REPLAY_STREAM, replay_durable(letter.consumer))
        except NotFoundError:
            raise NoReplayConsumer(letter) from None
        headers = replay_headers(letter)
        # Sent over the server's max_payload, it would close the connection and leave the operator guessing.
        max_payload = self._max_payload if self._max_payload is not None else self._js._nc.max_payload
        if not fits(letter.payload, headers, max_payload):
            raise ReplayTooLarge(letter, max_payload)
        await self._js.publish(replay_subject(letter.consumer, letter.subject), letter.payload, headers=headers)
        await self._delete(sequence)
        return letter

    async def discard(self, sequence: int) -> DeadLetter:
        """Remove the message for good (an event that must not be applied any more)."""
        letter = await self.get(sequence)
        await self._delete(sequence)
        return letter

    async def _delete(self, sequence: int) -> None:
        # Removed by a concurrent command already: what was asked for holds.
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(DEAD_LETTER_STREAM, sequence)
