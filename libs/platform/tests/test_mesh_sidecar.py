"""One sidecar of the local mesh, run by the real Envoy from the configuration the launcher writes (the edge's:
plaintext in, so a test calls it as a client), in front of a gRPC health server on the service's socket: who
can reach its admin interface, what its Prometheus listener serves, what its access log says, and that it
cuts no call for having waited."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from shopmesh_chassis.testing import eventually
from shopmesh_platform.mesh.envoy import HEAP_MONITOR, heap_monitor_of
from shopmesh_platform.mesh.faults import Fault, current_fault, set_fault
from shopmesh_platform.ports import PortPlan
from shopmesh_platform.probes import unix_http_ok
from shopmesh_platform.stack import Stack

from .envoy_admin_kit import ADMIN_REQUESTS, RunningEnvoy, http_status, start_envoy
from .run_kit import stop_launcher

SERVICE = "gateway"
# The fault filter's runtime keys, set before any call (a layer under the admin interface's).
DELAY_2S = {"fault.http.delay.fixed_delay_percent": 100, "fault.http.delay.fixed_duration_ms": 2000}
ABORT_ALL = {"fault.http.abort.abort_percent": 100, "fault.http.abort.grpc_status": 14}


class RunningSidecar(RunningEnvoy):
    @property
    def admin(self) -> Path:
        admin = self.stack.sidecar_admin_socket(SERVICE)
        assert admin is not None
        return admin


Edit = Callable[[dict[str, Any]], None]


@contextlib.asynccontextmanager
async def sidecar_of_the_edge(directory: Path, edit: Edit | None = None) -> AsyncIterator[RunningSidecar]:
    """The edge's sidecar as the launcher writes it (`edit`: a change a test makes to it first), started, with a
    gRPC health server (SERVING) on the edge's socket behind it; stopped after."""
    stack = Stack(directory, ports=PortPlan.free([SERVICE], mesh=True), services=[SERVICE])
    server = grpc.aio.server()
    process: asyncio.subprocess.Process | None = None
    try:
        path = stack.write_mesh()[SERVICE]
        if edit is not None:
            config = json.loads(path.read_text())
            edit(config)
            path.write_text(json.dumps(config))
        health = health_aio.HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        server.add_insecure_port(f"unix:{stack.app_socket(SERVICE)}")
        await server.start()
        process, log = await start_envoy(path, directory)
        running = RunningSidecar(stack, process, log)
        await eventually(lambda: ready(running), f"the sidecar ready (its output: {log})", timeout=30)
        yield running
    finally:
        if process is not None:
            await stop_launcher(process)  # Envoy stops on SIGTERM as the launcher does
        await server.stop(0)
        stack.remove_sockets()


async def ready(sidecar: RunningSidecar) -> bool:
    assert sidecar.running(), sidecar.log.read_text()
    return await unix_http_ok(sidecar.admin, "/ready")


def runtime(values: dict[str, int]) -> Edit:
    """Runtime values under the admin interface's layer, in force from the first call."""

    def edit(config: dict[str, Any]) -> None:
        config["layered_runtime"]["layers"].insert(0, {"name": "test", "static_layer": values})

    return edit


async def health_check(sidecar: RunningSidecar) -> grpc.aio.AioRpcError | None:
    """A health check through the sidecar's inbound listener; the error it ended with, None when SERVING."""
    async with grpc.aio.insecure_channel(sidecar.stack.address(SERVICE)) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        except grpc.aio.AioRpcError as error:
            return error
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return None


async def test_no_tcp_port_of_a_sidecar_serves_its_admin_interface(tmp_path: Path) -> None:
    """Its admin interface was on 127.0.0.1:<port>, unauthenticated: any local user could stop the sidecar
    (/quitquitquit: the shop down), fail every call (/runtime_modify) or read its configuration. It is on a
    Unix socket only its user can connect to now."""
    async with sidecar_of_the_edge(tmp_path) as sidecar:
        ports = sidecar.tcp_ports()
        # The inbound listener, the Prometheus one, an outbound listener per callee: nothing else.
        assert len(ports) == 2 + len(sidecar.stack.ports.sidecar_of(SERVICE).outbound), ports
        for port in ports:
            for method, path in ADMIN_REQUESTS:
                assert http_status(port, method, path) in (None, 404), (port, method, path)
                assert sidecar.running(), f"{method} {path} on port {port} stopped the sidecar"
        assert await health_check(sidecar) is None, "no fault was set"
        assert stat.S_IMODE(sidecar.admin.stat().st_mode) == 0o600
        assert stat.S_IMODE(sidecar.admin.parent.stat().st_mode) == 0o700


