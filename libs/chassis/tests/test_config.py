"""Configuration comes from the environment, typed; bad configuration stops startup with one clear line."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from sqlalchemy.pool import QueuePool

from shopmesh_chassis.app import HOOK_RESERVE_SECONDS, HOOK_UNWIND_SECONDS
from shopmesh_chassis.config import (
    SHUTDOWN_HOOKS_MARGIN_SECONDS,
    ConfigError,
    ConsumerSettings,
    DatabaseSettings,
    EventSettings,
    GrpcPort,
    GrpcTarget,
    IdempotencySettings,
    ServiceName,
    ServiceSettings,
    StartupFailed,
    load_settings,
)
from shopmesh_chassis.db import Database
from shopmesh_chassis.server import bind_failure, check_listen_host, port_taken
from shopmesh_chassis.testing.sample_service import SampleSettings

# A child's environment with no settings in it, importing the code under test (a worktree's, by PYTHONPATH).
BARE_ENVIRONMENT = {
    "PATH": "/usr/bin:/bin",
    **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
}


def started_alone(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """A run of `python argv` (by default the sample service) with no setting but `env`; its output kept."""
    return subprocess.run(
        [sys.executable, *(argv or ("-m", "shopmesh_chassis.testing.sample_service"))],
        env={**env, **BARE_ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "6000")
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "2.5")
    settings = load_settings(SampleSettings)
    assert settings.grpc_port == 6000
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.resolved_error_domain == "shopmesh.sample"


def test_the_shutdown_hooks_budget_defaults_to_the_grace_and_five_seconds_more() -> None:
    settings = load_settings(SampleSettings)
    # notifications' sender and orders' sagas wait up to the grace inside their hooks; the rest close connections.
    assert settings.shutdown_hooks_budget_seconds == settings.shutdown_grace_seconds + 5


@pytest.mark.parametrize(("grace", "budget"), [("20", None), ("10", "10"), ("10", "4"), ("10", "10.5"), ("10", "12.9")])
def test_a_shutdown_hooks_budget_short_of_the_grace_and_its_margin_stops_startup(
    monkeypatch: pytest.MonkeyPatch, grace: str, budget: str | None
) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", grace)
    if budget is not None:
        monkeypatch.setenv("SHUTDOWN_HOOKS_BUDGET_SECONDS", budget)
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    assert str(caught.value) == (
        f"invalid configuration: SHUTDOWN_HOOKS_BUDGET_SECONDS ({budget or 15}) must be at least "
        f"SHUTDOWN_GRACE_SECONDS ({grace}) + 3: shutdown hooks wait up to the grace for their own work in "
        "flight, and need time after it to close connections"
    )
    # Just above the grace is not enough (the first hook would be cut off inside it); the margin is.
    least = float(grace) + SHUTDOWN_HOOKS_MARGIN_SECONDS
    monkeypatch.setenv("SHUTDOWN_HOOKS_BUDGET_SECONDS", f"{least}")
    assert load_settings(SampleSettings).shutdown_hooks_budget_seconds == least


def test_the_hooks_margin_leaves_the_first_hook_the_whole_grace() -> None:
    # The first hook's time: the budget less a reserve for the `database.dispose` after it; it is cancelled
    # HOOK_UNWIND_SECONDS before that is up. At the least budget the grace still fits before the cancel.
    assert SHUTDOWN_HOOKS_MARGIN_SECONDS > HOOK_RESERVE_SECONDS + HOOK_UNWIND_SECONDS


def test_secrets_are_read_from_files_in_secrets_dir_named_after_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As Kubernetes mounts a Secret: one file per key, the value as written (often with a newline).
    (tmp_path / "DATABASE_URL").write_text("postgresql://orders:s3cret@db:5432/orders\n")
    (tmp_path / "IDEMPOTENCY_FINGERPRINT_KEY").write_text("f" * 40)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("SERVICE_NAME", "orders")
    settings = load_settings(IdempotencySettings)
    assert settings.database_url == "postgresql://orders:s3cret@db:5432/orders"
    assert settings.idempotency_fingerprint_key is not None
    assert settings.idempotency_fingerprint_key.get_secret_value() == "f" * 40
    # The environment still wins over a file (a one-off override while debugging).
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/orders")
    assert load_settings(IdempotencySettings).database_url == "postgresql://elsewhere/orders"


def test_a_secrets_dir_that_is_not_a_directory_stops_startup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    assert str(caught.value) == f"invalid configuration: SECRETS_DIR={str(tmp_path / 'missing')!r}: not a directory"


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration: GRPC_PORT='not-a-port'")


def test_missing_required_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVICE_NAME", raising=False)
    with pytest.raises(ConfigError, match=r"SERVICE_NAME: Field required"):
        load_settings(ServiceSettings)


def test_every_bad_variable_is_listed_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "70000")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    assert "GRPC_PORT=" in str(caught.value)
    assert "LOG_LEVEL=" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "CONSUMER_BACKOFF_SECONDS",
            "[0.5, -1]",
            "=-1: Input should be greater than or equal to 0",
        ),
        ("CONSUMER_BACKOFF_SECONDS", "[NaN]", "=nan: Input should be a finite number"),
        (
            "CONSUMER_BACKOFF_SECONDS",
            "[1, 1e300]",
            "=1e+300: Input should be less than or equal",
        ),
        ("CONSUMER_BACKOFF_SECONDS", "[]", " must list at least one delay"),
        (
            "CONSUMER_ACK_WAIT_SECONDS",
            "Infinity",
            "='Infinity': Input should be a finite number",
        ),
        (
            "CONSUMER_HANDBACK_MAX_SECONDS",
            "Infinity",
            "='Infinity': Input should be a finite number",
        ),
        ("CONSUMER_HANDBACK_MAX_SECONDS", "0", "='0': Input should be greater than or equal to 1"),
        ("CONSUMER_MAX_ACK_PENDING", "0", "='0': Input should be greater than or equal to 1"),
        ("CONSUMER_MAX_ACK_PENDING", "1e9", "='1e9': Input should be a valid integer"),
    ],
)
def test_consumer_settings_must_be_ones_jetstream_can_take(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream takes delays in nanoseconds (NaN, infinity or 1e300 would fail deep inside nats-py) and a
    max_ack_pending of at least 1."""
    monkeypatch.setenv("SERVICE_NAME", "svc")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(ConsumerSettings)
    assert str(caught.value).startswith(f"invalid configuration: {variable}{says}")


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "GRPC_PORT",
            "abc",
            "invalid configuration: GRPC_PORT='abc': Input should be a valid integer, unable to parse string as an "
            "integer",
        ),
        # Read before the event loop starts (app.run), and reported the same way.
        ("EVENT_LOOP", "trio", "invalid configuration: EVENT_LOOP='trio': Input should be 'uvloop' or 'asyncio'"),
    ],
)
def test_bad_configuration_stops_the_process_with_one_line(variable: str, value: str, line: str) -> None:
    result = started_alone({variable: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]


def test_a_fingerprint_key_too_short_is_refused_without_writing_the_secret_to_the_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key comes from a Secret; the line goes to stderr, i.e. to the pod's logs and the log collector.
    monkeypatch.setenv("SERVICE_NAME", "payments")
    monkeypatch.setenv("DATABASE_URL", "postgresql://payments@db/payments")
    monkeypatch.setenv("IDEMPOTENCY_FINGERPRINT_KEY", "hunter2-but-too-short")
    with pytest.raises(ConfigError) as caught:
        load_settings(IdempotencySettings)
    assert "IDEMPOTENCY_FINGERPRINT_KEY" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # 30 days: a long connection age is a usual way to say "hardly ever recycle"; gRPC takes milliseconds
        # in a C int (at most ~24.8 days).
        ("GRPC_MAX_CONNECTION_AGE_SECONDS", "2592000"),
        ("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", "inf"),
        ("GRPC_KEEPALIVE_TIME_SECONDS", "inf"),
        ("GRPC_KEEPALIVE_TIMEOUT_SECONDS", "1e10"),
    ],
)
def test_a_grpc_duration_grpc_cannot_take_stops_the_process_with_one_line_naming_it(variable: str, value: str) -> None:
    result = started_alone({variable: value, "GRPC_PORT": "0", "METRICS_PORT": "-1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1
    assert lines[0].startswith(f"invalid configuration: {variable}=")


@pytest.mark.parametrize("value", ["inf", "1e10"])
def test_a_client_default_timeout_no_call_can_have_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Accepted, it made every outbound call that sets no timeout of its own fail at once with DEADLINE_EXCEEDED
    (gRPC's deadline overflows), as if every dependency hung."""
    monkeypatch.setenv("CLIENT_DEFAULT_TIMEOUT_SECONDS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    assert str(caught.value).startswith(f"invalid configuration: CLIENT_DEFAULT_TIMEOUT_SECONDS='{value}'")


def test_a_service_that_redeclares_a_bounded_setting_without_its_bounds_is_refused_at_import() -> None:
    # `grpc_port: int = 50054` in a service would replace the chassis' bounded field: GRPC_PORT=70000 then
    # served on 4464. The same type (GrpcPort) keeps the bounds and is accepted.
    with pytest.raises(TypeError, match=r"Loose\.grpc_port drops the bounds ServiceSettings gives it"):

        class Loose(ServiceSettings):
            grpc_port: int = 50054

    class Kept(ServiceSettings):
        grpc_port: GrpcPort = 50054

    with pytest.raises(ConfigError, match=r"^invalid configuration: GRPC_PORT="):
        load_settings(Kept, service_name="kept", grpc_port=70000)


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://shop:S3cret@db/shop",
        "postgresql+psycopg2//db/shop",
        # libpq's URI with the credentials as query parameters, refused for another one ('sslrootcert')
        "postgresql://db/shop?sslrootcert=/etc/ca.pem&user=shop&password=S3cret",
        # libpq's keyword/value connection string, pasted where a URL was wanted (not a database URL)
        "host=db port=5432 user=shop password=S3cret dbname=shop",
    ],
)
def test_a_database_url_no_database_can_be_opened_from_stops_startup_naming_it_and_hiding_its_password(
    url: str,
) -> None:
    """docs/chassis.md: "Invalid values stop startup: `invalid configuration: ...`, exit status 2" (it passed the
    settings and crashed later with SQLAlchemy's traceback, exit 1); the line goes to the pod's logs, so a
    password is never in it, wherever the URL gave it."""
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        load_settings(
            IdempotencySettings,
            service_name="svc",
            database_url=url,
            idempotency_fingerprint_key="0123456789abcdef0123456789abcdef",
        )
    assert "S3cret" not in str(caught.value)


def test_a_service_that_redeclares_service_name_with_the_same_bounds_written_out_is_not_refused() -> None:
    """The guard compares the fields' metadata with ==; pydantic's `pattern` metadata
    (_PydanticGeneralMetadata) has no __eq__, so the same pattern written out again compares unequal and
    the class is refused as one that "drops the bounds", though it keeps every one of them."""

    class Same(ServiceSettings):
        service_name: str = Field(default="same", min_length=1, pattern=r"^[a-z][a-z0-9-]*$")

    with pytest.raises(ConfigError, match=r"^invalid configuration: SERVICE_NAME="):
        load_settings(Same, service_name="Not Valid")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("run/catalog.sock", "must be an absolute path (e.g. /run/shopmesh/catalog.sock)"),
        ("/" + "d" * 120 + "/catalog.sock", "is 134 bytes long; a Unix socket's path takes at most 107"),
        # A folder named in Latin-1 under a UTF-8 locale: os.environ holds the byte as a surrogate escape.
        ("/run/caf\udce9/catalog.sock", "holds bytes that are not UTF-8, which grpcio needs in a path"),
    ],
    ids=["relative", "too-long", "not-utf-8"],
)
def test_a_unix_socket_path_the_kernel_cannot_take_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    """Refused at start, naming the variable: a relative path would be taken from wherever the process started,
    and one past sockaddr_un's 107 bytes failed only at bind time."""
    monkeypatch.setenv("GRPC_UNIX_SOCKET", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(SampleSettings)
    assert str(caught.value).startswith(f"invalid configuration: GRPC_UNIX_SOCKET={value!r}: {says}")


def test_the_grpc_server_binds_the_unix_socket_when_one_is_given_else_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRPC_HOST", "::1")
    monkeypatch.setenv("GRPC_PORT", "6000")
    assert load_settings(SampleSettings).grpc_listen_address == "[::1]:6000"
    monkeypatch.setenv("GRPC_UNIX_SOCKET", "/run/shopmesh/sample.sock")
    assert load_settings(SampleSettings).grpc_listen_address == "unix:/run/shopmesh/sample.sock"


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE='0'"),
        ({"DATABASE_MAX_OVERFLOW": "-1"}, "DATABASE_MAX_OVERFLOW='-1'"),
        ({"DATABASE_POOL_SIZE": "1", "DATABASE_MAX_OVERFLOW": "0"}, "POOL_SIZE (1) + DATABASE_MAX_OVERFLOW (0)"),
    ],
)
def test_a_database_pool_that_cannot_serve_calls_beside_the_relay_stops_startup_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(DatabaseSettings, service_name="svc")


