"""A canary in the local mesh (`make run MESH=envoy RUN_ARGS="--postgres --canary catalog:50"`): a second
catalog process, behind a sidecar of its own with catalog's identity, on catalog's database; the sidecars of
catalog's callers split their calls between the two by weight, as Istio's VirtualService weights do on
Kubernetes (docs/mesh.md, "Canaries"). Real processes, a real PostgreSQL, real Envoys."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_platform.mesh import faults, split
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.ports import Canary
from shopmesh_platform.stack import Stack, postgres_env

from .envoykit import handled, sidecar_stats

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
    # The canary loads no seed of its own: what it serves, it reads from catalog's database.
    env["catalog-canary"] = {"SEED_CATALOG": "false"}
    canary = Canary("catalog", WEIGHT)
    async with Stack.for_tests(module_dir, services=SERVICES, env=env, mesh=True, canary=canary) as running:
        yield running


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


def sent(stack: Stack) -> dict[str, int]:
    """Calls recommendations' sidecar completed to catalog and to its canary (any method, since it started)."""
    stats = sidecar_stats(stack, "recommendations")
    return {p: stats.get(f"cluster.outbound-{p}.upstream_rq_completed", 0) for p in ("catalog", "catalog-canary")}


async def list_products(stack: Stack, calls: int) -> dict[grpc.StatusCode, int]:
    """`calls` ListProducts as recommendations makes them: into its sidecar's outbound listener for catalog
    (plaintext on loopback, as a pod's own traffic into its proxy); their status codes, counted."""
    outbound = stack.ports.sidecar_of("recommendations").outbound["catalog"]
    codes: dict[grpc.StatusCode, int] = {}
    async with grpc.aio.insecure_channel(f"{stack.ports.host}:{outbound}") as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for _ in range(calls):
            try:
                await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1), timeout=10)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            codes[code] = codes.get(code, 0) + 1
    return codes


async def test_a_callers_sidecar_splits_its_calls_between_the_service_and_its_canary(stack: Stack) -> None:
    processes = ("catalog", "catalog-canary")
    before, sent_before = {p: handled(stack, p, LIST_PRODUCTS) for p in processes}, sent(stack)
    assert await list_products(stack, CALLS) == {grpc.StatusCode.OK: CALLS}
    served = {p: handled(stack, p, LIST_PRODUCTS) - before[p] for p in processes}
    assert sum(served.values()) == CALLS, served
    # At 50 % each gets some: all 60 to one side would happen once in 2**59 runs.
    assert served["catalog"] > 0, served
    assert served["catalog-canary"] > 0, served
    after = sent(stack)
    assert {p: after[p] - sent_before[p] for p in processes} == served, "each share went through the sidecar"
    assert sidecar_stats(stack, "recommendations")["cluster.outbound-catalog-canary.ssl.handshake"] > 0


async def test_a_fault_on_the_canary_alone_fails_only_its_share_of_the_calls(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make fault FAULT_ARGS="catalog-canary --abort UNAVAILABLE"`: a canary gone bad beside a healthy
    service; `catalog` then names both sidecars."""
    monkeypatch.setattr(faults, "local_admin_socket", stack.sidecar_admin_socket)
    out = io.StringIO()
    try:
        assert faults.main(["catalog-canary", "--abort", "UNAVAILABLE"], out) == 0
        before = {p: handled(stack, p, LIST_PRODUCTS) for p in ("catalog", "catalog-canary")}
        stats_before = sidecar_stats(stack, "recommendations")
        codes = await list_products(stack, CALLS)
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert handled(stack, "catalog", LIST_PRODUCTS) - before["catalog"] == codes[grpc.StatusCode.OK]
        assert handled(stack, "catalog-canary", LIST_PRODUCTS) == before["catalog-canary"], "refused at its sidecar"
        stats = sidecar_stats(stack, "recommendations")

        def grew(name: str) -> int:
            return stats.get(f"cluster.outbound-{name}", 0) - stats_before.get(f"cluster.outbound-{name}", 0)

        # The caller's sidecar counts the canary's failures as what they are, gRPC UNAVAILABLE (14), apart from
        # the stable track's successes, though every one of them was an HTTP 200 (upstream_rq_2xx).
        failed, served = codes[grpc.StatusCode.UNAVAILABLE], codes[grpc.StatusCode.OK]
        assert (grew("catalog-canary.grpc.14"), grew("catalog-canary.grpc.failure")) == (failed, failed)
        assert grew("catalog-canary.upstream_rq_2xx") == failed, "no HTTP status tells these failures apart"
        assert (grew("catalog.grpc.0"), grew("catalog.grpc.failure")) == (served, 0)

        assert faults.main(["catalog", "--abort", "UNAVAILABLE"], out) == 0
        assert "catalog-canary:" in out.getvalue().splitlines()[-1], "the service's fault is its canary's too"
        assert await list_products(stack, 10) == {grpc.StatusCode.UNAVAILABLE: 10}
    finally:
        assert faults.main(["catalog", "--clear"], out) == 0
    assert await list_products(stack, 10) == {grpc.StatusCode.OK: 10}


async def test_the_canarys_share_changes_while_the_stack_runs_and_goes_back_to_its_start(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m shopmesh_platform.mesh.split catalog 0` (an abort: nothing to the canary), `... 100` (all of
    it), `--reset` (the weight `--canary` gave): the split had no runtime key, so a weight could change only by
    restarting the whole stack."""
    monkeypatch.setattr(faults, "local_admin_socket", stack.sidecar_admin_socket)
    processes = ("catalog", "catalog-canary")

    async def served_by(weight: int | None) -> dict[str, int]:
        argv = ["catalog", "--reset"] if weight is None else ["catalog", str(weight)]
        out = io.StringIO()
        assert split.main(argv, out) == 0
        assert out.getvalue().startswith("recommendations: "), out.getvalue()
        before = {p: handled(stack, p, LIST_PRODUCTS) for p in processes}
        assert await list_products(stack, 20) == {grpc.StatusCode.OK: 20}
        return {p: handled(stack, p, LIST_PRODUCTS) - before[p] for p in processes}

    try:
        assert await served_by(0) == {"catalog": 20, "catalog-canary": 0}
        assert await served_by(100) == {"catalog": 0, "catalog-canary": 20}
    finally:
        back = await served_by(None)
    # At the start's 50 % each gets some: all 20 to one side would happen once in 2**19 runs.
    assert back["catalog"] > 0, back
    assert back["catalog-canary"] > 0, back
