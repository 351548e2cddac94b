"""The shared pytest plugin gives every test a node id of its own: pytest-xdist (`make test`) runs one test per id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCHEMA = """{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {
  "/a": {"get": {"responses": {"200": {"description": "ok"}}}},
  "/b": {"get": {"responses": {"200": {"description": "ok"}}}},
  "/c": {"get": {"responses": {"200": {"description": "ok"}}}}}}"""

TESTS = """
import pathlib

import schemathesis
from hypothesis import settings

schema = schemathesis.openapi.from_path(pathlib.Path(__file__).with_name("openapi.json"))


@schema.parametrize()
@settings(max_examples=1)
def test_operation(case):
    pathlib.Path(__file__).with_name("ran-" + case.path.strip("/")).touch()
"""


def test_each_schemathesis_operation_runs_under_xdist(tmp_path: Path) -> None:
    (tmp_path / "openapi.json").write_text(SCHEMA)
    (tmp_path / "test_api.py").write_text(TESTS)
    plugins = ["-p", "shopmesh_chassis.testing.pytest_plugin", "-p", "schemathesis", "-p", "xdist", "-p", "hypothesis"]
    xdist = ["-n", "2", "--dist", "loadfile"]  # as `make test` runs (its scheduler keys tests by node id)
    isolated = ["--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, *xdist, *isolated],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert "3 passed" in run.stdout, run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-a", "ran-b", "ran-c"]


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "openapi.json").write_text(SCHEMA)
    (tmp_path / "test_api.py").write_text(TESTS)
    plugins = ["-p", "shopmesh_chassis.testing.pytest_plugin", "-p", "schemathesis", "-p", "hypothesis"]
    isolated = ["--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, *isolated, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


def test_a_schemathesis_operation_is_deselected_by_the_node_id_its_report_shows(tmp_path: Path) -> None:
    """`--deselect` with the id a failure was reported under (`test_api.py::test_operation[GET /b]`) leaves that
    operation out: the ids were given after pytest had deselected by the shared id, so nothing was left out."""
    run = _pytest(tmp_path, "-q", "--deselect", "test_api.py::test_operation[GET /b]")
    assert "2 passed, 1 deselected" in run.stdout, run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-a", "ran-c"]


def test_a_schemathesis_operation_keeps_its_node_id_when_selected_alone(tmp_path: Path) -> None:
    """Selected alone with -k, an operation's test is reported (and remembered by --lf) under the same id as in
    a whole run, not under its function's."""
    run = _pytest(tmp_path, "--collect-only", "-q", "-k", "b")
    assert "test_api.py::test_operation[GET /b]" in run.stdout.splitlines(), run.stdout + run.stderr