def test_the_database_pool_settings_reach_the_postgresql_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "7")
    settings = load_settings(DatabaseSettings, service_name="svc", database_url="postgresql://u:p@localhost:1/x")
    pool = Database.from_settings(settings).postgres_engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow) == (3, 7)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # gRPC would take 0 streams as "refuse every call", and a count or duration past a C int as garbage.
        ("GRPC_MAX_CONCURRENT_STREAMS", "0"),
        ("GRPC_MAX_CONCURRENT_STREAMS", str(2**31)),
        ("GRPC_MAX_CONNECTION_IDLE_SECONDS", "0"),
        ("GRPC_MAX_CONNECTION_IDLE_SECONDS", "inf"),
        ("GRPC_MAX_CONNECTION_IDLE_SECONDS", "2592000"),
    ],
)
def test_a_connection_bound_grpc_cannot_take_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^invalid configuration: {variable}="):
        load_settings(SampleSettings, grpc_port=0, metrics_port=-1)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        # nats-py, given no server, retried an empty pool for ever at full CPU, deaf to SIGTERM.
        ("", "names no server"),
        (" , ", "names no server"),
        # Read by nats-py as the host "http": a DNS failure, retried for ever.
        ("http://127.0.0.1:1", "scheme 'http' is not one of nats, tls, ws or wss"),
        ("nats://", "names no host"),
        ("nats://tok@", "names no host"),
        ("nats://nats:99999", "port cannot be read"),
        ("nats://nats:0", "port is 0"),
        ("nats://[::1", "cannot be read"),
        ("nats://a:4222,ws://b:80", "mixes TCP"),
    ],
)
def test_a_nats_url_naming_no_server_nats_py_could_reach_stops_startup_naming_it(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(EventSettings, service_name="svc", nats_url=value)
    message = str(caught.value)
    assert message.startswith("invalid configuration: NATS_URL="), message
    assert says in message
    assert "tok" not in message


@pytest.mark.parametrize(
    "value",
    [
        "nats://nats:4222",
        "nats:4222",
        "nats",
        "tls://a:4222, nats://b:4222,c",
        "nats://shop:s3cret@nats:4222",
        "nats://[::1]:4222",
        "[::1]:4222",
        "ws://nats:8080,wss://nats/path",
    ],
)
def test_every_nats_url_nats_py_connects_with_is_accepted(value: str) -> None:
    assert load_settings(EventSettings, service_name="svc", nats_url=value).nats_url == value


def test_a_complex_setting_that_is_not_json_names_the_variable_and_the_form_it_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic-settings reads a tuple as JSON and raised SettingsError past load_settings: a 57-line traceback.
    monkeypatch.setenv("CONSUMER_BACKOFF_SECONDS", "0.5,1")
    with pytest.raises(ConfigError) as caught:
        load_settings(ConsumerSettings, service_name="svc")
    assert str(caught.value) == (
        "invalid configuration: CONSUMER_BACKOFF_SECONDS: is not valid JSON; give a JSON list, e.g. '[0.5, 1]'"
    )


def test_a_complex_setting_that_is_not_json_stops_the_process_with_one_line() -> None:
    main = (
        "from shopmesh_chassis.app import run\n"
        "from shopmesh_chassis.config import ConsumerSettings, load_settings\n"
        "async def main() -> None:\n"
        "    load_settings(ConsumerSettings)\n"
        "run(main)\n"
    )
    result = started_alone({"SERVICE_NAME": "svc", "CONSUMER_BACKOFF_SECONDS": "0.5,1"}, "-c", main)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: CONSUMER_BACKOFF_SECONDS: is not valid JSON; give a JSON list, e.g. '[0.5, 1]'"
    ]


