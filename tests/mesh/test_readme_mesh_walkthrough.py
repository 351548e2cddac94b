"""README's mesh walk-through runs verbatim against the launcher's mesh on the local ports, as a user runs
it beside `make run MESH=envoy`, and on free ports with only its addresses set, as README tells a user of
`RUN_ARGS=--free-ports`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from shopmesh_platform.ports import PortPlan

MARKER = "<!-- mesh walkthrough -->"


@pytest.mark.asyncio(loop_scope="function")
# Fixed ports: the launcher may first wait out a client connection holding one (up to a minute).
@pytest.mark.timeout(300)
async def test_readme_mesh_walkthrough_runs_verbatim(readme_walkthrough: Callable[..., Any]) -> None:
    async with readme_walkthrough(MARKER, PortPlan.local(mesh=True)) as result:
        _assert_walked_through(result)


def _addresses_of(ports: PortPlan) -> dict[str, str]:
    """What README says to take from the launcher's table for each of the block's addresses."""
    assert ports.http is not None
    return {
        "GW": ports.address("gateway"),
        "API": f"http://{ports.host}:{ports.http}",
        "PAYMENTS": ports.address("payments"),
    }


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.timeout(300)
async def test_readme_mesh_walkthrough_runs_on_free_ports_with_only_its_addresses_set(
    readme_walkthrough: Callable[..., Any],
) -> None:
    # No port of the block but its three addresses: a user of --free-ports changes those lines and nothing else.
    ports = PortPlan.free(mesh=True, http=True)
    async with readme_walkthrough(MARKER, ports, _addresses_of) as result:
        _assert_walked_through(result)


def _assert_walked_through(result: subprocess.CompletedProcess[str]) -> None:
    out, err = result.stdout, result.stderr
    assert '"products"' in out
    assert '"products":[{"id":' in out, "the HTTP/JSON edge reaches the gateway through its sidecar"
    assert "payments: no answer without a certificate" in out
    assert '"status": "SERVING"' in out, "health is open to a service that does not call payments"
    # Health as notifications through the sidecar, and once more on payments' own socket, past it.
    assert out.count('"status": "SERVING"') == 2
    # GetPayment as orders, ListPayments as notifications.
    assert err.count("Code: PermissionDenied") == 2
    assert err.count("RBAC: access denied") == 2
    counted = dict(line.split(": ") for line in out.splitlines() if line.startswith("http.inbound.rbac."))
    # With a protoset grpcurl makes no reflection call: each command is one call, ListPayments as orders and
    # health as notifications let through (the shop's own calls to payments, if any, count too).
    assert int(counted["http.inbound.rbac.allowed"]) >= 2
    assert int(counted["http.inbound.rbac.denied"]) == 2
