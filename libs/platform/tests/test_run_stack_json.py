"""The launcher's .data/stack.json: the tools find a free-ports stack through it. (A second launcher on the same
data is refused by the data directory's lock, naming the first by this file's pid: test_run_one_launcher_per_data_dir.)
"""

from __future__ import annotations

import json
from pathlib import Path

from shopmesh_chassis.testing import eventually
from shopmesh_platform.mesh.faults import current_fault
from shopmesh_platform.ports import Canary
from shopmesh_platform.run import local_stack
from shopmesh_platform.stack import Stack

from .run_kit import ctrl_c, launched, run_tool, table_rows


async def test_the_tools_reach_a_free_ports_stack_without_being_told_where(tmp_path: Path) -> None:
    """`make deadletters`, `make shoppers`, `make fault` and `make traces` under `--free-ports` needed each
    address copied from the launcher's table (the NATS URL, the gateway, each sidecar's admin): they read
    .data/stack.json, which the launcher writes once the stack serves and removes when it stops."""
    data = tmp_path / ".data"
    async with launched(data, "--services", "users,catalog,gateway", "--mesh", "envoy") as (process, lines):
        rows = table_rows(lines)
        said = f"the local stack of .data/stack.json (launcher pid {process.pid})"
        stack = json.loads((data / "stack.json").read_text())
        assert stack["pid"] == process.pid

        code, out, err = await run_tool(tmp_path, "-m", "shopmesh_chassis.deadletters_cli", "list", "--json")
        assert (code, json.loads(out)) == (0, []), err
        assert err == f"NATS at {rows['nats']['grpc']}: {said}\n"

        shoppers = ("--shoppers", "1", "--duration", "1", "--think", "0.01,0.05", "--json")
        code, out, err = await run_tool(tmp_path, "-m", "shopmesh_platform.shoppers", *shoppers)
        assert code == 0, err
        assert err.splitlines()[0] == f"the gateway at {rows['gateway']['grpc']}: {said}"
        assert json.loads(out)["Register"].get("OK") == 1, out

        # catalog's sidecar's admin interface: a Unix socket the file names (no TCP port serves it).
        admin = Path(stack["sidecar_admin"]["catalog"])
        faults = ("-m", "shopmesh_platform.mesh.faults")
        code, out, err = await run_tool(tmp_path, *faults, "catalog", "--delay", "250ms")
        assert (code, out, err) == (0, "catalog: delay 250 ms on 100 % of calls\n", f"sidecars of {said}\n")
        assert str(current_fault(admin)) == "delay 250 ms on 100 % of calls"
        code, out, err = await run_tool(tmp_path, *faults, "catalog", "--clear")
        assert code == 0, err
        assert str(current_fault(admin)) == "none"

        async def listed() -> tuple[int, str, str] | None:
            """The trace list once the shoppers' calls are in it (spans are exported in batches): traces through
            the gateway, rooted at its sidecar's span."""
            listing = await run_tool(tmp_path, "-m", "shopmesh_platform.traces", "--last", "1000")
            return listing if "gateway-sidecar: " in listing[1] else None

        listing = await eventually(listed, "the shoppers' traces listed", timeout=60, interval=0.5)
        assert listing is not None
        code, out, err = listing
        assert (code, err) == (0, f"traces at {data.absolute() / 'traces'}: {said}\n")

        assert "stopped cleanly" in await ctrl_c(process)
    assert not (data / "stack.json").exists()


def test_the_file_records_the_weight_the_canary_was_started_with(tmp_path: Path) -> None:
    """Until a split is set, no sidecar's runtime tells the share its route started with: `mesh.split --show`
    could say only "the weight it started with", and took a caller set to that same share for one disagreeing.
    (The stack is built, not started: the file is made of its plan.)"""
    services, env = ["catalog", "gateway"], {"catalog": {"DATABASE_URL": "postgresql://unused/catalog"}}
    canaried = Stack.for_tests(tmp_path, services=services, env=env, mesh=True, canary=Canary("catalog", 20))
    assert local_stack(canaried).as_json()["canary_weights"] == {"catalog": 20}
    assert local_stack(Stack.for_tests(tmp_path, services=services, mesh=True)).canary_weights == {}
