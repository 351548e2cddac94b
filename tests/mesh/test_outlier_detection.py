"""The charts' DestinationRule outlier detection, as Istio hands it to Envoy, in a real Envoy in front of
chassis servers of the sample service.

The rule is read from the chart (helm/shopmesh-lib/templates/_mesh.tpl, rendered by k8s/render.py) and
converted the way istiod converts it (`envoy_outlier_detection`), so this runs what a cluster gets. Envoy maps
gRPC UNAVAILABLE to 503: counted as a 5xx, a healthy orders pod relaying a dependency's outage
(DEPENDENCY_UNAVAILABLE) was ejected, and after the dependency came back half of orders' pods sat idle for
baseEjectionTime while the others took every call. The rule ejects a pod for its own transport failures only
(Envoy's locally originated errors: a connection refused, reset, timed out), which a pod that is gone still
gets ejected for.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.testing import eventually, free_port

from .envoykit import Backend, Mesh

ROOT = Path(__file__).resolve().parents[2]
# A service that relays its dependencies' outages (payments', inventory's) and has callers, so a rule.
SERVICE = "orders"
CALLS = 20


def _render_module() -> ModuleType:
    """k8s/render.py, under the name tests/k8s loads it by (one module when both run in one session)."""
    name = "shopmesh_k8s_render"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "k8s" / "render.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.cache
def rendered_outlier_detection() -> dict[str, Any]:
    """The outlierDetection of SERVICE's DestinationRule as the chart renders it under Istio (once: it is
    read only, and a render copies the charts and resolves their dependencies)."""
    render = _render_module()
    with render.prepared_copy() as copy:
        texts = render.render(copy, SERVICE, "istio")
    [rule] = [
        doc
        for text in texts.values()
        for doc in render.documents(text)
        if doc["kind"] == "DestinationRule" and doc["metadata"]["name"] == SERVICE
    ]
    outlier: dict[str, Any] = rule["spec"]["trafficPolicy"]["outlierDetection"]
    return outlier


def envoy_outlier_detection(rule: dict[str, Any]) -> dict[str, Any]:
    """A DestinationRule's outlierDetection as Envoy's cluster gets it from istiod (applyOutlierDetection in
    istio/istio pilot/pkg/networking/core/cluster_traffic_policy.go): success-rate detection off; a detector's
    threshold of 0 turns it off (its enforcing percentage 0), any other enforces at 100 %; split local-origin
    errors with their own threshold. minHealthPercent is Envoy's panic threshold, which envoykit's cluster
    fixes at 0 (an ejected host gets no calls at all: stricter than the charts' 50 with two hosts)."""
    out: dict[str, Any] = {"enforcing_success_rate": 0}
    for field, threshold, enforcing in (
        ("consecutive5xxErrors", "consecutive_5xx", "enforcing_consecutive_5xx"),
        ("consecutiveGatewayErrors", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"),
    ):
        if field in rule:
            out[threshold] = rule[field]
            out[enforcing] = 100 if rule[field] > 0 else 0
    for field, name in (
        ("interval", "interval"),
        ("baseEjectionTime", "base_ejection_time"),
        ("maxEjectionPercent", "max_ejection_percent"),
    ):
        if field in rule:
            out[name] = rule[field]
    if rule.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if rule.get("consecutiveLocalOriginFailures", 0) > 0:
            out["consecutive_local_origin_failure"] = rule["consecutiveLocalOriginFailures"]
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    return out


class RelaysDependencyOutage(Backend):
    """A healthy orders pod: UNAVAILABLE DEPENDENCY_UNAVAILABLE (its own ErrorInfo) while its dependency is
    down, OK once it is back."""

    dependency_down = True

    async def answer(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        if self.dependency_down:
            raise errors.Unavailable(
                "payments is unavailable", reason=errors.DEPENDENCY_UNAVAILABLE, retry_after_seconds=1.0
            )
        return await super().answer(request, context)


async def echo_codes(address: str, count: int) -> list[grpc.StatusCode]:
    """`count` Echo calls one after the other through a plain channel (no retries of the client's own)."""
    codes = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        for _ in range(count):
            try:
                await stub.Echo(sample_pb2.EchoRequest(message="x"), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
    return codes


async def test_a_pod_relaying_its_dependencys_outage_is_not_ejected(mesh: Mesh) -> None:
    outlier = envoy_outlier_detection(rendered_outlier_detection())
    a, b = RelaysDependencyOutage(), RelaysDependencyOutage()
    envoy = await mesh.envoy_in_front_of([a, b], outlier_detection=outlier)

    # Round robin: each pod answers CALLS / 2 UNAVAILABLE in a row, far past any threshold of the rule's.
    assert await echo_codes(envoy.address, CALLS) == [grpc.StatusCode.UNAVAILABLE] * CALLS
    assert a.calls == b.calls == CALLS // 2

    # The dependency is back: both pods take calls again. An ejected one would get none for baseEjectionTime
    # (Envoy ejects on its main thread as the answer passes, before this admin request is served).
    assert [address for address, host in envoy.hosts().items() if host.ejected] == []
    a.dependency_down = b.dependency_down = False
    before = (a.calls, b.calls)
    assert await echo_codes(envoy.address, CALLS) == [grpc.StatusCode.OK] * CALLS
    assert (a.calls - before[0], b.calls - before[1]) == (CALLS // 2, CALLS // 2)
    assert envoy.stats()["outlier_detection.ejections_enforced_total"] == 0


async def test_a_pod_whose_connections_fail_is_ejected(mesh: Mesh) -> None:
    """The rule still does what it is for: a pod that is gone (its connections refused) is ejected after the
    rule's consecutiveLocalOriginFailures, and the calls go to the pod that answers."""
    rule = rendered_outlier_detection()
    threshold = rule["consecutiveLocalOriginFailures"]
    good, gone = Backend(), f"127.0.0.1:{free_port()}"
    envoy = await mesh.envoy_in_front_of([good], outlier_detection=envoy_outlier_detection(rule), gone=[gone])

    # Round robin sends every other call to the gone pod until it is ejected.
    codes = await echo_codes(envoy.address, 2 * threshold)
    assert codes.count(grpc.StatusCode.UNAVAILABLE) == threshold
    await eventually(
        lambda: envoy.stats()["outlier_detection.ejections_enforced_consecutive_local_origin_failure"] == 1,
        f"Envoy ejecting the gone pod after {threshold} refused connections",
        timeout=10,
    )
    assert envoy.hosts()[gone].ejected
    before = good.calls
    assert await echo_codes(envoy.address, CALLS) == [grpc.StatusCode.OK] * CALLS
    assert good.calls == before + CALLS
