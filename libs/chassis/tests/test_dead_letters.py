"""Dead letters: what a consumer parked can be listed, replayed to that consumer alone, or discarded."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RawStreamMsg
from prometheus_client import CollectorRegistry

from shopmesh.orders.v1 import events_pb2
from shopmesh_chassis import deadletters_cli as cli
from shopmesh_chassis.consumer import Event, EventConsumer, decode_event
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.deadletters import (
    DEAD_LETTER_DUPLICATE_WINDOW_SECONDS,
    DEAD_LETTER_STREAM,
    ERROR,
    ERROR_HEADER_LIMIT,
    ORIGINAL_EVENT_ID,
    ORIGINAL_SUBJECT,
    REPLAY_STREAM,
    DeadLetter,
    DeadLetters,
    NoSuchDeadLetter,
    NotAConsumerName,
    ensure_dead_letter_streams,
    error_header,
    replay_durable,
    replay_filter,
    waiting_event_ids,
)
from shopmesh_chassis.deadletters_cli import parse_args
from shopmesh_chassis.events import EVENT_TYPE, MSG_ID
from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_chassis.metrics import EventMetrics
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_chassis.testing.nats_server import NatsServer

from .consumer_kit import applied, client, consumer, db, publish, record, until_applied, until_durable
from .nats_kit import deadletters_cli

__all__ = ["client", "db"]  # fixtures, used by name

SUBJECT = "things.v1.happened"


class Switch:
    """A handler that fails until it is fixed, as one does until a bug fix is deployed."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls: Counter[str] = Counter()

    async def __call__(self, session: DbConnection, event: Event) -> None:
        self.calls[event.event_id] += 1
        if not self.fixed:
            raise ValueError("no such customer")
        await record(session, event)


async def parked(client: Client, count: int) -> list[DeadLetter]:
    letters = DeadLetters(client.jetstream())

    async def listed() -> list[DeadLetter] | None:
        found = await letters.list()
        return found if len(found) == count else None

    result = await eventually(listed, f"{count} dead letter(s)")
    assert result is not None
    return result


def counted(registry: CollectorRegistry, outcome: str, consumer: str = "tester") -> float:
    labels = {"consumer": consumer, "subject": SUBJECT, "outcome": outcome}
    return registry.get_sample_value("shopmesh_events_consumed_total", labels) or 0.0


