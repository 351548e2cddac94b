"""What the tests of the launcher's Envoys (a sidecar, the HTTP edge) share: one started by the real Envoy on the
configuration the launcher writes, the TCP ports it listens on, and what its admin interface would do for
anyone who reached it."""

from __future__ import annotations

import asyncio
import http.client
from dataclasses import dataclass
from pathlib import Path

import psutil

from shopmesh_platform.stack import Stack, envoy_binary

# What an Envoy admin interface would do for anyone who reaches it: read its keys' paths and its whole
# configuration, set a fault on every call, stop it (last: it works at once).
ADMIN_REQUESTS = [
    ("GET", "/config_dump"),
    ("GET", "/certs"),
    ("GET", "/stats"),
    ("POST", "/runtime_modify?fault.http.abort.abort_percent=100"),
    ("POST", "/quitquitquit"),
]


@dataclass
class RunningEnvoy:
    stack: Stack
    process: asyncio.subprocess.Process
    log: Path

    def tcp_ports(self) -> list[int]:
        """Every TCP port the Envoy listens on."""
        connections = psutil.Process(self.process.pid).net_connections(kind="tcp")
        return sorted({c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN})

    def running(self) -> bool:
        return self.process.returncode is None


async def start_envoy(config: Path, directory: Path) -> tuple[asyncio.subprocess.Process, Path]:
    """Envoy on `config`, as the launcher runs it, its output in `directory`; the process and that log."""
    log = directory / "envoy.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(envoy_binary()),
            *("--config-path", str(config), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"),
            *("--base-id-path", str(directory / "base-id")),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return process, log


def http_status(port: int, method: str, path: str) -> int | None:
    """The status of an HTTP/1.1 request to 127.0.0.1:port; None when nothing HTTP/1.1 answers (a listener of
    HTTP/2 or TLS only hangs up on it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