class CallerSettings(ServiceSettings):
    service_name: ServiceName = "caller"
    callee_address: GrpcTarget = "127.0.0.1:50052"


@pytest.mark.parametrize(
    "value",
    [
        "catalog:50052",
        "catalog.shop.svc.cluster.local:50052",
        "10.0.0.1:50052",
        "[::1]:50052",
        "dns:///catalog:50052",
        "unix:/run/shopmesh/catalog.sock",
        "unix-abstract:catalog",
        "ipv4:10.0.0.1:50052,10.0.0.2:50052",
        "ipv6:[::1]:50052",
    ],
)
def test_an_address_setting_takes_every_form_of_grpc_target(value: str) -> None:
    assert load_settings(CallerSettings, callee_address=value).callee_address == value


@pytest.mark.parametrize(
    "value",
    ["", "catalog", "catalog:", ":50052", "http://127.0.0.1:50052", "catalog:70000", "catalog:0", "dns:", "unix:"],
)
def test_an_address_setting_no_call_could_reach_stops_startup_naming_it(value: str) -> None:
    # Accepted, the service said SERVING and failed every call to that dependency (Login INTERNAL).
    with pytest.raises(ConfigError, match=f"^invalid configuration: CALLEE_ADDRESS={re.escape(repr(value))}: "):
        load_settings(CallerSettings, callee_address=value)


