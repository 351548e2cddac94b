"""README's grpcurl walk-through runs verbatim against the launcher on the local ports, as a user would
run it beside `make run`."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from shopmesh_platform.stack import PortPlan, Stack

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- walkthrough -->"


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    assert MARKER in readme, "README.md lost its walk-through marker"
    after = readme.split(MARKER, 1)[1]
    match = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert match, "no ```bash block after the walk-through marker"
    return match.group(1)


@pytest.mark.asyncio(loop_scope="function")
async def test_readme_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    script = walkthrough()
    stack = Stack(
        tmp_path / "data",
        ports=PortPlan.local(),
        services=["catalog", "inventory", "payments", "orders"],
        log_format="json",
        log_sink=None,
    )
    async with stack:
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "shopmesh.catalog.v1.CatalogService" in out
    assert '"id": "prod_chef_knife"' in out
    assert "placed ord_" in out
    assert '"state": "ORDER_STATE_CONFIRMED"' in out
    assert "FailedPrecondition" in result.stderr
    assert "CARD_DECLINED" in result.stderr
