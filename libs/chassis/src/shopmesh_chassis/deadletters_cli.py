"""shopmesh-deadletters: see, replay or discard the events consumers parked on the dead-letter stream.

    shopmesh-deadletters list [--consumer NAME] [--json]
    shopmesh-deadletters show SEQ
    shopmesh-deadletters replay SEQ [SEQ ...] | --all [--consumer NAME]
    shopmesh-deadletters discard SEQ [SEQ ...]

NATS is `--nats-url`, else `NATS_URL` as the services read it (the environment, else the file NATS_URL in
`SECRETS_DIR`, where the Helm charts mount it from a Secret), else the local stack's: the one `.data/stack.json`
names while its launcher runs (`make run`, on free ports too; said on stderr), else 127.0.0.1:14222. In a cluster,
run it inside a pod that consumes events: `kubectl exec deploy/notifications -- shopmesh-deadletters list`.
Exit status: 0 done, 1 a sequence was not parked, its consumer reads no replays (it stays parked) or NATS
could not be reached, 2 a usage error.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import TextIO

import nats
import nats.errors
from google.protobuf import descriptor_pool, json_format, message_factory
from nats.aio.client import Client
from tabulate import tabulate

from shopmesh_chassis.config import SECRETS_DIR, ConfigError, EventSettings, RuntimeSettings, load_settings
from shopmesh_chassis.deadletters import (
    MAX_SEQUENCE,
    MIN_SEQUENCE,
    DeadLetter,
    DeadLetters,
    NoReplayConsumer,
    NoSuchDeadLetter,
    NotAConsumerName,
    ReplayRefused,
    is_consumer_name,
)
from shopmesh_chassis.events import EVENT_TYPE, InvalidNatsUrl, parse_nats_url, shown_nats_url
from shopmesh_chassis.interrupts import Interrupted, run_interruptible
from shopmesh_chassis.local_stack import DEFAULT_DATA_DIR, LocalAddress, local_address, no_running_stack, stack_file
from shopmesh_chassis.tasks import stop_if_cancelled

LOCAL_NATS_URL: str = EventSettings.model_fields["nats_url"].default


class _NatsUrlSettings(RuntimeSettings):
    """NATS_URL alone, read as the services read it (load_settings): the environment, else SECRETS_DIR's file.
    Not EventSettings, whose other settings (SERVICE_NAME, ...) a command run by hand need not have."""

    nats_url: str = ""


def configured_nats_url() -> tuple[str, str]:
    """The NATS_URL the pod's service uses ("" when none) and where it comes from, for --help."""
    url = load_settings(_NatsUrlSettings).nats_url
    return url, ("$NATS_URL" if os.environ.get("NATS_URL") else f"${SECRETS_DIR}/NATS_URL")


def sequence_number(value: str) -> int:
    """A stream sequence as JetStream numbers them: a mistyped one is a usage error, not a request NATS
    refuses (which would end the command at it, blaming NATS, with the sequences after it undone)."""
    try:
        sequence = int(value)
    except ValueError:
        sequence = 0
    if not MIN_SEQUENCE <= sequence <= MAX_SEQUENCE:
        raise argparse.ArgumentTypeError(f"{value!r} is no sequence: they are whole numbers from 1 (see `list`)")
    return sequence


