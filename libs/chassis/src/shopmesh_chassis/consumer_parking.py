"""Parking a message a consumer gives up on: the dead letter it publishes, or, when NATS takes not even one
without its payload, the drop it logs.

A letter carries the event as first delivered, why it was parked and the handler's attempts on it (the
format is deadletters.py's); the caller acknowledges the message once `park` returns, whichever the outcome.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import nats.aio.client
import nats.errors
from nats.aio.msg import Msg

from shopmesh_chassis.deadletters import (
    ATTEMPTS,
    ORIGINAL_EVENT_ID,
    ORIGINAL_SUBJECT,
    PAYLOAD_OMITTED,
    fitted_letter,
    parked_subject,
    payload_omitted,
)
from shopmesh_chassis.events import MSG_ID, NatsConnection, refused_for_good

if TYPE_CHECKING:
    from shopmesh_chassis.consumer import Event

log = logging.getLogger("shopmesh.consumer")

# What became of a message parked: on the dead-letter stream, or lost (logged, counted).
Parked = Literal["dead_lettered", "dropped"]


class Parking:
    """Publishes one consumer's dead letters on the connection it consumes on."""

    def __init__(self, durable: str, connection: NatsConnection) -> None:
        self._durable = durable
        self._connection = connection

    async def park(self, message: Msg, event: Event, error: str, *, attempts: int, say: bool = True) -> Parked:
        """Publish the message to the dead-letter stream with why (`error`) and the handler's attempts on it,
        or drop it (_drop); the caller acknowledges it then. `say` False when the caller logs it its own way."""
        where = parked_subject(self._durable, event.subject)
        if say:
            log.error(
                "event %s failed %d times, parking it on %s: %s",
                event.event_id,
                attempts,
                where,
                error,
                extra={"event_id": event.event_id},
            )
        client = self._connection.current()
        if client is None:
            # The server closed the connection: the consumer connects anew, and the message comes back after its
            # ack wait.
            raise nats.errors.ConnectionClosedError
        # The park's id names the delivery that failed (stream and sequence): the same delivery parked
        # twice (a crash before the ack) is one dead letter, while the same event parked again after a
        # replay within the duplicate window is a new one, not dropped as a duplicate.
        stored_at = (message.metadata.stream, message.metadata.sequence.stream) if message.metadata else None
        delivery = f"{stored_at[0]}:{stored_at[1]}" if stored_at is not None else ""
        headers = {
            **{k: v for k, v in event.headers.items() if k != MSG_ID},
            MSG_ID: f"{self._durable}:{event.event_id}:{delivery}",
            ORIGINAL_SUBJECT: event.subject,
            ORIGINAL_EVENT_ID: event.event_id,
            ATTEMPTS: str(attempts),
        }
        # A letter over the server's max_payload would be answered with -ERR and a closed connection: the
        # message back after its ack wait, parked in vain again, for ever, and the poison behind it never parked.
        letter = fitted_letter(event.payload, headers, error, client.max_payload, stored_at=stored_at)
        # Why no letter went out, for the drop's log line: what the operator must change before it recurs.
        refused = f"not even its headers fit under NATS' max_payload ({client.max_payload} bytes)"
        if letter is not None:
            try:
                await client.jetstream().publish(where, letter[0], headers=letter[1])
            except Exception as exc:
                why = refused_for_good(exc)
                if why is None:
                    raise  # an outage: the message comes back after its ack wait, and is parked then
                refused = why
                letter = await self._park_without_payload(client, where, letter, stored_at, why)
        if letter is None:
            self._drop(event, where, stored_at, refused)
            return "dropped"
        if PAYLOAD_OMITTED in letter[1]:
            log.error(
                "event %s parked on %s without its payload: %s",
                event.event_id,
                where,
                letter[1][PAYLOAD_OMITTED],
                extra={"event_id": event.event_id},
            )
        return "dead_lettered"

    async def _park_without_payload(
        self,
        client: nats.aio.client.Client,
        where: str,
        letter: tuple[bytes, dict[str, str]],
        stored_at: tuple[str, int] | None,
        refused: str,
    ) -> tuple[bytes, dict[str, str]] | None:
        """JetStream refused the letter for good (`refused`: the dead-letter stream's max message size, say):
        park it without its payload, saying where the event is stored; None when that is refused too."""
        if PAYLOAD_OMITTED in letter[1]:
            return None
        why = f"{len(letter[0])} bytes refused by JetStream ({refused})"
        omitted = payload_omitted(letter[1], why, stored_at, client.max_payload)
        if omitted is None:
            return None
        try:
            await client.jetstream().publish(where, omitted[0], headers=omitted[1])
        except Exception as exc:
            if refused_for_good(exc) is None:
                raise
            return None
        return omitted

    def _drop(self, event: Event, where: str, stored_at: tuple[str, int] | None, refused: str) -> None:
        """Not even a letter without its payload is taken: said here, then acknowledged unparked and counted by
        the caller, rather than delivered, refused and delivered again for ever (holding a slot of the durable).

        The event is lost to this consumer: the log line is the only record of it, so it carries all the
        runbook (docs/operations.md, ShopmeshEventsDropped) needs to find it (`nats stream get <stream>
        <sequence>` while the stream keeps it) and to stop the next: consumer, event id, subject, stream,
        sequence (`stored_at`, None when the message carried no metadata), and why NATS refused (`refused`, its
        last refusal). In the message and as JSON fields."""
        stream, sequence = stored_at if stored_at is not None else ("?", "?")
        log.error(
            "consumer %s dropped event %s (subject %s, stored as stream %s sequence %s while that stream keeps "
            "it): after its last attempt it could not be parked on %s (%s); acknowledged unapplied",
            self._durable,
            event.event_id,
            event.subject,
            stream,
            sequence,
            where,
            refused,
            extra={
                "event_id": event.event_id,
                "consumer": self._durable,
                "subject": event.subject,
                "stream": stream,
                "stream_sequence": sequence,
            },
        )
