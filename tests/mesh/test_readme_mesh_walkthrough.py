"""README's mesh walk-through runs verbatim against the launcher's mesh on the local ports, as a user runs
it beside `make run MESH=envoy`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shopmesh_platform.stack import PortPlan

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
    assert '"status": "SERVING"' in out
    assert "PermissionDenied" in err
    assert "RBAC: access denied" in err
    counted = dict(line.split(": ") for line in out.splitlines() if line.startswith("http.inbound.rbac."))
    assert int(counted["http.inbound.rbac.allowed"]) >= 1
    # grpcurl asks reflection first: each of its calls as notifications may count more than once.
    assert int(counted["http.inbound.rbac.denied"]) >= 1
