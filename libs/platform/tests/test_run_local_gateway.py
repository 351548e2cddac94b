"""The environment the launcher gives the local gateway: room for the README's crowd of shoppers, and trust
in the edge (or sidecar) in front of it.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from shopmesh_platform import run

from .run_kit import REPOSITORY


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
    left only the edge's span. The edge reaches the gateway at its planned address; under MESH=envoy it
    calls the gateway's sidecar, which forwards on the gateway's Unix socket, whose only peer it is: trusted
    as `unix`, and no TCP peer with it (any local client comes from the plan's host)."""
    ports = run.port_plan(free=False, mesh=mesh)
    trusted = run.local_env(["gateway"], None, ports)["gateway"]["TRUSTED_PROXIES"].split(",")
    if mesh:
        assert trusted == ["unix"]
    else:
        edge_connects_from = ipaddress.ip_address(ports.address("gateway").rsplit(":", 1)[0])
        assert any(edge_connects_from in ipaddress.ip_network(network) for network in trusted)
    without_proxies = run.port_plan(free=False, http_port=0)
    assert "TRUSTED_PROXIES" not in run.local_env(["gateway"], None, without_proxies)["gateway"], (
        "no edge, no sidecar: every peer is a client"
    )
