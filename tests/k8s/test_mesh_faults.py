"""Faults on Kubernetes, as `make fault` injects them at the local sidecars: under Istio, global.faults.<service>
puts a delay and/or an abort into the service's VirtualService, for every meshed caller; checked against
Istio's CRD schemas. Refused where nothing would inject them (Linkerd, no mesh, the edge)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shopmesh_platform.topology import SERVICES, is_edge

from .k8skit import Docs, find, objects_of, render, validate_custom_resources

EDGE = next(name for name in SERVICES if is_edge(name))
ISTIO = {"global": {"mesh": "istio"}}


def umbrella(helm_dir: Path, values: dict[str, Any]) -> Docs:
    return objects_of(helm_dir, render.UMBRELLA, values)


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


def test_a_percent_as_helm_set_passes_it_is_a_number(helm_dir: Path) -> None:
    # `--set global.faults.catalog.percent=12.5` arrives as the string "12.5".
    docs = umbrella(helm_dir, with_faults({"catalog": {"abort": "UNAVAILABLE", "percent": "12.5"}}))
    assert rpc_route(docs, "catalog")["fault"]["abort"]["percentage"] == {"value": 12.5}


def test_with_a_canary_the_fault_hits_both_tracks(helm_dir: Path) -> None:
    values = with_faults({"catalog": {"delay": "3s"}})
    values["global"]["database"] = {"mode": "postgres"}
    values["global"]["canary"] = {"catalog": {"enabled": True, "weight": 20}}
    route = rpc_route(umbrella(helm_dir, values), "catalog")
    assert route["fault"]["delay"]["fixedDelay"] == "3s"
    assert sorted(d["destination"]["subset"] for d in route["route"]) == ["canary", "stable"]


def test_a_service_chart_alone_takes_its_fault_from_global_too(helm_dir: Path) -> None:
    docs = objects_of(helm_dir, "catalog", with_faults({"catalog": {"delay": "3s"}}))
    assert rpc_route(docs, "catalog")["fault"]["delay"]["fixedDelay"] == "3s"


@pytest.mark.parametrize(
    ("faults", "values", "problem"),
    [
        ({"catalog": {"delay": "3s"}}, {"mesh": "linkerd"}, "Linkerd has no fault injection"),
        ({"catalog": {"delay": "3s"}}, {"mesh": ""}, "global.mesh istio, with its policy objects"),
        ({"catalog": {"delay": "3s"}}, {"meshPolicy": {"enabled": False}}, "global.mesh istio, with its policy"),
        ({EDGE: {"abort": "UNAVAILABLE"}}, {}, "callers are outside the mesh"),
        ({"paymnets": {"abort": "UNAVAILABLE"}}, {}, 'global.faults.paymnets: no service "paymnets"'),
        # The chart's schema (k8s/values_schema.py) refuses a fault's shape before the templates see it.
        ({"catalog": "3s"}, {}, "at '/global/faults/catalog': got string, want null or object"),
        ({"catalog": {"delay": "3s", "precent": 30}}, {}, "'/global/faults/catalog': additional properties 'precent'"),
        ({"catalog": {"percent": 50}}, {}, "give a delay"),
        ({"catalog": {"delay": "soon"}}, {}, "not a duration"),
        ({"catalog": {"delay": "0s"}}, {}, "not a duration"),
        ({"catalog": {"delay": "1.5ms"}}, {}, "not a duration"),
        ({"catalog": {"abort": "BROKEN"}}, {}, "not a gRPC status"),
        ({"catalog": {"abort": "OK"}}, {}, "not a gRPC status"),
        ({"catalog": {"abort": "UNAVAILABLE", "percent": 150}}, {}, "percent must be a number from 0 to 100"),
        ({"catalog": {"abort": "UNAVAILABLE", "percent": "30%"}}, {}, "percent must be a number from 0 to 100"),
        ({"catalog": {"abort": "UNAVAILABLE", "percent": True}}, {}, "'/global/faults/catalog/percent': got boolean"),
    ],
)
def test_a_fault_nothing_would_inject_as_asked_fails_the_render(
    helm_dir: Path, faults: dict[str, Any], values: dict[str, Any], problem: str
) -> None:
    settings = with_faults(faults)
    settings["global"].update(values)
    with pytest.raises(Exception, match=re.escape(problem)):
        render.render(helm_dir, render.UMBRELLA, "default", values=settings)


def test_a_canary_of_a_service_the_release_does_not_have_fails_the_render(helm_dir: Path) -> None:
    values = {"global": {"mesh": "istio", "database": {"mode": "postgres"}, "canary": {"catlog": {"enabled": True}}}}
    with pytest.raises(Exception, match=re.escape('global.canary.catlog: no service "catlog"')):
        render.render(helm_dir, render.UMBRELLA, "default", values=values)
