"""The `helm test` hook's script (rendered from helm/shopmesh-lib/templates/_tests.tpl, exactly as the test
pod runs it) against a real chassis server: it passes on a serving service and fails on one that is not;
under a mesh policy it also proves the policy is enforced — it passes only when every method but health
comes back PERMISSION_DENIED, here from a real Envoy with the policy's rule for the test's identity (health
open, the rest refused), and fails against the same service with nothing in front. The edge's hook checks no
refusal: its policy (every method, from anyone) makes none."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh.sample.v1 import sample_pb2
from shopmesh_platform.stack import Stack

from .envoykit import Backend, Mesh

ROOT = Path(__file__).resolve().parents[2]
SERVED = sample_pb2.DESCRIPTOR.services_by_name["SampleService"].full_name
SHOP = shop_pb2.DESCRIPTOR.services_by_name["ShopService"].full_name


def _rbac(policies: dict[str, Any]) -> dict[str, Any]:
    """Envoy's RBAC filter allowing `policies`: what Istio configures from an AuthorizationPolicy."""
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


_HEALTH = {
    "permissions": [{"url_path": {"path": {"prefix": "/grpc.health.v1.Health/"}}}],
    "principals": [{"any": True}],
}
# What the mesh policy grants the test pod's identity: grpc.health.v1.Health, nothing else (Istio's
# AuthorizationPolicy and Linkerd's routes in _mesh.tpl).
HEALTH_ONLY = _rbac({"health": _HEALTH})
# The gateway's policy (_mesh.tpl, the edge): health, and every method on the gRPC port from anyone the
# NetworkPolicy lets in (Istio's rule with no source; Linkerd's `gateway-clients` for any network).
EDGE_POLICY = _rbac({"health": _HEALTH, "edge": {"permissions": [{"any": True}], "principals": [{"any": True}]}})


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shopmesh_k8s_render_for_hook", ROOT / "k8s" / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_pod_command(render: ModuleType, helm_dir: Path, chart: str, value_set: str) -> list[str]:
    """The command of the chart's `helm test` pod, as rendered."""
    for text in render.render(helm_dir, chart, value_set).values():
        for doc in render.documents(text):
            if doc["kind"] == "Pod" and doc["metadata"]["name"] == f"{chart}-health-test":
                command: list[str] = doc["spec"]["containers"][0]["command"]
                return command
    raise AssertionError(f"the {chart} chart renders no test pod for {value_set}")


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    """value set -> the test pod's command, as catalog's chart renders it."""
    render = _render_module()
    with render.prepared_copy() as helm_dir:
        return {
            value_set: _test_pod_command(render, helm_dir, "catalog", value_set)
            for value_set in ("default", "istio", "linkerd")
        }


