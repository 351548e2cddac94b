"""The environment the launcher gives the local gateway: room for the README's crowd of shoppers, and trust
in the edge (or sidecar) in front of it, and in no local client that calls the gateway directly.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import re
import urllib.parse
from pathlib import Path

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.local_stack import running_stack
from shopmesh_platform import run

from .run_kit import REPOSITORY, ctrl_c, launched


def test_the_local_gateway_lets_the_readmes_crowd_of_shoppers_sign_up_from_its_one_address() -> None:
    """Every `make run` client is 127.0.0.1: with the gateway's default password bucket (5 at once), most of
    `make shoppers` (a Register and a Login each, all at once) were refused RATE_LIMITED and never shopped."""
    example = re.search(r"--shoppers (\d+)", (REPOSITORY / "README.md").read_text())
    assert example, "README.md no longer shows a crowd of shoppers"
    shoppers = int(example[1])
    gateway = run.local_env(["gateway", "users"], None, run.port_plan(free=False))["gateway"]
    assert int(gateway["PASSWORD_RATE_LIMIT_BURST"]) >= 2 * shoppers
    assert "gateway" not in run.local_env(["catalog"], None, run.port_plan(free=False)), (
        "env for a service it does not run: refused"
    )


@pytest.mark.parametrize("mesh", [False, True], ids=["direct", "mesh-envoy"])
def test_the_local_gateway_trusts_the_edge_in_front_of_it_to_decide_what_is_traced(mesh: bool) -> None:
    """Untrusted, the gateway drew each traced HTTP call again at OTEL_TRACES_SAMPLER_RATIO: below 1, most
    left only the edge's span. The edge reaches the gateway from its own loopback address; under MESH=envoy
    it calls the gateway's sidecar, which forwards on the gateway's Unix socket, whose only peer it is:
    trusted as `unix`, and no TCP peer with it (any local client comes from the plan's host)."""
    ports = run.port_plan(free=False, mesh=mesh)
    trusted = run.local_env(["gateway"], None, ports)["gateway"]["TRUSTED_PROXIES"].split(",")
    if mesh:
        assert trusted == ["unix"]
    else:
        assert ports.edge_source is not None
        edge_connects_from = ipaddress.ip_address(ports.edge_source)
        assert any(edge_connects_from in ipaddress.ip_network(network) for network in trusted)
    without_proxies = run.port_plan(free=False, http_port=0)
    assert "TRUSTED_PROXIES" not in run.local_env(["gateway"], None, without_proxies)["gateway"], (
        "no edge, no sidecar: every peer is a client"
    )


# An address of the documentation range (RFC 5737): what a local client writes in X-Forwarded-For to pass for
# someone else, and so get a rate-limit bucket of its own with each call.
FORGED = "203.0.113.7"
# Where the test's HTTP clients come from: loopback addresses of their own, as two machines behind the edge.
HTTP_CLIENTS = ("127.0.0.3", "127.0.0.4")


def _get_through_edge(url: str, path: str, source: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET `path` at the edge from the loopback address `source`: its status and body."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.timeout(420)  # the start's bound (ready_within), which decides first
@pytest.mark.parametrize("mesh", [(), ("--mesh", "envoy")], ids=["direct", "mesh-envoy"])
async def test_make_run_believes_the_edges_x_forwarded_for_and_not_a_local_client_calling_the_gateway_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mesh: tuple[str, ...]
) -> None:
    """The launcher trusted 127.0.0.1, where the edge came from, and so every local client: a gRPC client on
    the gateway's port was believed whatever X-Forwarded-For (and traceparent) it sent, and took a fresh
    rate-limit bucket with each address it made up. The edge now connects from an address of its own, the only
    one the gateway trusts. One token per address, refilled after a quarter of an hour: a second call in the
    same bucket is refused whatever the machine's speed. Under MESH=envoy the edge called the gateway's
    sidecar on its published listener, which appended the machine's own address for its loopback peer: every
    HTTP client was that address, one bucket; the edge now has a listener of its own that appends nothing."""
    monkeypatch.setenv("RATE_LIMIT_BURST", "1")
    monkeypatch.setenv("RATE_LIMIT_PER_SECOND", "0.001")
    # Bounds for a loaded machine, where three Python processes, NATS and Envoy take minutes to start.
    args = ("--services", "catalog,gateway", "--startup-timeout", "240", *mesh)
    async with launched(tmp_path / "data", *args, ready_within=300) as (process, _):
        stack = running_stack(tmp_path / "data")
        assert stack is not None
        assert stack.gateway is not None
        assert stack.http_url is not None
        # Through the edge, each client is where the edge says it came from: two clients, two buckets, though both
        # wrote the same address (believed, it was one bucket; the edge untrusted, both were the edge's).
        for client in HTTP_CLIENTS:
            status, body = await asyncio.to_thread(
                _get_through_edge, stack.http_url, "/v1/products", client, {"X-Forwarded-For": FORGED}
            )
            assert status == 200, f"from {client}: {status} {body}"
        # Directly, each call is the caller's own address's, whatever it wrote: the second finds its bucket empty.
        async with grpc.aio.insecure_channel(stack.gateway) as channel:
            shop = shop_pb2_grpc.ShopServiceStub(channel)
            request = shop_pb2.ListProductsRequest()
            await shop.ListProducts(request, metadata=(("x-forwarded-for", "198.51.100.1"),), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await shop.ListProducts(request, metadata=(("x-forwarded-for", "198.51.100.2"),), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        info = details_of(refused.value).error_info
        assert info is not None
        assert info.reason == "RATE_LIMITED"
        await ctrl_c(process)