def consumer_name(value: str) -> str:
    """One consumer's name: a name that is none (a script's unset variable, a pattern) would otherwise
    select every consumer's dead letters, and `replay --all` replay them all."""
    if not is_consumer_name(value):
        raise argparse.ArgumentTypeError(str(NotAConsumerName(value)))
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shopmesh-deadletters", description=(__doc__ or "").splitlines()[0].partition(": ")[2]
    )
    try:
        # In a pod whose NATS_URL comes from a Secret (global.nats.existingSecret) it is a file, not a variable.
        given, source = configured_nats_url()
    except ConfigError as exc:  # SECRETS_DIR set to no directory
        parser.error(str(exc))
    # --help shows where the default points, never its token or password.
    shown = (
        f"{source} ({shown_nats_url(given)})"
        if given
        else f"the local stack's, named by {stack_file(DEFAULT_DATA_DIR)} while it runs, else {LOCAL_NATS_URL}"
    )
    # argparse formats help with '%': a '%' of the URL (an IPv6 zone, %25eth0) is doubled to stay itself.
    parser.add_argument("--nats-url", default=given or None, help=f"default: {shown.replace('%', '%%')}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the parked messages, oldest first")
    listing.add_argument("--consumer", type=consumer_name, help="only those this consumer parked")
    listing.add_argument("--json", action="store_true", help="a JSON array of the parked messages ([] when none)")
    show = commands.add_parser("show", help="one parked message: headers and decoded payload")
    show.add_argument("sequence", type=sequence_number, metavar="SEQ")
    replay = commands.add_parser("replay", help="hand messages back to the consumer that parked them")
    replay.add_argument("sequences", type=sequence_number, nargs="*", metavar="SEQ")
    replay.add_argument("--all", action="store_true", help="every parked message (of --consumer if given)")
    replay.add_argument("--consumer", type=consumer_name, help="with --all: only those this consumer parked")
    discard = commands.add_parser("discard", help="remove messages for good")
    discard.add_argument("sequences", type=sequence_number, nargs="+", metavar="SEQ")
    args = parser.parse_args(argv)
    # Where the command went when the user named no NATS (None when they did): whether to advise `make run`.
    args.local = None
    if args.nats_url is None:
        args.local = local_nats_url()
        args.nats_url = args.local.address
    try:
        parse_nats_url(args.nats_url)
    except InvalidNatsUrl as exc:
        parser.error(str(exc))
    if args.command == "replay" and args.sequences and args.all:
        parser.error("replay takes sequence numbers or --all, not both")
    if args.command == "replay" and not args.sequences and not args.all:
        parser.error("replay needs the sequence numbers to hand back (see `list`), or --all")
    if args.command == "replay" and args.consumer is not None and not args.all:
        parser.error("replay --consumer goes with --all")
    return args


def decoded(letter: DeadLetter) -> object:
    """The payload as JSON when it is a contract message the header names, else base64."""
    type_name = letter.headers.get(EVENT_TYPE, "")
    if type_name:
        _load_contracts()
        try:
            message_class = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(type_name))
            return json_format.MessageToDict(message_class.FromString(letter.payload))
        except Exception:  # unknown type, or bytes that do not parse as it: show them raw
            pass
    return {"base64": base64.b64encode(letter.payload).decode()}


