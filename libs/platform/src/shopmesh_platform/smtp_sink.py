"""A local mail server that keeps every e-mail it receives as a file: the SMTP server of `make run` and
of the tests, in place of a real mail provider.

    python -m shopmesh_platform.smtp_sink --host 127.0.0.1 --port 8025 --dir .data/mail

Each message is stored as `<dir>/<Message-ID>.eml` (the Message-ID made safe for a file name), written
atomically; a message whose Message-ID was stored before replaces that file. A sender that re-sends an
e-mail after a crash (same Message-ID) therefore leaves one file, as a mail client would show one
message. One log line per message on stdout. Nothing is relayed anywhere. The folder keeps the newest
MAX_MAILS e-mails: past that the oldest file is deleted as each new one is stored (a stack left running under
`make load` sends some 43,000 a day), as the trace sink caps its spans at MAX_FILE_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from .sink_process import run_sink
from .topology import LOCAL_SMTP_PORT

log = logging.getLogger("shopmesh.smtp_sink")

HOSTNAME = "shopmesh-smtp-sink"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_MAX_NAME = 200
# How many e-mails the folder keeps: days of a developer's checkouts, about an hour of `make load`.
MAX_MAILS = 2000


def file_name(message_id: str, content: bytes) -> str:
    """`<evt_1@shopmesh.notifications>` → `evt_1@shopmesh.notifications.eml`; without a Message-ID, a
    name derived from the content (the same bytes sent twice are still one file)."""
    safe = _UNSAFE.sub("_", message_id.strip().strip("<>")).strip("._")[:_MAX_NAME]
    if not safe:
        safe = f"no-message-id-{hashlib.sha256(content).hexdigest()[:16]}"
    return f"{safe}.eml"


def read_mail(directory: Path) -> list[EmailMessage]:
    """Every stored e-mail, parsed (for tests and for looking at what was sent)."""
    parser = BytesParser(policy=policy.default)
    return [parser.parsebytes(path.read_bytes()) for path in sorted(directory.glob("*.eml"))]


class MailFolder:
    """The aiosmtpd handler: accept every message and store it under `directory`, which keeps the newest
    `max_mails` (the files there before, by their modification time, count too)."""

    def __init__(self, directory: Path, max_mails: int = MAX_MAILS) -> None:
        self.directory = directory
        self._max_mails = max_mails
        directory.mkdir(parents=True, exist_ok=True)
        # The stored names, oldest first (a dict as an ordered set): listing the folder at every message would
        # cost as much as the folder holds.
        stored = sorted(directory.glob("*.eml"), key=lambda path: (path.stat().st_mtime_ns, path.name))
        self._stored = dict.fromkeys(path.name for path in stored)
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        while len(self._stored) > self._max_mails:
            oldest = next(iter(self._stored))
            del self._stored[oldest]
            (self.directory / oldest).unlink(missing_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        headers = BytesParser(policy=policy.default).parsebytes(content, headersonly=True)
        name = file_name(str(headers.get("Message-ID", "")), content)
        target = self.directory / name
        replaced = target.exists()
        partial = self.directory / f".{name}.{uuid.uuid4().hex}.tmp"
        partial.write_bytes(content)
        os.replace(partial, target)
        self._stored.pop(name, None)  # a replaced message is the newest now
        self._stored[name] = None
        self._forget_oldest()
        log.info(
            "%s %s from %s to %s: %s",
            "replaced" if replaced else "stored",
            name,
            envelope.mail_from,
            ", ".join(envelope.rcpt_tos),
            # A Subject folded right after its colon keeps the fold's space when parsed: a mail client
            # shows none.
            str(headers.get("Subject", "")).strip(),
        )
        return f"250 OK stored as {name}"


@dataclass
class SmtpSink:
    host: str
    port: int
    directory: Path
    server: asyncio.Server
    handler: MailFolder | None = None
    # While down (stop_listening): the port, bound and not listening.
    _kept: socket.socket | None = field(default=None, repr=False)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    async def stop_listening(self) -> None:
        """The mail server down: every connection to its port is refused, as to a port nobody listens on, but the
        port stays the sink's until `listen_again`. Closed and started again on its port, a test's sink could find
        it taken in between by another process (a free_ports of a test running beside it). Needs a sink started
        `restartable`: this socket binds beside its listening one (SO_REUSEPORT), so the port is never free."""
        if self.handler is None or self._kept is not None:
            raise RuntimeError("stop_listening needs a listening sink started with restartable=True")
        kept = socket.socket(self.server.sockets[0].family, socket.SOCK_STREAM)
        try:
            kept.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            kept.bind((self.host, self.port))
        except OSError:
            kept.close()
            raise
        self.server.close()
        await self.server.wait_closed()
        self._kept = kept

    async def listen_again(self) -> None:
        """The mail server back on its port after `stop_listening`, keeping the e-mails it stored."""
        if self.handler is None or self._kept is None:
            raise RuntimeError("listen_again needs a sink that stop_listening took down")
        self.server = await _listen(self.handler, self.host, self.port, reuse_port=True)
        self._kept.close()
        self._kept = None


async def _listen(handler: MailFolder, host: str, port: int, *, reuse_port: bool) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, enable_SMTPUTF8=True), host, port, reuse_port=reuse_port
    )


async def start_sink(
    directory: Path, host: str = "127.0.0.1", port: int = 0, max_mails: int = MAX_MAILS, *, restartable: bool = False
) -> SmtpSink:
    """Listen on host:port (0: a free port) in the running event loop. `restartable` (tests): the sink can go down
    and come back on its port (`stop_listening`, `listen_again`); it listens with SO_REUSEPORT, so that another
    sink of this user on the port would share it instead of failing, which the `make run` one must not."""
    handler = MailFolder(directory, max_mails)
    server = await _listen(handler, host, port, reuse_port=restartable)
    bound = int(server.sockets[0].getsockname()[1])
    return SmtpSink(host, bound, directory, server, handler if restartable else None)


@contextlib.asynccontextmanager
async def smtp_sink(
    directory: Path, host: str = "127.0.0.1", port: int = 0, max_mails: int = MAX_MAILS
) -> AsyncIterator[SmtpSink]:
    sink = await start_sink(directory, host, port, max_mails)
    try:
        yield sink
    finally:
        await sink.close()


async def _serve(directory: Path, host: str, port: int, stop: asyncio.Event) -> None:
    sink = await start_sink(directory, host, port)
    log.info("SMTP sink listening on %s:%d, storing e-mails under %s", host, sink.port, directory)
    await stop.wait()
    await sink.close()
    log.info("SMTP sink stopped")


def main(argv: Sequence[str] | None = None) -> int:
    # aiosmtpd logs every connection and command; one line per stored message is what we want.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return run_sink(
        _serve,
        argv,
        prog="python -m shopmesh_platform.smtp_sink",
        description="A local SMTP server that stores every e-mail it receives as a file.",
        port=LOCAL_SMTP_PORT,
        directory=".data/mail",
    )


if __name__ == "__main__":
    sys.exit(main())