async def run_hook(script: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_the_hook_checks_the_policy_exactly_where_the_chart_renders_one(commands: dict[str, Any]) -> None:
    scripts = {tuple(command[:3]) for command in commands.values()}
    assert len(scripts) == 1, "one script for every value set"
    address = "catalog.shopmesh.svc.cluster.local:50051"
    assert commands["default"][3:] == [address, "shopmesh.catalog.v1.CatalogService"]
    for mesh in ("istio", "linkerd"):
        assert commands[mesh][3:] == ["--meshed", address, "shopmesh.catalog.v1.CatalogService"]


async def test_the_hook_passes_on_a_serving_service(commands: dict[str, list[str]], mesh: Mesh) -> None:
    backend = Backend()
    await mesh.serve(backend)
    code, output = await run_hook(commands["default"][2], backend.address, SERVED)
    assert code == 0, output
    assert output.count("ok  ") == 2, output  # overall and the served service
    assert "FAIL" not in output


async def test_the_hook_fails_on_a_service_that_is_not_served(commands: dict[str, list[str]], mesh: Mesh) -> None:
    backend = Backend()
    await mesh.serve(backend)
    code, output = await run_hook(commands["default"][2], backend.address, "shopmesh.catalog.v1.CatalogService")
    assert code == 1, output
    assert "FAIL" in output
    assert "NOT_FOUND" in output


async def test_under_a_mesh_policy_the_hook_passes_when_all_but_health_is_refused(
    commands: dict[str, list[str]], mesh: Mesh
) -> None:
    backend = Backend()
    envoy = await mesh.envoy_in_front_of([backend], http_filters=[HEALTH_ONLY])
    code, output = await run_hook(commands["istio"][2], "--meshed", envoy.address, SERVED)
    assert code == 0, output
    assert f"{SERVED}/* as this test: PERMISSION_DENIED, refused by the mesh" in output
    assert backend.calls == 0


async def test_under_a_mesh_policy_the_hook_fails_where_nothing_enforces_it(
    commands: dict[str, list[str]], mesh: Mesh
) -> None:
    backend = Backend()
    await mesh.serve(backend)
    code, output = await run_hook(commands["linkerd"][2], "--meshed", backend.address, SERVED)
    assert code == 1, output
    assert "UNIMPLEMENTED, the mesh let it through" in output


@pytest.mark.parametrize("value_set", ["istio", "linkerd"])
async def test_under_a_mesh_the_edges_hook_passes_behind_the_edges_own_policy(mesh: Mesh, value_set: str) -> None:
    """The edge's policy refuses nobody anything: a hook expecting a refusal there (`--meshed`) would fail every
    `helm test` under a mesh, so the gateway's checks health (and its HTTP/JSON API) only."""
    render = _render_module()
    with render.prepared_copy() as helm_dir:
        command = _test_pod_command(render, helm_dir, "gateway", value_set)
    assert "--meshed" not in command
    backend = Backend()
    envoy = await mesh.envoy_in_front_of([backend], http_filters=[EDGE_POLICY])
    code, output = await run_hook(command[2], envoy.address, SERVED)
    assert code == 0, output
    # What the refusal check would have met there: the call let through.
    code, output = await run_hook(command[2], "--meshed", envoy.address, SERVED)
    assert code == 1, output
    assert "UNIMPLEMENTED, the mesh let it through" in output


@pytest.fixture(scope="module")
def edge_command() -> list[str]:
    """The gateway's test pod's command (its chart turns the HTTP/JSON check on), default values."""
    render = _render_module()
    with render.prepared_copy() as helm_dir:
        return _test_pod_command(render, helm_dir, "gateway", "default")


async def test_the_edges_hook_checks_its_http_api_and_fails_when_that_api_does_not_answer_right(
    edge_command: list[str], tmp_path: Path
) -> None:
    """Against the real gateway and the real Envoy of its HTTP/JSON edge (what the http-api container runs)."""
    assert edge_command[3] == "--http"
    async with Stack.for_tests(tmp_path, services=["gateway"], http=True) as stack:
        assert stack.http_url is not None
        grpc_target = (stack.address("gateway"), SHOP)
        code, output = await run_hook(edge_command[2], "--http", stack.http_url, *grpc_target)
        assert code == 0, output
        assert f"ok   {stack.http_url} GET /v1/orders without a token: 401 ['TOKEN_MISSING']" in output
        assert f"ok   {stack.http_url} GET / (the storefront): 200 text/html; charset=utf-8 b'<!doctype html>" in output
        assert f"ok   {stack.http_url} GET /assets/app.js: 200 text/javascript" in output
        assert f"ok   {stack.http_url} GET /assets/countries.js: 200 text/javascript" in output
        assert f"ok   {stack.http_url} GET /assets/app.css: 200 text/css" in output

        # gRPC healthy, but what answers on the HTTP port is not the API (here: the gateway's metrics).
        metrics = stack.metrics_url("gateway")
        assert metrics is not None
        elsewhere = metrics.removesuffix("/metrics")
        code, output = await run_hook(edge_command[2], "--http", elsewhere, *grpc_target)
        assert code == 1, output
        assert output.count("ok  ") == 2, output  # both health checks
        assert f"FAIL {elsewhere} GET /v1/orders without a token: 200" in output, "a 200 that is not the API"
        assert f"FAIL {elsewhere} GET / (the storefront): 200" in output, "a 200 that is not the storefront"
        assert f"FAIL {elsewhere} GET /assets/app.css: 200" in output, "a 200 that is not its style sheet"

        # The gateway behind the edge gone: the edge answers 503.
        await stack.stop_service("gateway")
        code, output = await run_hook(edge_command[2], "--http", stack.http_url, *grpc_target)
        assert code == 1, output
        assert f"FAIL {stack.http_url} GET /v1/orders without a token: 503" in output
