"""A service restarted under steady load in the local mesh (`make run MESH=envoy`): its callers may see the calls
that arrive while it is down fail UNAVAILABLE, which their clients retry for idempotent methods, but no call may
fail with a status nobody retries because the service stopped under it (docs/mesh.md, "Retries and deadlines":
the chassis drains on SIGTERM, finishing the calls in flight)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.stack import Stack

pytestmark = pytest.mark.asyncio

WORKERS = 8


async def test_restarting_a_service_under_load_fails_no_idempotent_call_with_a_status_its_callers_do_not_retry(
    tmp_path: Path,
) -> None:
    async with (
        Stack.for_tests(tmp_path, services=["catalog"], mesh=True) as stack,
        channel_as(stack.mesh_dir, "gateway", "catalog", stack.address("catalog")) as channel,
    ):
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        answers: collections.Counter[grpc.StatusCode] = collections.Counter()
        done = asyncio.Event()

        async def shopper() -> None:
            # ListProducts is NO_SIDE_EFFECTS: safe to retry, so every failure of it should be retryable.
            while not done.is_set():
                try:
                    await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=50), timeout=5)
                    answers[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    answers[error.code()] += 1
                    await asyncio.sleep(0.01)

        shoppers = [asyncio.create_task(shopper()) for _ in range(WORKERS)]
        try:
            await asyncio.sleep(2)
            # SIGTERM, as `kubectl rollout restart` or a developer's restart: the chassis drains.
            assert await stack.stop_service("catalog") == 0
            await stack.start_service("catalog")
            await asyncio.sleep(1)
        finally:
            done.set()
            await asyncio.gather(*shoppers)

    assert answers[grpc.StatusCode.OK] > 0
    not_retryable = {
        code: n for code, n in answers.items() if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    }
    assert not_retryable == {}, f"calls cut by the restart with a status no client retries: {dict(answers)}"
