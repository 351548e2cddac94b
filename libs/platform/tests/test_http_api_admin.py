"""The HTTP edge's Envoy as `make run` writes and starts it (no mesh: the edge's admin socket needs none), run by
the real Envoy: who can reach its admin interface, and what its metrics listener, the former admin port, still
serves."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from shopmesh_chassis.testing import eventually
from shopmesh_platform.mesh.faults import admin_request
from shopmesh_platform.ports import PortPlan
from shopmesh_platform.stack import Stack

from .envoy_admin_kit import ADMIN_REQUESTS, RunningEnvoy, http_status, start_envoy
from .run_kit import stop_launcher


class RunningEdge(RunningEnvoy):
    @property
    def metrics_port(self) -> int:
        port = self.stack.ports.http_metrics
        assert port is not None
        return port


@contextlib.asynccontextmanager
async def edge_as_launched(directory: Path) -> AsyncIterator[RunningEdge]:
    """The edge's Envoy on the configuration the launcher writes (no gateway behind it: nothing here calls one),
    started; stopped after."""
    stack = Stack(directory, ports=PortPlan.free(["gateway"], http=True), services=["gateway"])
    process: asyncio.subprocess.Process | None = None
    try:
        path = stack.write_http_api()
        process, log = await start_envoy(path, directory)
        edge = RunningEdge(stack, process, log)

        def serving() -> bool:
            assert edge.running(), log.read_text()
            return http_status(edge.metrics_port, "GET", "/stats/prometheus") == 200

        await eventually(serving, f"the edge serving its metrics (its output: {log})", timeout=30)
        yield edge
    finally:
        if process is not None:
            await stop_launcher(process)
        stack.remove_sockets()


async def test_no_tcp_port_of_the_edge_serves_its_admin_interface(tmp_path: Path) -> None:
    """Its admin interface was on 127.0.0.1:15500, unauthenticated: any local user could stop the edge
    (/quitquitquit), change its runtime or read its configuration. It is on a Unix socket only its user can
    connect to now, where the launcher's readiness probe asks it."""
    async with edge_as_launched(tmp_path) as edge:
        ports = edge.tcp_ports()
        # The public listener and the metrics one: nothing else.
        assert len(ports) == 2, ports
        for port in ports:
            for method, path in ADMIN_REQUESTS:
                assert http_status(port, method, path) in (None, 404), (port, method, path)
                assert edge.running(), f"{method} {path} on port {port} stopped the edge"
        admin = edge.stack.http_admin_socket
        assert stat.S_IMODE(admin.stat().st_mode) == 0o600
        assert stat.S_IMODE(admin.parent.stat().st_mode) == 0o700
        assert admin_request(admin, "/ready").strip() == "LIVE"


async def test_the_edges_metrics_listener_still_serves_prometheus_and_health(tmp_path: Path) -> None:
    """The former admin port answers a scraper's `GET /stats/prometheus` (relayed to the admin socket) and a
    probe's /healthz, as the edge's metrics listener on Kubernetes does; run.py's table names it."""
    async with edge_as_launched(tmp_path) as edge:
        url = edge.stack.http_metrics_url()
        assert url == f"http://127.0.0.1:{edge.metrics_port}/stats/prometheus"
        assert http_status(edge.metrics_port, "GET", "/stats/prometheus") == 200
        assert http_status(edge.metrics_port, "GET", "/healthz") == 200
