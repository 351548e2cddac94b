"""Faults on Kubernetes, as `make fault` injects them at the local sidecars: under Istio, global.faults.<service>
puts a delay and/or an abort into the service's VirtualService, for every meshed caller; checked against
Istio's CRD schemas. Refused where nothing would inject them (Linkerd, no mesh, the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh_platform.topology import SERVICES, is_edge

from .k8skit import Docs, find, render, validate_custom_resources

EDGE = next(name for name in SERVICES if is_edge(name))
ISTIO = {"global": {"mesh": "istio"}}


def umbrella(helm_dir: Path, values: dict[str, Any]) -> Docs:
    texts = render.render(helm_dir, render.UMBRELLA, "istio", values=values).values()
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def with_faults(faults: dict[str, Any], mesh: str = "istio") -> dict[str, Any]:
    return {"global": {"mesh": mesh, "faults": faults}}


def rpc_route(docs: Docs, service: str) -> dict[str, Any]:
    [route] = find(docs, "VirtualService", service)["spec"]["http"]
    return route


def test_a_delay_and_an_abort_go_into_the_services_virtual_service(helm_dir: Path) -> None:
    faults = {"recommendations": {"delay": "3s"}, "payments": {"abort": "UNAVAILABLE", "percent": 30}}
    docs = umbrella(helm_dir, with_faults(faults))
    assert rpc_route(docs, "recommendations")["fault"] == {"delay": {"percentage": {"value": 100}, "fixedDelay": "3s"}}
    assert rpc_route(docs, "payments")["fault"] == {"abort": {"percentage": {"value": 30}, "grpcStatus": "UNAVAILABLE"}}
    # Only where asked; the route itself (destination, retries) is the one without a fault.
    assert "fault" not in rpc_route(docs, "catalog")
    plain = umbrella(helm_dir, ISTIO)
    for service in faults:
        assert {k: v for k, v in rpc_route(docs, service).items() if k != "fault"} == rpc_route(plain, service)
    services = [d for d in docs if d["kind"] == "VirtualService"]
    assert validate_custom_resources(services) == []


def test_both_at_once_each_on_its_share(helm_dir: Path) -> None:
    docs = umbrella(helm_dir, with_faults({"catalog": {"delay": "500ms", "abort": "INTERNAL", "percent": 12.5}}))
    fault = rpc_route(docs, "catalog")["fault"]
    assert fault["delay"] == {"percentage": {"value": 12.5}, "fixedDelay": "500ms"}
    assert fault["abort"] == {"percentage": {"value": 12.5}, "grpcStatus": "INTERNAL"}
    assert validate_custom_resources([find(docs, "VirtualService", "catalog")]) == []


def test_the_istio_schema_check_sees_a_bad_fault(helm_dir: Path) -> None:
    docs = umbrella(helm_dir, with_faults({"catalog": {"delay": "3s"}}))
    service = find(docs, "VirtualService", "catalog")
    service["spec"]["http"][0]["fault"]["delay"]["fixedDelay"] = 3
    assert validate_custom_resources([service]), "a delay that is not a duration string passed"


@pytest.mark.parametrize(
    ("faults", "mesh", "problem"),
    [
        ({"catalog": {"delay": "3s"}}, "linkerd", "Linkerd has no fault injection"),
        ({"catalog": {"delay": "3s"}}, "", "Istio's VirtualService injects it"),
        ({EDGE: {"abort": "UNAVAILABLE"}}, "istio", "callers are outside the mesh"),
        ({"catalog": {"percent": 50}}, "istio", "give a delay"),
        ({"catalog": {"delay": "soon"}}, "istio", "not a duration"),
        ({"catalog": {"abort": "BROKEN"}}, "istio", "not a gRPC status"),
        ({"catalog": {"abort": "OK"}}, "istio", "not a gRPC status"),
        ({"catalog": {"abort": "UNAVAILABLE", "percent": 150}}, "istio", "percent must be 0-100"),
    ],
)
def test_a_fault_nothing_would_inject_fails_the_render(
    helm_dir: Path, faults: dict[str, Any], mesh: str, problem: str
) -> None:
    with pytest.raises(Exception, match=problem):
        render.render(helm_dir, render.UMBRELLA, "default", values=with_faults(faults, mesh))
