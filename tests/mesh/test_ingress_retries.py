"""What Istio's ingress gateway retries of the edge's calls, shown with a real Envoy.

The charts' HTTPRoute and GRPCRoute to the edge (helm/shopmesh-lib/templates/_ingress.tpl) can say nothing
about retries (Gateway API v1.2's standard channel has no such field), so Istio builds their Envoy routes
from its mesh-wide default: MeshConfig.defaultHttpRetryPolicy, or, when that is unset, its built-in policy
(2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes and 503). The
built-in one runs a call the edge refused with UNAVAILABLE three times, each time with a fresh idempotency
key of the gateway's own when the client sent none: three orders, three charges, three registrations.
k8s/scripts/mesh-istio.sh installs the meshConfig `k8s/render.py istio-tracing` prints; here that meshConfig
becomes the route's retry policy the way istiod converts it (`route_retry_policy`), in front of chassis
servers of the sample service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.testing import free_port

from .envoykit import Backend, Mesh

ROOT = Path(__file__).resolve().parents[2]
CALLS = 10

_PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    },
}


def route_retry_policy(mesh_default: dict[str, Any] | None) -> dict[str, Any] | None:
    """The retry policy istiod gives a route whose rule sets none (as the routes of an HTTPRoute or a GRPCRoute):
    meshConfig.defaultHttpRetryPolicy through retry.ConvertPolicy (istio/istio,
    pilot/pkg/networking/core/route/retry/retry.go), for the fields the mesh config here may set (attempts,
    retryOn). Unset, Istio's built-in default; attempts 0, no retries at all."""
    policy: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [_PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": 5,
        "retriable_status_codes": [503],
    }
    if mesh_default is None:
        return policy
    if mesh_default.get("attempts", 0) <= 0:
        return None
    policy["num_retries"] = mesh_default["attempts"]
    if mesh_default.get("retryOn"):
        # ConvertPolicy replaces both the conditions and the status codes with what retryOn lists (a number
        # in it is a status code).
        parts = [part.strip() for part in mesh_default["retryOn"].split(",") if part.strip()]
        codes = [int(part) for part in parts if part.isdigit()]
        conditions = [part for part in parts if not part.isdigit()]
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        policy["retry_on"] = ",".join(conditions)
        policy["retriable_status_codes"] = codes
    return policy


def installed_mesh_default() -> dict[str, Any] | None:
    """meshConfig.defaultHttpRetryPolicy of the overlay k8s/scripts/mesh-istio.sh hands istioctl."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "render.py"), "istio-tracing"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    overlay: dict[str, Any] = json.loads(result.stdout)["spec"]
    default: dict[str, Any] | None = overlay.get("meshConfig", {}).get("defaultHttpRetryPolicy")
    return default


class RefusingTheCall(Backend):
    """The edge refusing a call it may have acted on: the chassis' UNAVAILABLE, trailers-only (as every
    shopmesh error), which Envoy reads as a retriable `unavailable`."""

    async def answer(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        raise errors.Unavailable("cannot answer now", reason="DEPENDENCY_UNAVAILABLE", retry_after_seconds=1)


async def one_call(address: str) -> grpc.StatusCode:
    """One call through a plain channel (no retries of the client's own: every retry is Envoy's)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        try:
            await stub.Echo(sample_pb2.EchoRequest(message="checkout"), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_without_the_mesh_default_istios_own_runs_a_call_refused_with_unavailable_three_times(
    mesh: Mesh,
) -> None:
    """The failure the mesh default prevents, as it is: Istio's built-in policy on the gateway's route."""
    edge = RefusingTheCall()
    envoy = await mesh.envoy_in_front_of([edge], retry_policy=route_retry_policy(None))
    assert await one_call(envoy.address) == grpc.StatusCode.UNAVAILABLE
    assert edge.calls == 3


async def test_the_gateway_installed_by_mesh_istio_runs_a_call_refused_with_unavailable_once(mesh: Mesh) -> None:
    edge = RefusingTheCall()
    envoy = await mesh.envoy_in_front_of([edge], retry_policy=route_retry_policy(installed_mesh_default()))
    assert await one_call(envoy.address) == grpc.StatusCode.UNAVAILABLE
    assert edge.calls == 1, "the gateway ran one client call more than once"
    assert envoy.stats()["upstream_rq_retry"] == 0


async def test_the_gateway_installed_by_mesh_istio_still_retries_a_refused_connection_elsewhere(mesh: Mesh) -> None:
    """A connection refused never reached the edge: retried on another pod, every call is served."""
    good = Backend()
    # Beside it in the round robin, a port nothing listens on.
    envoy = await mesh.envoy_in_front_of(
        [good], retry_policy=route_retry_policy(installed_mesh_default()), gone=[f"127.0.0.1:{free_port()}"]
    )
    assert [await one_call(envoy.address) for _ in range(CALLS)] == [grpc.StatusCode.OK] * CALLS
    assert good.calls == CALLS
    assert envoy.stats()["upstream_cx_connect_fail"] >= 1, "no call met the refusing address"
