"""README's mesh walk-through runs verbatim against the launcher's mesh on the local ports, as a user runs
it beside `make run MESH=envoy`."""

from __future__ import annotations

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
