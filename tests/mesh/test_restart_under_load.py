"""A service restarted under steady load in the local mesh (`make run MESH=envoy`): its callers may see the calls
that arrive while it is down fail UNAVAILABLE (after their clients' retries of idempotent methods), but no call
may fail with anything else because the service stopped under it (docs/mesh.md, "Retries and deadlines").

The chassis drains on SIGTERM, finishing the calls in flight, but a server shutting down answers CANCELLED the
calls that reached it and were never matched to a handler (grpc/grpc#41785); the chassis' clients retry those
for idempotent methods. The caller here is one: a chassis channel (ResilientChannel, as the gateway's to
catalog) over mutual TLS to catalog's sidecar, as the gateway."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis.client import ClientOptions, ResilientChannel
from shopmesh_platform.mesh.identity import mtls_as
from shopmesh_platform.stack import Stack

pytestmark = pytest.mark.asyncio

WORKERS = 8
CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


async def test_restarting_a_service_under_load_fails_no_idempotent_call_of_a_chassis_client_but_unavailable(
    tmp_path: Path,
) -> None:
    async with Stack.for_tests(tmp_path, services=["catalog"], mesh=True) as stack:
        tls = mtls_as(stack.mesh_dir, "gateway", "catalog")
        async with ResilientChannel(
            stack.address("catalog"),
            [CATALOG],
            ClientOptions(caller="gateway"),
            credentials=tls.credentials,
            channel_options=tls.options,
        ) as channel:
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel.channel)
            answers: collections.Counter[grpc.StatusCode] = collections.Counter()
            done = asyncio.Event()

            async def shopper() -> None:
                # ListProducts is NO_SIDE_EFFECTS: the chassis retries it.
                while not done.is_set():
                    try:
                        # A call the restart dropped hangs past any deadline; 15 s, not 5, so that one merely slow on
                        # a busy machine (catalog starting again beside 8 shoppers) is no failure: seen once at a load
                        # average of 20.
                        await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=50), timeout=15)
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
    not_unavailable = {
        code: n for code, n in answers.items() if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    }
    assert not_unavailable == {}, f"calls cut by the restart with a status other than UNAVAILABLE: {dict(answers)}"