def _load_contracts() -> None:
    """Import every generated message module, so the descriptor pool knows every event type."""
    import shopmesh

    for module in pkgutil.walk_packages(shopmesh.__path__, "shopmesh."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


def as_row(letter: DeadLetter) -> dict[str, object]:
    return {
        "sequence": letter.sequence,
        "parked_at": letter.parked_at.isoformat() if letter.parked_at else None,
        "consumer": letter.consumer,
        "subject": letter.subject,
        "event_id": letter.event_id,
        "attempts": letter.attempts,
        "error": letter.error,
    }


def print_table(letters: list[DeadLetter], out: TextIO) -> None:
    if not letters:
        print("no dead letters", file=out)
        return
    rows = [
        (
            str(letter.sequence),
            letter.parked_at.strftime("%Y-%m-%d %H:%M:%S") if letter.parked_at else "?",
            letter.consumer,
            letter.subject,
            letter.event_id,
            str(letter.attempts),
            letter.error,
        )
        for letter in letters
    ]
    header = ("SEQ", "PARKED (UTC)", "CONSUMER", "SUBJECT", "EVENT ID", "ATTEMPTS", "ERROR")
    print(tabulate(rows, headers=header, tablefmt="plain", disable_numparse=True), file=out)


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    seen: list[Exception] = []

    async def remember(error: Exception) -> None:
        # nats-py would log each attempt with a traceback; the command says what went wrong once.
        seen.append(error)

    try:
        # One attempt and one retry (nats-py's count), then give up: an operator is waiting.
        target = parse_nats_url(args.nats_url)
        client: Client = await nats.connect(
            **target.connect_options(),
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=remember,
        )
    except Exception as exc:
        # A connect that failed as Ctrl-C came, and lost its cancel (nats-py's wait_for): stopped, not refused.
        stop_if_cancelled()
        cause = seen[-1] if seen else exc
        said = f"error: cannot reach NATS at {shown_nats_url(args.nats_url)}: {type(cause).__name__}: {cause}"
        local: LocalAddress | None = args.local
        # A NATS the user named (--nats-url, NATS_URL) is theirs, even at the default URL: no advice for it.
        hint = local_stack_hint(local.file_ignored) if local is not None and local.took_make_runs_default else ""
        print(said + hint, file=err)
        return 1
    try:
        letters = DeadLetters(client.jetstream())
        if args.command == "list":
            found = await letters.list(args.consumer)
            if args.json:
                # One document, `[]` when nothing is parked: a script reads it with one json.loads (or jq),
                # and an empty answer is still JSON.
                print(json.dumps([as_row(letter) for letter in found]), file=out)
            else:
                print_table(found, out)
            return 0
        if args.command == "show":
            letter = await letters.get(args.sequence)
            shown = {**as_row(letter), "headers": dict(letter.headers), "payload": decoded(letter)}
            print(json.dumps(shown, indent=2), file=out)
            return 0
        if args.command == "replay" and args.all:
            sequences = [letter.sequence for letter in await letters.list(args.consumer)]
            if not sequences:
                print("no dead letters to replay", file=out)
        else:
            sequences = args.sequences
        act = letters.replay if args.command == "replay" else letters.discard
        status = 0
        for sequence in sequences:
            try:
                letter = await act(sequence)
            except (NoSuchDeadLetter, NoReplayConsumer, ReplayRefused) as exc:
                print(f"error: {exc}", file=err)
                status = 1
                continue
            done = "replayed to" if args.command == "replay" else "discarded, was for"
            print(f"{sequence}: {done} {letter.consumer} ({letter.subject}, event {letter.event_id})", file=out)
        return status
    except NoSuchDeadLetter as exc:
        print(f"error: {exc}", file=err)
        return 1
    except nats.errors.Error as exc:  # JetStream not enabled, a timeout, a refused request
        stop_if_cancelled()  # as after the connect
        print(f"error: NATS at {shown_nats_url(args.nats_url)}: {type(exc).__name__}: {exc}", file=err)
        return 1
    finally:
        await client.close()


def local_nats_url() -> LocalAddress:
    """The running local stack's NATS (on whatever port `--free-ports` gave it, the topology's local one too),
    said on stderr so that `list --json` stays one document; else the topology's local port, as before the
    launcher wrote its file. Also whether a file was there and ignored (said on stderr too: a killed launcher's,
    an unreadable one, a copy of another directory's), and whether the URL is a running launcher's."""
    # A stack always has its NATS: `runs_no` is never said.
    return local_address(
        sys.stderr, "NATS", lambda stack: stack.nats_url, LOCAL_NATS_URL, runs_no="NATS", shown=shown_nats_url
    )


def local_stack_hint(stack_file_ignored: bool = False) -> str:
    """What to do when the default NATS, the local stack's, does not answer: no launcher runs here (its file,
    which names its NATS on any port, not found or ignored: `no_running_stack`)."""
    found = no_running_stack(stack_file_ignored)
    # `make deadletters` unsets NATS_URL (a variable exported for something else must not redirect it), so the
    # way out through make is its ARGS; NATS_URL only works for the command run directly.
    return (
        f"; that is the local stack's NATS, and {found}: start it with `make run` (run this from the directory it "
        'runs in), or name another with --nats-url URL (make deadletters ARGS="--nats-url URL list"; NATS_URL '
        "too when run directly, not through make, which unsets it)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_interruptible(run(parse_args(argv), sys.stdout, sys.stderr))
    except Interrupted as stop:
        # What was replayed or discarded before it has been said, a line each; the rest was not touched.
        print(stop, file=sys.stderr)
        return stop.exit_status


if __name__ == "__main__":
    sys.exit(main())
