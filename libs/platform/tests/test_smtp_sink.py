"""The local SMTP sink: a real SMTP conversation (smtplib) stores each e-mail as a file named after its
Message-ID, and the same Message-ID sent twice is one file."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from shopmesh_platform.smtp_sink import SmtpSink, file_name, read_mail, smtp_sink, start_sink


def email(message_id: str | None, subject: str = "Your order") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@shopmesh.example"
    message["To"] = "ada@example.com"
    message["Subject"] = subject
    if message_id is not None:
        message["Message-ID"] = message_id
    message.set_content("Grüße")
    return message


async def send(sink: SmtpSink, message: EmailMessage) -> None:
    def deliver() -> None:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.send_message(message)

    await asyncio.to_thread(deliver)


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    async with smtp_sink(tmp_path / "mail") as started:
        yield started


async def test_each_email_is_stored_as_a_file_named_after_its_message_id(sink: SmtpSink) -> None:
    await send(sink, email("<evt_1@shopmesh.notifications>"))
    await send(sink, email("<evt_2@shopmesh.notifications>"))
    assert sorted(p.name for p in sink.directory.iterdir()) == [
        "evt_1@shopmesh.notifications.eml",
        "evt_2@shopmesh.notifications.eml",
    ]
    first = read_mail(sink.directory)[0]
    assert first["Subject"] == "Your order"
    assert first.get_content().rstrip() == "Grüße"


@pytest.mark.parametrize("sent", [3, 4], ids=["at-the-cap", "one-past-it"])
async def test_the_folder_keeps_the_newest_emails_up_to_its_cap_and_deletes_the_oldest(
    tmp_path: Path, sent: int
) -> None:
    """Every e-mail stayed for ever (one file each, some 43,000 a day under `make load`)."""
    cap = 3
    async with smtp_sink(tmp_path / "mail", max_mails=cap) as capped:
        for i in range(sent):
            await send(capped, email(f"<evt_{i}@shopmesh.notifications>"))
        kept = sorted(p.name for p in capped.directory.iterdir())
    assert kept == [f"evt_{i}@shopmesh.notifications.eml" for i in range(sent - cap, sent)]


async def test_a_restarted_sink_counts_the_emails_already_there_and_deletes_the_oldest(tmp_path: Path) -> None:
    async with smtp_sink(tmp_path / "mail", max_mails=3) as first:
        for i in range(3):
            await send(first, email(f"<evt_{i}@shopmesh.notifications>"))
    async with smtp_sink(tmp_path / "mail", max_mails=3) as second:
        await send(second, email("<evt_3@shopmesh.notifications>"))
        kept = sorted(p.name for p in second.directory.iterdir())
    assert kept == [f"evt_{i}@shopmesh.notifications.eml" for i in (1, 2, 3)]


async def test_the_same_message_id_sent_again_replaces_the_file(sink: SmtpSink) -> None:
    await send(sink, email("<evt_1@shopmesh.notifications>", "first copy"))
    await send(sink, email("<evt_1@shopmesh.notifications>", "second copy"))
    (stored,) = read_mail(sink.directory)
    assert stored["Subject"] == "second copy"


async def test_an_email_without_message_id_is_kept_under_a_name_derived_from_its_content(sink: SmtpSink) -> None:
    await send(sink, email(None))
    (path,) = sink.directory.glob("*.eml")
    assert path.name.startswith("no-message-id-")


async def test_the_log_line_shows_a_folded_subject_as_the_reader_sees_it(
    sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    # 79 characters with "Subject: ": the sender folds it before the value, which leaves the value a
    # leading space once unfolded; the log line printed it after two spaces.
    subject = "Your shopmesh order ord_2cee5e7693f5408d92bec374129af2f6 was cancelled"
    with caplog.at_level(logging.INFO, logger="shopmesh.smtp_sink"):
        await send(sink, email("<evt_1@shopmesh.notifications>", subject))
    (line,) = [record.getMessage() for record in caplog.records if record.name == "shopmesh.smtp_sink"]
    assert line.endswith(f"to ada@example.com: {subject}")


def test_file_names_keep_only_safe_characters() -> None:
    assert file_name("<../../etc/passwd>", b"") == "etc_passwd.eml"
    assert file_name("<a b/c@d>", b"") == "a_b_c@d.eml"
    assert file_name("", b"x") == file_name("  ", b"x") != file_name("", b"y")


async def test_a_sink_taken_down_refuses_connections_yet_no_other_socket_can_take_its_port_until_it_is_back(
    tmp_path: Path,
) -> None:
    """Closed and started again on its port, a test's sink raced every other process handed free ports (make test
    runs three workers): the port was free in between. Down, it refuses as a port nobody listens on does."""
    sink = await start_sink(tmp_path / "mail", restartable=True)
    try:
        await send(sink, email("<before@x>"))
        await sink.stop_listening()
        with pytest.raises(ConnectionRefusedError):
            await send(sink, email("<while-down@x>"))
        for reuse_address in (0, 1):
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_address)
                with pytest.raises(OSError, match="already in use"):
                    other.bind((sink.host, sink.port))
        await sink.listen_again()
        await send(sink, email("<after@x>"))
    finally:
        await sink.close()
    assert sorted(str(message["Message-ID"]) for message in read_mail(sink.directory)) == ["<after@x>", "<before@x>"]