async def test_the_prometheus_listener_serves_the_metrics_and_nothing_else_of_the_admin_interface(
    tmp_path: Path,
) -> None:
    """As Istio's 15090: a scraper gets `GET /stats/prometheus`; every other admin path, and any other method,
    is no route (404), answered by the listener without reaching the admin interface."""
    async with sidecar_of_the_edge(tmp_path) as sidecar:
        url = sidecar.stack.sidecar_metrics_url(SERVICE)
        assert url is not None
        port = int(url.split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/stats/prometheus")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        assert response.status == 200
        assert "envoy_server_live" in body
        for method, path in [*ADMIN_REQUESTS, ("POST", "/stats/prometheus"), ("GET", "/ready")]:
            assert http_status(port, method, path) == 404, (method, path)
        assert sidecar.running()


async def test_faults_are_set_and_cleared_on_the_admin_socket(tmp_path: Path) -> None:
    async with sidecar_of_the_edge(tmp_path) as sidecar:
        set_fault(sidecar.admin, Fault(abort=grpc.StatusCode.UNAVAILABLE))
        error = await eventually(lambda: health_check(sidecar), "the abort in force")
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "fault filter abort")
        set_fault(sidecar.admin, Fault())
        assert current_fault(sidecar.admin) == Fault()
        await eventually(lambda: _serving(sidecar), "the sidecar forwarding again once the fault is cleared")


async def _serving(sidecar: RunningSidecar) -> bool:
    return await health_check(sidecar) is None


def _idle_timers_at_their_least(config: dict[str, Any]) -> None:
    """Envoy's overload manager with a heap bound it is always past: every stream idle timer scaled down to a
    thousandth, so that Envoy's default (5 minutes) fires within a test (0.3 s), while one past the longest
    fault delay (the published listener's, PUBLISHED_STREAM_IDLE_TIMEOUT) still outlasts a 2 s delay."""
    config["overload_manager"] = {
        "refresh_interval": "0.1s",
        "resource_monitors": [heap_monitor_of(1)],
        "actions": [
            {
                "name": "envoy.overload_actions.reduce_timeouts",
                "triggers": [{"name": HEAP_MONITOR, "threshold": {"value": 0.5}}],
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
                    "timer_scale_factors": [{"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 0.1}}],
                },
            }
        ],
    }


async def test_a_call_that_waits_longer_than_any_stream_idle_timeout_is_not_cut_by_the_sidecar(
    tmp_path: Path,
) -> None:
    """Envoy's default stream idle timeout cut every call silent for 5 minutes with UNAVAILABLE "stream timeout"
    (which callers retry for idempotent methods): a fault's delay (mesh.faults takes up to an hour), a slow
    call. The sidecars have none, but for the published listener's, past the longest fault delay; the call's own
    deadline bounds it. Shown on the edge's sidecar's own configuration with any idle timer it has scaled down
    to a thousandth (the overload manager), and a delay of 2 s."""

    def edit(config: dict[str, Any]) -> None:
        _idle_timers_at_their_least(config)
        runtime(DELAY_2S)(config)

    async with sidecar_of_the_edge(tmp_path, edit) as sidecar:
        error = await health_check(sidecar)
        assert error is None, (error.code(), error.details())


async def test_the_access_log_says_when_each_call_came_in_as_the_services_logs_do(tmp_path: Path) -> None:
    """A sidecar's line for a failed call (here an abort) carries `time`, in the services' JSON logs' format
    (UTC, ISO 8601, milliseconds), so that on call it lines up with the services' own lines."""
    async with sidecar_of_the_edge(tmp_path, runtime(ABORT_ALL)) as sidecar:
        error = await health_check(sidecar)
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        def logged() -> dict[str, Any] | None:
            lines = [line for line in sidecar.log.read_text().splitlines() if line.startswith("{")]
            return json.loads(lines[-1]) if lines else None

        line = await eventually(logged, "the sidecar's access log line of the aborted call")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.get("time", "")), line
