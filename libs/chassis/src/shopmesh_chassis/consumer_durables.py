"""The durable a consumer shares with the replicas of other releases: its filter widened, never narrowed.

Replicas of two releases share the durable during a rolling update (or a rollback): at start a replica widens
the durable's filter to the union of what it finds and its own subjects, and drops only the subjects its
release retires by name. `covers` is NATS' subject matching, which the consumer also uses to tell which
deliveries are its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

log = logging.getLogger("shopmesh.consumer")

# Rounds of read, widen, read back at start before going on with the filter as it is (see bring_durable).
_FILTER_ROUNDS = 3


def _tokens_cover(pattern: list[str], subject: list[str]) -> bool:
    """Whether every subject that `subject` matches (itself a filter, perhaps with wildcards) is matched by
    `pattern`, token by token as NATS matches."""
    for index, token in enumerate(pattern):
        if token == ">":
            return index < len(subject)
        if index >= len(subject) or subject[index] == ">":
            return False
        if token != "*" and token != subject[index]:
            return False
    return len(pattern) == len(subject)


def covers(pattern: str, subject: str) -> bool:
    """Whether the filter `pattern` matches everything `subject` (a subject or a filter) matches."""
    return _tokens_cover(pattern.split("."), subject.split("."))


def widened_filter(current: Sequence[str], own: Sequence[str], retired: Sequence[str]) -> list[str]:
    """The durable's filter once a replica consuming `own` and retiring `retired` has started: what the
    other releases' replicas put there kept, less what this release retires, and without a filter another
    one covers (JetStream refuses overlapping filters: a release that takes `orders.v1.>` in place of its
    subjects would never start)."""
    wanted = {subject for subject in current if subject not in retired} | set(own)
    return sorted(s for s in wanted if not any(o != s and covers(o, s) for o in wanted))


def filter_of(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return sorted(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


async def bring_durable(
    js: JetStreamContext,
    stream: str,
    durable: str,
    subjects: list[str],
    retired: list[str],
    *,
    ack_wait_seconds: float,
    max_ack_pending: int,
) -> list[str]:
    """Create the durable, or widen it to these subjects too, never narrowing what other replicas (of
    another release) consume through it; its filter as written.

    Narrowing would lose events: a subject taken off the filter has its messages skipped by the durable
    for good, even once put back. JetStream updates a consumer without compare-and-set, so a replica
    whose read of the durable came before this one's write may write its own union over ours; the read
    back catches that when it lands first, and the union is written again. One that lands after the read
    back needs the other replica to stall between its own read and write for longer than our write and
    read take (two requests): only the subjects new since its read are then lost, until a replica starts."""
    wanted: list[str] = []
    for _ in range(_FILTER_ROUNDS):
        try:
            current = filter_of((await js.consumer_info(stream, durable)).config)
        except nats.js.errors.NotFoundError:
            current = []
        wanted = widened_filter(current, subjects, retired)
        await js.add_consumer(stream, _consumer_config(durable, wanted, ack_wait_seconds, max_ack_pending))
        after = filter_of((await js.consumer_info(stream, durable)).config)
        if all(any(covers(f, w) for f in after) for w in wanted):
            return after
        log.warning(
            "consumer %s: another replica wrote the durable's filter at the same time (%s); widening it again",
            durable,
            ",".join(after),
        )
    # Replicas of a release before this rule (which set their own subjects) starting one after another:
    # each of our rounds widened it, and consuming beats failing the start over it.
    log.warning("consumer %s: its filter keeps changing under it; consuming with %s", durable, ",".join(wanted))
    return wanted


def _consumer_config(
    durable: str, subjects: list[str], ack_wait_seconds: float, max_ack_pending: int
) -> ConsumerConfig:
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_seconds,
        max_ack_pending=max_ack_pending,
        # Redelivery is bounded by our own count (then the dead-letter stream), not the server's: a
        # message held back while the database is away must come back however long the outage lasts.
        # No server-side backoff either: each nak says its own delay.
        max_deliver=-1,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
    )
