"""NATS_URL's credentials: a token, or a user and password, reach NATS as they were meant, whatever characters
they hold, once percent-encoded in the URL; raw reserved characters stop the start with one clear line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from nats.aio.client import Client

from shopmesh_chassis import deadletters_cli as deadletters_cli_module
from shopmesh_chassis import events
from shopmesh_chassis.config import ConfigError, EventSettings, load_settings
from shopmesh_chassis.testing import free_port
from shopmesh_chassis.testing.nats_server import nats_server

from .nats_kit import deadletters_cli

# Every character a URL parser stops at or splits on, and a '%' and a '+' besides.
TOKEN = "to/ken?with#every@reserved:char%+="
USER = "shop@eu:1"
PASSWORD = "p@ss/w:rd?#%"


def encoded(text: str) -> str:
    return quote(text, safe="")


async def connected(url: str, name: str) -> Client:
    # A connection NATS refuses keeps retrying (the chassis reconnects for ever): bounded, a refusal fails.
    return await asyncio.wait_for(events.connect(url, name=name), 15)


async def test_a_percent_encoded_token_with_reserved_characters_is_the_token_nats_gets(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", token=TOKEN) as server:
        client = await connected(f"nats://{encoded(TOKEN)}@127.0.0.1:{server.port}", "token-test")
        try:
            assert client.is_connected
            await client.flush(timeout=2)  # the server took the CONNECT: a wrong token closes the connection
        finally:
            await client.close()


async def test_a_percent_encoded_user_and_password_are_the_credentials_nats_gets(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", user=USER, password=PASSWORD) as server:
        url = f"nats://{encoded(USER)}:{encoded(PASSWORD)}@127.0.0.1:{server.port}"
        client = await connected(url, "password-test")
        try:
            await client.flush(timeout=2)
        finally:
            await client.close()


async def test_a_cluster_url_gives_its_credentials_to_every_server(tmp_path: Path) -> None:
    # The first server is down; the credentials are given on it only, as `nats://token@a,nats://b` is written.
    with nats_server(tmp_path / "nats", token=TOKEN) as server:
        url = f"nats://{encoded(TOKEN)}@127.0.0.1:{free_port()}, nats://127.0.0.1:{server.port}"
        client = await connected(url, "cluster-test")
        try:
            await client.flush(timeout=2)
            assert client.connected_url is not None
            assert client.connected_url.port == server.port
        finally:
            await client.close()


async def test_a_publisher_with_a_percent_encoded_token_declares_its_stream_and_publishes(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", token=TOKEN) as server:
        publisher = events.DeferredJetStream(
            f"nats://{encoded(TOKEN)}@127.0.0.1:{server.port}",
            name="token-test",
            stream="THINGS",
            subjects=["things.v1.>"],
            duplicate_window_seconds=60,
        )
        ready = asyncio.Event()
        publisher.start(on_ready=ready.set)
        try:
            await asyncio.wait_for(ready.wait(), 15)
            assert await publisher.publish("things.v1.happened", b"x", msg_id="e1", headers={})
        finally:
            await publisher.close()


# Each holds "cr3t", which no error may show.
RAW = [
    "nats://s3/cr3t@nats:4222",
    "nats://s3?cr3t@nats:4222",
    "nats://s3#cr3t@nats:4222",
    "nats://s3@cr3t@nats:4222",
    "nats://shop:s3:cr3t@nats:4222",
    "nats://nats-0:4222,nats://shop:s3@cr3t@nats-1:4222",
    "nats://s3%zzcr3t@nats:4222",  # a '%' that escapes nothing
]


@pytest.mark.parametrize("url", RAW)
def test_raw_reserved_characters_in_the_credentials_stop_the_start_naming_nats_url(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(EventSettings, service_name="svc", nats_url=url)
    said = str(raised.value)
    assert "NATS_URL" in said
    assert "percent-encode" in said
    assert "cr3t" not in said, said


@pytest.mark.parametrize("url", RAW)
async def test_connecting_with_raw_reserved_characters_is_refused_before_any_dns_lookup(url: str) -> None:
    with pytest.raises(events.InvalidNatsUrl, match=r"NATS_URL.*percent-encode"):
        await connected(url, "raw-test")


def test_the_url_is_split_into_servers_without_credentials_and_decoded_credentials() -> None:
    target = events.parse_nats_url(f"nats://{encoded(USER)}:{encoded(PASSWORD)}@a:4222, tls://b:4222,c")
    assert target.servers == ("nats://a:4222", "tls://b:4222", "c")
    assert (target.user, target.password, target.token) == (USER, PASSWORD, None)
    token = events.parse_nats_url(f"nats://{encoded(TOKEN)}@a:4222")
    assert (token.user, token.password, token.token) == (None, None, TOKEN)
    assert events.parse_nats_url("nats://a:4222").servers == ("nats://a:4222",)
    # A base64 token ('+', '/' encoded, '=') as `openssl rand -base64` makes it: '+' stays a '+'.
    assert events.parse_nats_url("nats://ab+c%2Fd==@a:4222").token == "ab+c/d=="


def test_servers_that_give_different_credentials_are_refused() -> None:
    # nats-py sends one set of credentials to every server of its pool.
    with pytest.raises(events.InvalidNatsUrl, match=r"NATS_URL.*same credentials"):
        events.parse_nats_url("nats://one@a:4222,nats://two@b:4222")


def test_the_log_shows_an_encoded_url_masked() -> None:
    assert events.shown_nats_url(f"nats://{encoded(TOKEN)}@nats:4222") == "nats://***@nats:4222"


async def test_the_dead_letters_command_takes_percent_encoded_credentials(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", user=USER, password=PASSWORD) as server:
        url = f"nats://{encoded(USER)}:{encoded(PASSWORD)}@127.0.0.1:{server.port}"
        listed = await asyncio.to_thread(deadletters_cli, url, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no dead letters"


def test_the_dead_letters_command_says_to_percent_encode_raw_reserved_characters() -> None:
    refused = deadletters_cli("nats://s3/cr3t@127.0.0.1:4222", "list")
    assert refused.returncode == 2
    assert "NATS_URL" in refused.stderr
    assert "percent-encode" in refused.stderr
    assert "cr3t" not in refused.stderr


# The Helm charts mount NATS_URL from a Secret as a file in SECRETS_DIR (global.nats.existingSecret,
# docs/kubernetes.md), as they do DATABASE_URL: the services and the dead-letters command must read it there.
def secret_nats_url(folder: Path, url: str) -> Path:
    folder.mkdir()
    # As a Secret made with `kubectl create secret generic --from-file` holds it: with the file's newline.
    (folder / "NATS_URL").write_text(url + "\n")
    return folder


async def test_a_nats_url_with_credentials_is_read_from_secrets_dir_and_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with nats_server(tmp_path / "nats", token=TOKEN) as server:
        url = f"nats://{encoded(TOKEN)}@127.0.0.1:{server.port}"
        monkeypatch.delenv("NATS_URL", raising=False)
        monkeypatch.setenv("SECRETS_DIR", str(secret_nats_url(tmp_path / "secrets", url)))
        settings = load_settings(EventSettings, service_name="svc")
        assert settings.nats_url == url
        client = await connected(settings.nats_url, "secret-file-test")
        try:
            await client.flush(timeout=2)
        finally:
            await client.close()


def test_the_dead_letters_command_defaults_to_the_nats_url_in_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubectl exec deploy/notifications -- shopmesh-deadletters list` (docs/kubernetes.md) in a pod whose
    NATS_URL is a file of SECRETS_DIR, not a variable: it went to the local stack's NATS, 127.0.0.1:14222."""
    url = f"nats://{encoded(USER)}:{encoded(PASSWORD)}@nats.messaging:4222"
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv("SECRETS_DIR", str(secret_nats_url(tmp_path / "secrets", url)))
    assert deadletters_cli_module.parse_args(["list"]).nats_url == url
    with pytest.raises(SystemExit):
        deadletters_cli_module.parse_args(["--help"])
    # --help says where the default comes from, never the password.
    helped = capsys.readouterr().out
    assert "$SECRETS_DIR/NATS_URL (nats://***@nats.messaging:4222)" in " ".join(helped.split())
    assert "p%40ss" not in helped
    # The environment still wins, as it does for the services.
    monkeypatch.setenv("NATS_URL", "nats://elsewhere:4222")
    assert deadletters_cli_module.parse_args(["list"]).nats_url == "nats://elsewhere:4222"


async def test_the_dead_letters_command_reaches_nats_with_the_url_in_secrets_dir(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", user=USER, password=PASSWORD) as server:
        url = f"nats://{encoded(USER)}:{encoded(PASSWORD)}@127.0.0.1:{server.port}"
        secrets = secret_nats_url(tmp_path / "secrets", url)
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"} | {"SECRETS_DIR": str(secrets)}
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shopmesh_chassis.deadletters_cli", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no dead letters"
