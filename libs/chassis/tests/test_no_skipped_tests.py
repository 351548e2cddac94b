"""The shared pytest plugin fails a skipped or xfailed test: the suite never goes green without a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = """
import pytest

def test_skipped():
    pytest.skip("a tool is missing")

@pytest.mark.xfail
def test_expected_to_fail():
    assert False

def test_runs():
    assert True
"""


def test_a_skipped_or_xfailed_test_fails_the_run(tmp_path: Path) -> None:
    run = _run(tmp_path, TESTS)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 failed, 1 passed" in run.stdout, run.stdout
    assert "test_skipped was skipped (Skipped: a tool is missing)" in run.stdout, run.stdout


def _run(tmp_path: Path, tests: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(tests)
    plugins = ["-p", "no:cacheprovider", "-p", "shopmesh_chassis.testing.pytest_plugin"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        # Only the plugin under test: the environment's other plugins (hypothesis, playwright, ...) took
        # two thirds of each run's ~3.5 s to load, and the sample tests use none of them.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


def test_an_xfailed_test_alone_fails_the_run_exit_status(tmp_path: Path) -> None:
    # The report says "1 failed", but the failed report keeps `wasxfail`, which pytest's Session does not count
    # in testsfailed: the exit status is 0 and CI goes green.
    run = _run(
        tmp_path, "import pytest\n\n@pytest.mark.xfail\ndef test_x():\n    assert False\n\ndef test_ok():\n    pass\n"
    )
    assert run.returncode == 1, run.stdout + run.stderr


def test_a_module_skipped_at_collection_fails_the_run(tmp_path: Path) -> None:
    # pytest.importorskip / pytest.skip(allow_module_level=True): the "tool missing" case, skipped at collection,
    # never reaches pytest_runtest_makereport; with any other test passing, the run exits 0.
    (tmp_path / "test_other.py").write_text("def test_ok():\n    pass\n")
    run = _run(tmp_path, "import pytest\n\npytest.importorskip('no_such_tool_here')\n\ndef test_x():\n    pass\n")
    # A collection error: pytest stops the run (exit status 2).
    assert run.returncode == 2, run.stdout + run.stderr
    assert "test_sample.py was skipped (Skipped: could not import 'no_such_tool_here'" in run.stdout, run.stdout
    assert "skipped" not in run.stdout.splitlines()[-1], run.stdout