def test_an_empty_grpc_host_stops_startup_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_HOST", "")
    with pytest.raises(ConfigError, match=r"^invalid configuration: GRPC_HOST=''"):
        load_settings(SampleSettings)


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("not.a.host.invalid", "no address to listen on"),
        # TEST-NET-3: resolves, but is no address of this machine.
        ("203.0.113.9", "not an address of this machine"),
    ],
)
def test_a_grpc_host_no_server_could_listen_on_stops_the_process_naming_it(host: str, says: str) -> None:
    """It said StartupFailed, "is another process using it?", exit 1: the orchestrator restarted it for ever."""
    result = started_alone({"GRPC_HOST": host, "GRPC_PORT": "0", "METRICS_PORT": "-1"})
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("invalid configuration")]
    assert line.startswith(f"invalid configuration: GRPC_HOST={host!r}: {says}")
    assert "another process" not in result.stderr


def test_a_port_another_process_holds_is_said_so_and_may_work_next_time() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        failure = bind_failure("127.0.0.1", port)
    assert isinstance(failure, StartupFailed)
    assert str(failure) == port_taken(f"127.0.0.1:{port}")
    check_listen_host("127.0.0.1")  # the host itself is fine


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *hosts: str) -> None:
    """`socket.getaddrinfo` answering `hosts` (IPv4 or IPv6 literals), as a name with those addresses would."""

    def getaddrinfo(*_: object, **__: object) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 0, "", (h, 0, 0, 0))
            if ":" in h
            else (socket.AF_INET, socket.SOCK_STREAM, 0, "", (h, 0))
            for h in hosts
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_grpc_host_with_one_address_of_this_machine_among_others_passes_as_grpc_listens_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """grpcio listens when one of a name's addresses binds (a `localhost` whose ::1 the node lacks)."""
    _resolving_to(monkeypatch, "127.0.0.1", "203.0.113.9")
    check_listen_host("shop.example")
    _resolving_to(monkeypatch, "203.0.113.9", "198.51.100.7")
    with pytest.raises(ConfigError, match="not an address of this machine"):
        check_listen_host("shop.example")


def test_a_grpc_host_of_a_family_the_kernel_has_switched_off_is_left_to_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """`::` on a node booted with ipv6.disable=1: the socket itself fails (EAFNOSUPPORT); grpcio falls back to
    0.0.0.0 there, so the check must neither crash nor refuse."""
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args, **kwargs)

    _resolving_to(monkeypatch, "::")
    monkeypatch.setattr(socket, "socket", no_ipv6)
    check_listen_host("::")
