"""The command that changes a canary's share while the stack runs: its arguments, and what it says when there is
no canary to split to (the split itself, on real sidecars: tests/mesh/test_local_canary.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from shopmesh_chassis.local_stack import LocalStack, stack_file, write_stack_file
from shopmesh_platform.mesh.split import main


@pytest.mark.parametrize(
    "argv",
    [["catalog"], ["catalog", "101"], ["catalog", "-1"], ["catalog", "a-third"], ["catalog", "30", "--reset"]],
)
def test_a_share_that_is_no_percentage_or_none_at_all_is_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv, io.StringIO(), io.StringIO())
    assert refused.value.code == 2


def test_the_gateway_has_no_canary_to_split_to() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["gateway", "30"], io.StringIO(), io.StringIO())
    assert refused.value.code == 2


def test_without_a_canary_running_it_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    admins = {name: str(tmp_path / f"{name}-sidecar-admin.sock") for name in ("recommendations", "catalog")}
    stack = LocalStack(
        path=stack_file(Path(".data")), pid=os.getpid(), nats_url="nats://127.0.0.1:1", sidecar_admin=admins
    )
    write_stack_file(stack)
    err = io.StringIO()
    assert main(["catalog", "30"], io.StringIO(), err) == 1
    assert err.getvalue().splitlines()[-1] == (
        f'error: no catalog-canary runs in {stack.said()}: start the stack with one, make run MESH=envoy RUN_ARGS="'
        '--postgres --canary catalog"'
    )
