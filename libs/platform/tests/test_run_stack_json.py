"""The launcher's .data/stack.json: the tools find a free-ports stack through it, and a second launcher on
the same data is refused while the first one runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_chassis.testing import eventually
from shopmesh_platform.mesh.faults import current_fault

from .run_kit import ctrl_c, launched, run_tool, start_launcher, stop_launcher, table_rows


async def test_the_tools_reach_a_free_ports_stack_without_being_told_where(tmp_path: Path) -> None:
    """`make deadletters`, `make shoppers`, `make fault` and `make traces` under `--free-ports` needed each
    address copied from the launcher's table (the NATS URL, the gateway, each sidecar's admin port): they read
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

        admin = rows["catalog-sidecar"]["metrics"].removesuffix("/stats/prometheus")
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


async def test_a_second_launcher_on_the_data_of_one_that_still_runs_is_refused_and_resets_nothing(
    tmp_path: Path,
) -> None:
    """Under --free-ports no port told a second launcher that another still ran on the same data directory: it
    started beside it on the same NATS store and SQLite files, wrote its stack.json over the first's (the tools
    then lost the first stack when it stopped), and with --reset deleted that data under it. The first
    launcher's stack.json says it still runs: the second is refused, in one line, and touches nothing."""
    data = tmp_path / ".data"
    data.mkdir()
    (data / "catalog.db").write_bytes(b"the running stack's")
    # A live process that is not this test's launcher, standing for the first one.
    first = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(300)")
    try:
        write_stack_file(LocalStack(path=stack_file(data), pid=first.pid, nats_url="nats://127.0.0.1:1"))
        process = await start_launcher(data, "--services", "", "--reset", "--http-port", "0")
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            await stop_launcher(process)
        assert process.returncode == 1, out.decode()
        assert out.decode().splitlines()[-1] == (
            f"error: a launcher still runs on {data} (pid {first.pid}, named by {stack_file(data)}): stop it "
            "(Ctrl-C in its terminal), or choose another --data-dir"
        )
        assert sorted(path.name for path in data.iterdir()) == ["catalog.db", "stack.json"]
        assert (data / "catalog.db").read_bytes() == b"the running stack's"
        assert json.loads(stack_file(data).read_text())["pid"] == first.pid
    finally:
        first.kill()
        await first.wait()