def parked_now(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("shopmesh_events_dead_letters", {"consumer": "tester"})


async def test_a_parked_event_is_listed_with_who_parked_it_and_why(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    running = consumer(db, nats_srv.url, Switch(), max_attempts=2)
    running.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    await running.stop()
    assert (letter.consumer, letter.subject, letter.event_id, letter.attempts) == ("tester", SUBJECT, "e1", 2)
    assert letter.error == "ValueError: no such customer"
    assert letter.payload == b"x"
    assert letter.parked_at is not None
    assert await DeadLetters(client.jetstream()).list(consumer="someone-else") == []


async def test_a_long_error_is_listed_as_text_not_as_cut_json(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # A database error names its statement and parameters: hundreds of characters over several lines.
    why = "(sqlite3.IntegrityError) UNIQUE constraint failed: things.id\n[SQL: INSERT INTO things " + "x" * 600 + "]"

    async def failing(session: DbConnection, event: Event) -> None:
        raise ValueError(why)

    running = consumer(db, nats_srv.url, failing, max_attempts=1)
    running.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    await running.stop()
    assert letter.error.startswith(
        "ValueError: (sqlite3.IntegrityError) UNIQUE constraint failed: things.id\n[SQL: "
    ), letter.error[:120]


async def test_a_payload_that_does_not_decode_is_listed_as_an_invalid_event_naming_what_was_expected(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """Every consumer decodes with decode_event, so a poison payload's dead letter says the same clear thing
    whichever service parked it: not protobuf's bare `DecodeError: Error parsing message`."""

    async def decoding(session: DbConnection, event: Event) -> None:
        decode_event(events_pb2.OrderConfirmed, event)
        await record(session, event)

    running = consumer(db, nats_srv.url, decoding, max_attempts=1)
    running.start()
    await publish(client, "e1", b"\xff\xfenot a protobuf")
    [letter] = await parked(client, 1)
    await running.stop()
    said = f"InvalidEvent: {SUBJECT} e1: the payload does not decode as shopmesh.orders.v1.OrderConfirmed ("
    assert letter.error.startswith(said), letter.error
    listed = await asyncio.to_thread(deadletters_cli, nats_srv.url, "list")
    assert listed.returncode == 0, listed.stderr
    assert said in listed.stdout


async def test_an_event_whose_type_header_names_another_message_is_parked_as_invalid_not_applied(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """An OrderCancelled published on the confirmed subject decodes cleanly as an OrderConfirmed (the same
    fields): only the type header add_event writes tells them apart."""

    async def decoding(session: DbConnection, event: Event) -> None:
        decode_event(events_pb2.OrderConfirmed, event)
        await record(session, event)

    running = consumer(db, nats_srv.url, decoding, max_attempts=1)
    running.start()
    cancelled = events_pb2.OrderCancelled(order_id="ord_1").SerializeToString()
    await client.jetstream().publish(
        SUBJECT, cancelled, headers={MSG_ID: "e1", EVENT_TYPE: "shopmesh.orders.v1.OrderCancelled"}
    )
    confirmed = events_pb2.OrderConfirmed(order_id="ord_2").SerializeToString()
    await client.jetstream().publish(
        SUBJECT, confirmed, headers={MSG_ID: "e2", EVENT_TYPE: "shopmesh.orders.v1.OrderConfirmed"}
    )
    await publish(client, "e3", confirmed)  # no type header (published before it was written): decoded as ever
    [letter] = await parked(client, 1)
    await until_applied(db, Counter({"e2": 1, "e3": 1}))
    await running.stop()
    assert letter.event_id == "e1"
    assert letter.error == (
        f"InvalidEvent: {SUBJECT} e1: the event is a shopmesh.orders.v1.OrderCancelled (its {EVENT_TYPE} "
        "header), not the shopmesh.orders.v1.OrderConfirmed this subject carries"
    )
    assert await applied(db) == Counter({"e2": 1, "e3": 1})


@pytest.mark.parametrize("character", ["x", "\n", "é", "\U0001f600"])
def test_an_error_header_stays_json_within_its_bound_whatever_it_escapes(character: str) -> None:
    error = "E: " + character * 1000
    header = error_header(error)
    assert len(header) <= ERROR_HEADER_LIMIT
    text = json.loads(header)
    assert text.endswith("…")
    assert error.startswith(text[:-1])
    assert len(text) > 20
    assert json.loads(error_header("short")) == "short"


def test_an_error_header_cut_after_quoting_by_an_older_release_is_listed_as_text() -> None:
    for cut in (json.dumps("E: " + "\n" * 300)[:500], json.dumps("E: x\u00e9")[:-4]):
        error = DeadLetter.from_message(RawStreamMsg(subject="deadletter.c.s", seq=1, headers={ERROR: cut})).error
        assert error.startswith("E: "), error
        assert error.endswith("…"), error
    assert DeadLetter.from_message(RawStreamMsg(subject="deadletter.c.s", seq=1, headers={ERROR: "plain"})).error == (
        "plain"
    )


async def test_a_message_published_there_by_hand_is_listed_not_fatal(client: Client) -> None:
    await ensure_dead_letter_streams(client.jetstream())
    await client.jetstream().publish("deadletter.oops", b"?")
    [letter] = await DeadLetters(client.jetstream()).list()
    assert (letter.consumer, letter.subject, letter.event_id, letter.attempts) == ("oops", "", "", 0)


async def test_a_replayed_event_is_applied_once_and_leaves_the_dead_letters(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    handler = Switch()
    registry = CollectorRegistry()
    running = consumer(
        db, nats_srv.url, handler, max_attempts=2, metrics=EventMetrics(registry), gauge_poll_seconds=0.1
    )
    running.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    await eventually(lambda: parked_now(registry) == 1, "the parked message counted")
    handler.fixed = True  # the fix is deployed
    await DeadLetters(client.jetstream()).replay(letter.sequence)
    await until_applied(db, Counter({"e1": 1}))
    await eventually(lambda: parked_now(registry) == 0, "the gauge down to 0 after the replay")
    await running.stop()
    assert await DeadLetters(client.jetstream()).list() == []
    assert handler.calls["e1"] == 3  # two failed deliveries, then the replay
    assert (counted(registry, "retried"), counted(registry, "dead_lettered"), counted(registry, "applied")) == (1, 1, 1)


async def test_a_replay_reaches_only_the_consumer_that_parked_it(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    seen: list[str] = []

    async def bystander(session: DbConnection, event: Event) -> None:
        seen.append(event.event_id)

    handler = Switch()
    running = consumer(db, nats_srv.url, handler, max_attempts=1)
    other = EventConsumer(
        db, nats_srv.url, durable="bystander", stream="THINGS", stream_subjects=["things.v1.>"],
        subjects=[SUBJECT], handler=bystander,
    )  # fmt: skip
    running.start()
    other.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    await eventually(lambda: seen == ["e1"], "the bystander applied e1")
    handler.fixed = True
    await DeadLetters(client.jetstream()).replay(letter.sequence)
    await until_applied(db, Counter({"e1": 1}))
    # The bystander reads the stream after the replay as well: a later event reaches it, the replay not.
    await publish(client, "e2")
    await eventually(lambda: "e2" in seen, "the bystander applied e2")
    await running.stop()
    await other.stop()
    assert seen == ["e1", "e2"]


async def test_a_replay_that_fails_again_is_parked_again_not_dropped_as_a_duplicate(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    # Within the duplicate window, a park published under the same id as the first would vanish.
    handler = Switch()
    running = consumer(db, nats_srv.url, handler, max_attempts=2)
    running.start()
    await publish(client, "e1")
    letters = DeadLetters(client.jetstream())
    [first] = await parked(client, 1)
    await letters.replay(first.sequence)
    await eventually(lambda: handler.calls["e1"] == 4, "the replay delivered twice")
    [second] = await parked(client, 1)
    assert second.sequence != first.sequence
    assert (second.event_id, second.subject, second.attempts) == ("e1", SUBJECT, 2)
    handler.fixed = True
    await letters.replay(second.sequence)
    await until_applied(db, Counter({"e1": 1}))
    await running.stop()


async def test_replaying_an_event_applied_meanwhile_has_no_second_effect(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, record, metrics=EventMetrics(registry))
    running.start()
    await publish(client, "e1")
    await until_applied(db, Counter({"e1": 1}))
    # As parked by a replica that ran a broken release while this one applied the event.
    await client.jetstream().publish(
        f"deadletter.tester.{SUBJECT}",
        b"x",
        headers={MSG_ID: "old-park", ORIGINAL_SUBJECT: SUBJECT, ORIGINAL_EVENT_ID: "e1", ERROR: '"boom"'},
    )
    [letter] = await parked(client, 1)
    await DeadLetters(client.jetstream()).replay(letter.sequence)
    await eventually(lambda: counted(registry, "duplicate") == 1, "the replay recognised as applied")
    await running.stop()
    assert await applied(db) == Counter({"e1": 1})


class DeleteFailsOnce:
    """JetStream whose first delete is lost, as when the command dies between its two steps."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._js, name)

    async def delete_msg(self, stream: str, sequence: int) -> bool:
        if not self.failed:
            self.failed = True
            raise ConnectionError("connection lost")
        return await self._js.delete_msg(stream, sequence)


async def test_a_replay_repeated_after_a_crash_is_delivered_once(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    handler = Switch()
    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, handler, max_attempts=1, metrics=EventMetrics(registry))
    running.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    handler.fixed = True
    flaky = DeleteFailsOnce(client.jetstream())
    letters = DeadLetters(flaky)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await letters.replay(letter.sequence)
    assert [left.sequence for left in await letters.list()] == [letter.sequence]  # still parked
    await letters.replay(letter.sequence)
    await until_applied(db, Counter({"e1": 1}))
    # Give a second copy, had one been published, the time to arrive: the first did within the wait above.
    await publish(client, "e2")
    await until_applied(db, Counter({"e1": 1, "e2": 1}))
    await running.stop()
    assert await letters.list() == []
    assert (counted(registry, "applied"), counted(registry, "duplicate")) == (2, 0)


async def test_discarding_removes_the_message_for_good(db: Database, client: Client, nats_srv: NatsServer) -> None:
    running = consumer(db, nats_srv.url, Switch(), max_attempts=1)
    running.start()
    await publish(client, "e1")
    [letter] = await parked(client, 1)
    letters = DeadLetters(client.jetstream())
    await letters.discard(letter.sequence)
    assert await letters.list() == []
    with pytest.raises(NoSuchDeadLetter, match=f"no dead letter with sequence {letter.sequence}"):
        await letters.replay(letter.sequence)
    await running.stop()
    assert await applied(db) == Counter()


async def test_the_command_lists_shows_replays_and_discards(db: Database, client: Client, nats_srv: NatsServer) -> None:
    handler = Switch()
    running = consumer(db, nats_srv.url, handler, max_attempts=1)
    running.start()
    confirmed = events_pb2.OrderConfirmed(order_id="o-1", user_id="u-1")
    await client.jetstream().publish(
        SUBJECT, confirmed.SerializeToString(), headers={MSG_ID: "e1", EVENT_TYPE: "shopmesh.orders.v1.OrderConfirmed"}
    )
    await publish(client, "e2")
    first, second = await parked(client, 2)

    listed = await asyncio.to_thread(deadletters_cli, nats_srv.url, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["SEQ", "PARKED", "(UTC)"]
    assert [row.split()[0] for row in rows] == [str(first.sequence), str(second.sequence)]
    assert rows[0].split()[3:6] == ["tester", SUBJECT, "e1"]
    assert rows[0].endswith("ValueError: no such customer")

    as_json = await asyncio.to_thread(deadletters_cli, nats_srv.url, "list", "--json")
    assert [row["event_id"] for row in json.loads(as_json.stdout)] == ["e1", "e2"]

    shown = await asyncio.to_thread(deadletters_cli, nats_srv.url, "show", str(first.sequence))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["payload"] == {"orderId": "o-1", "userId": "u-1"}

    handler.fixed = True
    replayed = await asyncio.to_thread(deadletters_cli, nats_srv.url, "replay", str(first.sequence), "999")
    assert replayed.returncode == 1
    assert f"{first.sequence}: replayed to tester ({SUBJECT}, event e1)" in replayed.stdout
    assert "no dead letter with sequence 999" in replayed.stderr
    await until_applied(db, Counter({"e1": 1}))

    discarded = await asyncio.to_thread(deadletters_cli, nats_srv.url, "discard", str(second.sequence))
    assert discarded.returncode == 0, discarded.stderr
    emptied = await asyncio.to_thread(deadletters_cli, nats_srv.url, "list")
    assert emptied.stdout.strip() == "no dead letters"
    emptied_json = await asyncio.to_thread(deadletters_cli, nats_srv.url, "list", "--json")
    assert json.loads(emptied_json.stdout) == []
    await running.stop()
    assert await applied(db) == Counter({"e1": 1})


def test_the_command_says_in_one_line_when_nats_is_unreachable() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = deadletters_cli(url, "list")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach NATS at {url}: ConnectionRefusedError"), line
    # A NATS of its own choosing: the local stack's advice would be beside the point.
    assert "make run" not in line, line


def test_the_command_says_how_to_reach_the_local_stacks_nats_when_it_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`make deadletters` with no stack running said "cannot reach NATS" and no more. The local stack's address
    moved to a free port: nothing else may answer there. No launcher's .data/stack.json where it runs."""
    local = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setattr(cli, "LOCAL_NATS_URL", local)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot reach NATS at {local}: ConnectionRefusedError"), line
    # Start the stack (whose .data/stack.json names its NATS, on any port), or name another NATS.
    assert "start it with `make run`" in line, line
    assert "no launcher's .data/stack.json is here" in line, line
    assert "--nats-url URL" in line, line
    # `make deadletters`, the command the README names, unsets NATS_URL: the hint gave "(or NATS_URL)" as the
    # way out, which make then dropped. It names make's own way to pass the flag.
    assert 'make deadletters ARGS="--nats-url URL list"' in line, line


@pytest.mark.parametrize("given_by", ["--nats-url", "NATS_URL"])
def test_a_nats_url_the_user_gave_gets_no_make_run_advice_though_it_is_the_local_stacks_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, given_by: str
) -> None:
    """The advice to start `make run` went by the URL: a --nats-url (or NATS_URL) the user gave that happened to
    equal the local stack's default got it, though the user chose that NATS, not make run's default. Only a
    default the command took because no stack runs gets it, as for make shoppers' --target."""
    local = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setattr(cli, "LOCAL_NATS_URL", local)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    if given_by == "NATS_URL":
        monkeypatch.setenv("NATS_URL", local)
        argv = ["list"]
    else:
        argv = ["--nats-url", local, "list"]
    assert cli.main(argv) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot reach NATS at {local}: ConnectionRefusedError"), line
    assert "make run" not in line, line


@pytest.mark.parametrize(
    ("stale", "said"),
    [
        ('{"pid": ', "not a stack file the launcher wrote"),
        ("gone", "its launcher (pid {pid}) is gone"),
        ("copied", "it was written for {elsewhere}, not this directory"),
    ],
    ids=["unreadable", "launcher-gone", "copied-from-another-directory"],
)
def test_the_hint_says_a_stale_stack_file_was_found_and_ignored_not_that_there_is_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, stale: str, said: str
) -> None:
    """A launcher killed with -9 leaves its .data/stack.json: the command ignored it (in a line of its own), then
    said "no launcher's .data/stack.json is here" of a file that was there. It says the file names no running
    launcher now."""
    local = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setattr(cli, "LOCAL_NATS_URL", local)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = stack_file(Path(".data"))
    elsewhere = tmp_path / "elsewhere" / ".data"
    if stale == "gone":
        write_stack_file(LocalStack(path=path, pid=gone.pid, nats_url="nats://127.0.0.1:1"))
    elif stale == "copied":
        # A checkout copied with its .data while its stack runs: the launcher (this process here) still runs,
        # for the other directory.
        written = write_stack_file(LocalStack(path=elsewhere / "stack.json", pid=os.getpid(), nats_url="nats://x:1"))
        path.parent.mkdir()
        shutil.copy(written, path)
    else:
        path.parent.mkdir()
        path.write_text(stale)
    assert cli.main(["list"]) == 1
    ignored, line = capsys.readouterr().err.splitlines()
    assert ignored.startswith(f"ignoring {path}: {said.format(pid=gone.pid, elsewhere=elsewhere.absolute())}"), ignored
    assert line.startswith(f"error: cannot reach NATS at {local}: ConnectionRefusedError"), line
    assert "no launcher's" not in line, line
    # Not "names no launcher that still runs" of a copy whose launcher does run, for another directory.
    assert f"{path} here names no launcher of this directory that still runs (ignored: see above)" in line, line
    assert "start it with `make run`" in line, line


def test_a_running_launchers_nats_that_does_not_answer_is_not_said_to_have_no_launcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`make run` on its default ports writes the default NATS URL in its .data/stack.json: the command named
    that launcher in a line of its own, then said "no launcher's .data/stack.json is here: start it" of it."""
    local = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setattr(cli, "LOCAL_NATS_URL", local)
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    # The launcher: this process, which runs, in this directory.
    write_stack_file(LocalStack(path=stack_file(Path(".data")), pid=os.getpid(), nats_url=local))
    assert cli.main(["list"]) == 1
    found, line = capsys.readouterr().err.splitlines()
    assert found.startswith(f"NATS at {local}: the local stack of .data/stack.json (launcher pid {os.getpid()})")
    assert line.startswith(f"error: cannot reach NATS at {local}: ConnectionRefusedError"), line
    assert "no launcher" not in line, line
    assert "start it with `make run`" not in line, line


def test_the_command_lists_nothing_where_no_consumer_ever_ran(nats_srv: NatsServer) -> None:
    result = deadletters_cli(nats_srv.url, "list")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "no dead letters", "")


def test_the_commands_json_list_of_no_dead_letters_is_an_empty_json_array_not_nothing(nats_srv: NatsServer) -> None:
    result = deadletters_cli(nats_srv.url, "list", "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("given", ["0", "-1", "x", str(2**64)])
async def test_the_command_refuses_a_sequence_that_is_no_sequence_as_a_usage_error_and_does_nothing(
    client: Client, nats_srv: NatsServer, given: str
) -> None:
    js = client.jetstream()
    await ensure_dead_letter_streams(js)
    sequence = await park_by_hand(js, "tester")
    result = await asyncio.to_thread(deadletters_cli, nats_srv.url, "discard", given, str(sequence))
    assert result.returncode == 2, result
    # Not NATS' fault: a sequence is a whole number from 1, and the command says so before doing anything.
    assert "BadRequestError" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        f"argument SEQ: {given!r} is no sequence: they are whole numbers from 1 (see `list`)"
    )
    assert result.stdout == ""
    assert [letter.sequence for letter in await DeadLetters(js).list()] == [sequence]
    with pytest.raises(NoSuchDeadLetter):
        await DeadLetters(js).discard(0)


async def park_by_hand(js: JetStreamContext, consumer_name: str) -> int:
    ack = await js.publish(
        f"deadletter.{consumer_name}.{SUBJECT}",
        b"payload",
        headers={MSG_ID: f"{consumer_name}:e1:THINGS:1", ORIGINAL_SUBJECT: SUBJECT, ORIGINAL_EVENT_ID: "e1"},
    )
    return ack.seq


@pytest.mark.parametrize("name", ["", "*", ">", "tester.>", "tes ter"])
async def test_a_consumer_name_that_is_no_name_is_a_usage_error_and_replays_nothing(
    client: Client, nats_srv: NatsServer, name: str
) -> None:
    # `replay --all --consumer "$CONSUMER"` in a script with the variable unset, or a pattern typed for a
    # name: neither names a consumer, and neither may hand back every consumer's parked events.
    js = client.jetstream()
    await ensure_dead_letter_streams(js)
    await js.add_consumer(
        REPLAY_STREAM, ConsumerConfig(durable_name=replay_durable("tester"), filter_subject=replay_filter("tester"))
    )
    sequence = await park_by_hand(js, "tester")
    for command in (["replay", "--all"], ["list"]):
        result = await asyncio.to_thread(deadletters_cli, nats_srv.url, *command, "--consumer", name)
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert result.stderr.splitlines()[-1].endswith(
            f"argument --consumer: {name!r} is no consumer name: a name is not empty and has no '.', '*', '>' or space"
        )
    assert [letter.sequence for letter in await DeadLetters(js).list()] == [sequence]
    with pytest.raises(NotAConsumerName):
        await DeadLetters(js).list(name)


async def test_a_replay_for_a_consumer_that_reads_no_replays_is_refused_and_stays_parked(
    client: Client, nats_srv: NatsServer
) -> None:
    # A consumer renamed or retired by a release: published to REPLAY, the event would wait there for a
    # durable that does not exist, gone from `list` and from shopmesh_events_dead_letters.
    js = client.jetstream()
    await ensure_dead_letter_streams(js)
    sequence = await park_by_hand(js, "retired")
    result = await asyncio.to_thread(deadletters_cli, nats_srv.url, "replay", str(sequence))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: dead letter {sequence} not replayed: no consumer 'retired' reads replays"), line
    assert "replayed to" not in result.stdout
    assert [letter.sequence for letter in await DeadLetters(js).list()] == [sequence]
    assert (await js.stream_info(REPLAY_STREAM)).state.messages == 0


async def dead_letter_windows(js: JetStreamContext) -> dict[str, float | None]:
    return {name: (await js.stream_info(name)).config.duplicate_window for name in (DEAD_LETTER_STREAM, REPLAY_STREAM)}


async def test_a_replay_keeps_the_duplicate_window_of_the_streams(client: Client, nats_srv: NatsServer) -> None:
    js = client.jetstream()
    await ensure_dead_letter_streams(js)
    await js.add_consumer(
        REPLAY_STREAM, ConsumerConfig(durable_name=replay_durable("tester"), filter_subject=replay_filter("tester"))
    )
    sequence = await park_by_hand(js, "tester")
    result = await asyncio.to_thread(deadletters_cli, nats_srv.url, "replay", str(sequence))
    assert result.returncode == 0, result.stderr
    window = DEAD_LETTER_DUPLICATE_WINDOW_SECONDS
    assert await dead_letter_windows(js) == {DEAD_LETTER_STREAM: window, REPLAY_STREAM: window}


async def test_consumers_with_other_duplicate_windows_leave_the_dead_letter_streams_window_as_the_chassis_sets_it(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """Each consumer set both streams' window to its own NATS_DUPLICATE_WINDOW_SECONDS at its start: consumers
    with different settings flipped it back and forth."""
    js = client.jetstream()
    seen = []
    for own in (600.0, 3600.0):
        started = consumer(db, nats_srv.url, record, duplicate_window_seconds=own)
        started.start()
        try:
            await until_durable(client, REPLAY_STREAM, replay_durable("tester"))
            seen.append(await dead_letter_windows(js))
        finally:
            await started.stop()
        await js.delete_consumer(REPLAY_STREAM, replay_durable("tester"))  # the next one's start is then seen
    window = DEAD_LETTER_DUPLICATE_WINDOW_SECONDS
    assert seen == [{DEAD_LETTER_STREAM: window, REPLAY_STREAM: window}] * 2


def test_the_command_never_prints_the_credentials_of_an_unreachable_nats_url() -> None:
    port = free_port()
    result = deadletters_cli(f"nats://ops:s3cret@127.0.0.1:{port}", "list")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach NATS at nats://***@127.0.0.1:{port}: "), line
    assert "s3cret" not in result.stderr
    assert "ops" not in result.stderr


def test_the_command_never_prints_a_token_with_a_slash_as_base64_tokens_have() -> None:
    # `openssl rand -base64` tokens carry '/' and '+': URL parsing ends the authority at the '/', finds no
    # user part, and the masking shows the whole URL, token included.
    # Raw, it is refused (percent-encode it); encoded, NATS is not there: neither error shows it.
    token = "Zm9v/YmFy+cXV4="
    raw = deadletters_cli(f"nats://{token}@127.0.0.1:{free_port()}", "list")
    assert raw.returncode == 2
    assert "percent-encode" in raw.stderr
    encoded = deadletters_cli(f"nats://{token.replace('/', '%2F')}@127.0.0.1:{free_port()}", "list")
    assert encoded.returncode == 1
    for result in (raw, encoded):
        assert "Zm9v" not in result.stderr, result.stderr
        assert "YmFy" not in result.stderr, result.stderr


async def test_replaying_an_event_applied_longer_ago_than_the_id_retention_still_has_no_second_effect(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """As above, but the operator replays the dead letter after the consumer forgot the event's id: ids are
    kept by the event stream's max age (7 days and one), while `DEADLETTER` keeps a parked message until an
    operator decides, however long that takes. Docs: "an event applied in the meantime is a `duplicate`,
    no second effect"; once its id is purged the replay applies the event a second time. The purge keeps the
    ids of the events waiting as the consumer's dead letters, and only those: e0's is forgotten."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from shopmesh_chassis.events import ensure_stream
    from shopmesh_chassis.tables import processed_events

    registry = CollectorRegistry()
    running = consumer(db, nats_srv.url, record, metrics=EventMetrics(registry))
    running.start()
    await publish(client, "e0")
    await publish(client, "e1")
    await until_applied(db, Counter({"e0": 1, "e1": 1}))
    # As parked by a replica that ran a broken release while this one applied the event.
    await client.jetstream().publish(
        f"deadletter.tester.{SUBJECT}",
        b"x",
        headers={MSG_ID: "old-park", ORIGINAL_SUBJECT: SUBJECT, ORIGINAL_EVENT_ID: "e1", ERROR: '"boom"'},
    )
    [letter] = await parked(client, 1)
    # Three weeks pass before the operator looks at the dead letters; the hourly purge ran meanwhile.
    async with db.transaction() as session:
        await session.execute(update(processed_events).values(processed_at=datetime.now(UTC) - timedelta(days=21)))
    # The stream as its publisher declares it by default: events kept 7 days.
    await ensure_stream(client.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * 86400)
    purged = await running.purge_processed()
    await DeadLetters(client.jetstream()).replay(letter.sequence)
    await eventually(lambda: counted(registry, "duplicate") + counted(registry, "applied") >= 3, "the replay consumed")
    await running.stop()
    assert await applied(db) == Counter({"e0": 1, "e1": 1}), "the replay applied the event a second time"
    # The purge forgot the old id of the event that waits nowhere, and kept the parked one's.
    assert purged == 1


async def test_a_services_own_purge_gets_the_cutoff_only_while_no_dead_letter_waits(
    db: Database, client: Client, nats_srv: NatsServer
) -> None:
    """`on_purge` lets a service forget what it keeps against events coming again (recommendations' marks of
    cancelled orders) by the event ids' cutoff. A dead letter may be replayed any time later, and which of
    the service's records it needs the consumer cannot tell: while one waits, no cutoff is handed on."""
    from datetime import UTC, datetime, timedelta

    from shopmesh_chassis.events import ensure_stream

    cutoffs: list[datetime] = []

    async def forget(cutoff: datetime) -> None:
        cutoffs.append(cutoff)

    # The stream as its publisher declares it by default: events kept 7 days.
    await ensure_stream(client.jetstream(), "THINGS", ["things.v1.>"], duplicate_window=600, max_age=7 * 86400)
    running = consumer(db, nats_srv.url, record, on_purge=forget)
    running.start()
    try:
        await publish(client, "e0")
        await until_applied(db, Counter({"e0": 1}))
        # The purge run once connected (its next an hour away) first: then only the test's own purges run.
        await eventually(lambda: len(cutoffs) == 1, "the purge run at connection")
        cutoffs.clear()
        before = datetime.now(UTC)
        await running.purge_processed()
        # The event ids' own cutoff: the stream's max age and a day.
        assert len(cutoffs) == 1
        assert before - timedelta(days=8) <= cutoffs[0] <= datetime.now(UTC) - timedelta(days=8)
        await client.jetstream().publish(
            f"deadletter.tester.{SUBJECT}",
            b"x",
            headers={MSG_ID: "a-park", ORIGINAL_SUBJECT: SUBJECT, ORIGINAL_EVENT_ID: "e0", ERROR: '"boom"'},
        )
        await parked(client, 1)
        await running.purge_processed()
        assert len(cutoffs) == 1
    finally:
        await running.stop()


async def test_the_ids_kept_for_dead_letters_are_those_parked_or_replayed_for_that_consumer(client: Client) -> None:
    """A replayed message waits on `REPLAY` until its consumer acknowledges it: its id is kept as a parked one's."""
    js = client.jetstream()
    assert await waiting_event_ids(js, "tester") == set(), "no stream yet: nothing waits"
    await ensure_dead_letter_streams(js)
    for where, event_id in (
        (f"deadletter.tester.{SUBJECT}", "parked"),
        (f"replay.tester.{SUBJECT}", "replayed"),
        (f"deadletter.other.{SUBJECT}", "another-consumers"),
    ):
        await js.publish(where, b"x", headers={MSG_ID: event_id, ORIGINAL_EVENT_ID: event_id})
    assert await waiting_event_ids(js, "tester") == {"parked", "replayed"}


def test_the_commands_help_shows_where_nats_url_points_without_its_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://s3cret@nats.shopmesh-infra:4222")
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "nats://***@nats.shopmesh-infra:4222" in shown
    assert "s3cret" not in shown


def test_the_commands_help_works_with_a_percent_sign_in_nats_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An IPv6 link-local server with its zone (RFC 6874: '%25'): the URL goes into argparse's help as a
    # %-format string, and --help crashes with a TypeError instead of showing the commands.
    monkeypatch.setenv("NATS_URL", "nats://[fe80::1%25eth0]:4222")
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "fe80::1%25eth0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("given", "told"),
    [
        # A bare `replay` gave nothing at all; being told "not both" sent the operator looking for a second thing.
        ([], "replay needs the sequence numbers to hand back (see `list`), or --all"),
        (["3", "--all"], "replay takes sequence numbers or --all, not both"),
    ],
)
def test_a_replay_without_its_messages_or_with_both_ways_says_which_is_wrong(
    capsys: pytest.CaptureFixture[str], given: list[str], told: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["replay", *given])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {told}")
