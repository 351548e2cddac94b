"""A canary in the local mesh (`make run MESH=envoy RUN_ARGS="--postgres --canary catalog:50"`): a second
catalog process, behind a sidecar of its own with catalog's identity, on catalog's database; the sidecars of
catalog's callers split their calls between the two by weight, as Istio's VirtualService weights do on
Kubernetes (docs/mesh.md, "Canaries"). Real processes, a real PostgreSQL, real Envoys."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.stack import Canary, Stack, postgres_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEIGHT = 50
CALLS = 60
# catalog and one of its callers; the caller's sidecar is where the split happens.
SERVICES = ["catalog", "recommendations"]
LIST_PRODUCTS = "ListProducts"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path, postgres: PostgresServer) -> AsyncIterator[Stack]:
    # Databases of their own on the session's throwaway server.
    env = postgres_env(postgres, SERVICES)
    canary = Canary("catalog", WEIGHT)
    async with Stack.for_tests(module_dir, services=SERVICES, env=env, mesh=True, canary=canary) as running:
        yield running


def handled(stack: Stack, process: str, method: str) -> int:
    """Calls of `method` that `process` (catalog or catalog-canary) answered, from its own metrics."""
    url = stack.metrics_url(process)
    assert url is not None
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_method") == method
        )
    )


def sidecar_stats(stack: Stack, service: str) -> dict[str, int]:
    url = f"{stack.sidecar_admin_url(service)}/stats?usedonly&format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.load(response)["stats"]
    return {item["name"]: int(item["value"]) for item in stats if "value" in item}


async def test_the_canary_runs_beside_its_service_behind_a_sidecar_of_its_own(stack: Stack) -> None:
    assert stack.services == ["catalog", "catalog-canary", "recommendations"]
    assert "catalog-canary-sidecar" in stack.sidecars
    assert stack.pid("catalog") != stack.pid("catalog-canary")
    # It serves catalog's data (the same database): a seeded product, through its own sidecar.
    async with channel_as(stack.mesh_dir, "recommendations", "catalog", stack.address("catalog-canary")) as channel:
        product = await catalog_pb2_grpc.CatalogServiceStub(channel).GetProduct(
            catalog_pb2.GetProductRequest(product_id="prod_chef_knife"), timeout=10
        )
    assert product.product.id == "prod_chef_knife"


async def test_a_callers_sidecar_splits_its_calls_between_the_service_and_its_canary(stack: Stack) -> None:
    before = {process: handled(stack, process, LIST_PRODUCTS) for process in ("catalog", "catalog-canary")}
    # Calls as recommendations makes them: into its sidecar's outbound listener for catalog (plaintext on
    # loopback, as a pod's own traffic into its proxy).
    outbound = stack.ports.sidecar_of("recommendations").outbound["catalog"]
    async with grpc.aio.insecure_channel(f"{stack.ports.host}:{outbound}") as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for _ in range(CALLS):
            await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1), timeout=10)
    served = {process: handled(stack, process, LIST_PRODUCTS) - before[process] for process in before}
    assert sum(served.values()) == CALLS, served
    # At 50 % each gets some: all 60 to one side would happen once in 2**59 runs.
    assert served["catalog"] > 0, served
    assert served["catalog-canary"] > 0, served
    stats = sidecar_stats(stack, "recommendations")
    sent = {
        track: stats.get(f"cluster.outbound-{cluster}.upstream_rq_completed", 0)
        for track, cluster in (("catalog", "catalog"), ("catalog-canary", "catalog-canary"))
    }
    assert sent == served, "the canary's share went through the caller's sidecar, over mTLS"
    assert stats["cluster.outbound-catalog-canary.ssl.handshake"] > 0
