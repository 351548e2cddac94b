"""The local mesh from a deep checkout: a Unix socket's path is at most 107 bytes, and
`<data dir>/mesh/sockets/notifications.sock` passed that in a full `make test` (pytest's tmp_path) and in a
user's deep checkout, which the launcher then refused to start. The sockets live in a short private folder made
per start; `<data dir>/mesh/sockets` links to it, so README's `.data/mesh/sockets/<service>.sock` works."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh_chassis.config import UNIX_SOCKET_PATH_MAX_BYTES
from shopmesh_chassis.testing import health_status
from shopmesh_platform.mesh.identity import channel_as
from shopmesh_platform.processes import StackError
from shopmesh_platform.stack import SOCKETS_PREFIX, ServiceSpec, Stack


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.timeout(240)
async def test_a_meshed_stack_whose_data_directory_is_deep_serves_through_its_sidecar_and_its_linked_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "a-checkout-that-lies-deep" / ("d" * 40)
    data_dir = checkout / ".data"
    linked = data_dir / "mesh" / "sockets" / "catalog.sock"
    assert len(os.fsencode(linked)) > UNIX_SOCKET_PATH_MAX_BYTES, "not deep enough to prove anything"
    checkout.mkdir(parents=True)
    # From the checkout, as README's walk-through types it.
    monkeypatch.chdir(checkout)
    async with Stack.for_tests(data_dir, services=["catalog"], mesh=True) as stack:
        socket_path = stack.app_socket("catalog")
        assert socket_path is not None
        folder = socket_path.parent
        assert len(os.fsencode(socket_path)) <= UNIX_SOCKET_PATH_MAX_BYTES
        assert stat.S_IMODE(folder.lstat().st_mode) == 0o700, "only the user reaches a service past its sidecar"
        assert (data_dir / "mesh" / "sockets").resolve() == folder
        # Through catalog's sidecar, over mutual TLS, as the gateway calls it.
        async with channel_as(stack.mesh_dir, "gateway", "catalog", stack.address("catalog")) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            page = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1), timeout=10)
        assert len(page.products) == 1
        # Past it on its own socket, by the path README shows.
        status = await health_status("unix:.data/mesh/sockets/catalog.sock", timeout=5)
        assert status == health_pb2.HealthCheckResponse.SERVING
    assert not folder.exists(), "the stop removes the sockets' folder"
    assert not (data_dir / "mesh" / "sockets").is_symlink(), "and its link"


@pytest.mark.asyncio(loop_scope="function")
async def test_a_start_that_fails_removes_the_sockets_folder_it_made(tmp_path: Path) -> None:
    """Nothing of a failed start is left in /tmp: the stop that undoes it removes the folder and its link."""
    spec = ServiceSpec("alpha", (sys.executable, "-c", "raise SystemExit(3)"))
    stack = Stack.for_tests(tmp_path, specs=[spec], mesh=True)
    with pytest.raises(StackError, match="alpha"):
        await stack.start()
    socket_path = stack.app_socket("alpha")
    assert socket_path is not None
    assert socket_path.parent.name.startswith(SOCKETS_PREFIX), "the folder of that start"
    assert not socket_path.parent.exists()
    assert not (stack.mesh_dir / "sockets").is_symlink()
